"""Step records: per-parameter :class:`ParamStats` and the per-step :class:`StepRecord` holding them."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from gradwatch.forward_origin import ForwardOrigin

__all__ = [
    "RAW_COLUMNS",
    "Column",
    "Part",
    "ParamStats",
    "StepRecord",
]


class Column(enum.IntEnum):
    """Columns of the ``[10, num_params]`` float64 host buffer a :class:`StepRecord` is built from.

    The first seven are the raw gradient columns of :data:`gradwatch.stats.RAW_FIELDS` (in that order,
    so a ``[k, 7]`` block from the statistics engine fills ``GRAD_NORM`` onwards); then the parameter
    norm (of the sampled entries), the L2 norm of the update of the sampled entries, and the L1 norm of
    the change of those entries since the previous recorded boundary (the weights are back exactly where
    they were when it is 0).
    """

    GRAD_NORM = 0
    GRAD_MAX_ABS = 1
    GRAD_SUM = 2
    GRAD_NONZERO = 3
    GRAD_NONFINITE = 4
    GRAD_NAN = 5
    GRAD_CENTERED = 6
    PARAM_NORM = 7
    UPDATE_NORM = 8
    RESTORE_DIFF = 9


#: Column names, in :class:`Column` order.
RAW_COLUMNS: tuple[str, ...] = tuple(c.name.lower() for c in Column)

#: A column's value where no part of a record filled it: zero statistics, and NaN (not measured) for the
#: parameter norm and the change; -1 in the update column (a measured norm is >= 0, or NaN for NaN weights).
_UNMEASURED = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, math.nan, -1.0, math.nan])
_UNMEASURED_VALUES: list[float] = _UNMEASURED.tolist()
_everys: dict[int, list[int]] = {}


def _every(n: int) -> list[int]:
    """``list(range(n))``, kept (a part covering every parameter in order is the common case)."""
    held = _everys.get(n)
    if held is None:
        if len(_everys) > 64:
            _everys.clear()
        held = _everys[n] = list(range(n))
    return held


#: One piece of a record: parameter positions, first :class:`Column`, and a ``[len(positions), k]`` tensor
#: (on the host, or being copied there).
Part = tuple[Sequence[int], int, "torch.Tensor"]


class ParamStats(NamedTuple):
    """Gradient and weight statistics of one parameter at one recorded step.

    All values are Python numbers. Gradient statistics describe ``param.grad`` at the step boundary
    (read just before the owning optimizer's update, or at the end of the step's last ``backward()``
    when no optimizer owns the parameter), computed in float32 (float64 for float64 gradients).

    A complex parameter's statistics treat the real and imaginary parts as separate entries (its
    ``torch.view_as_real`` view): twice as many entries, the norm of the complex tensor.

    A parameter whose ``.grad`` is ``None`` at the boundary counts as an all-zero gradient: norms,
    mean and std 0, ``zero_fraction`` 1.

    Attributes:
        grad_norm: L2 norm of the gradient (NaN/Inf when it holds non-finite values).
        grad_max_abs: largest absolute entry of the gradient.
        grad_mean: mean of the gradient entries.
        grad_std: population standard deviation (``correction=0``, numpy's default) of the entries.
        zero_fraction: fraction of entries exactly equal to 0, in [0, 1]. Exact for parameters of at
            most ``gradwatch.stats.SAMPLE_SIZE`` (1024) entries; for larger ones the fraction among the
            fixed sample of at most 1024 evenly spread entries that the update ratio also uses
            (standard error below ``0.5 / sqrt(1024)``, 1.6 points).
        nan_count: number of NaN entries.
        inf_count: number of +Inf or -Inf entries.
        has_grad: whether a gradient was accumulated into ``.grad`` during this step (seen by the
            parameter's post-accumulate-grad hook).
        param_norm: L2 norm of the parameter at the boundary, before the optimizer's update. Exact up
            to 1024 entries; for larger parameters estimated from the same sample, scaled by
            ``sqrt(numel / sample size)``.
        update_ratio: update-to-weight ratio ``||theta_after - theta_before|| / ||theta_before||``
            across the step, or ``None`` when not measured (no update seen, or the option is off).
            Exact for parameters of at most ``gradwatch.stats.SAMPLE_SIZE`` (1024) entries; for larger
            ones ``||theta_after - theta_before||`` is estimated from a fixed, evenly spread sample of at
            most 1024 entries, scaled by ``sqrt(numel / sample size)`` (relative error about
            ``1 / sqrt(2 * 1024)``, 2 %, for updates of similar size everywhere such as Adam's; more for
            heavy-tailed ones: median 3.4 %, worst 24 % measured for momentum SGD on ReLU layers).
        grad: a CPU copy of ``.grad`` at the boundary when ``keep_grads`` asked for this parameter,
            else ``None``.
        weights_unchanged: the sampled entries of the parameter at this boundary are, bit for bit,
            those at the previous recorded boundary (``None`` when there is no earlier sample to
            compare with, or the update ratio is not measured).
        grad_is_none: ``.grad`` was ``None`` when the statistics were read (e.g. set to ``None`` between
            the backward pass and the optimizer step), so they are those of an all-zero gradient; also
            True when they were not read in this step (several optimizers, unmarked steps: a parameter
            held by an optimizer that did not step in it).
    """

    grad_norm: float
    grad_max_abs: float
    grad_mean: float
    grad_std: float
    zero_fraction: float
    nan_count: int
    inf_count: int
    has_grad: bool
    param_norm: float
    update_ratio: float | None
    grad: torch.Tensor | None = None
    grad_is_none: bool = False
    weights_unchanged: bool | None = None


class StepRecord:
    """Everything recorded at one step.

    The statistics of all parameters arrive as a few device-to-host copies made once, at the end of the
    step (asynchronous on CUDA); they are assembled into one ``[num_params, 10]`` float64 buffer
    (:data:`RAW_COLUMNS`) and turned into Python objects on first access, then cached.

    Attributes:
        step: the watcher step this record describes.
    """

    __slots__ = (
        "_derived",
        "_event",
        "_grad_none",
        "_grads",
        "_has_grad",
        "_layer_map",
        "_layer_of",
        "_layers",
        "_loss",
        "_names",
        "_numels",
        "_order",
        "_params",
        "_parts",
        "_sample_sizes",
        "_unclipped",
        "_unclipped_total",
        "_waiting",
        "forward_origin",
        "step",
    )

    def __init__(
        self,
        *,
        step: int,
        names: Sequence[str],
        layer_of: Sequence[str],
        numels: Sequence[int],
        parts: Sequence[Part],
        has_grad: Sequence[bool],
        grads: Mapping[str, torch.Tensor] | None = None,
        loss: float | torch.Tensor | None = None,
        event: Any = None,
        order: Sequence[int] = (),
        grad_none: Sequence[bool] = (),
        sample_sizes: Sequence[int] = (),
        unclipped: tuple[float | torch.Tensor, frozenset[int]] | None = None,
        forward_origin: ForwardOrigin | None = None,
    ) -> None:
        """Build a record (gradwatch does; users read records from ``Watcher.history``).

        Args:
            step: the watcher step.
            names: parameter names, in ``named_parameters()`` order.
            layer_of: the owning layer (module path) of each parameter.
            numels: entries of each parameter as the statistics read them (complex: twice ``numel()``).
            parts: ``(positions, first column, [len(positions), k] float64 tensor)`` pieces of the
                buffer; later parts overwrite earlier ones; columns no part fills read as unmeasured.
            has_grad: per parameter, whether a gradient was accumulated during the step.
            grads: kept CPU copies of gradients by parameter name (``keep_grads``).
            loss: the step's loss, a number or a scalar tensor (being copied to the host), or ``None``.
            event: a ``torch.cuda.Event`` recorded after the device-to-host copy of ``parts``, or ``None``.
            order: per parameter, its rank in the backward order (-1: no gradient this step).
            grad_none: per parameter, whether ``.grad`` was ``None`` when the statistics were taken.
            sample_sizes: per parameter, the entries its sampled statistics read (default: all).
            unclipped: the total L2 norm the step's clip functions measured before clipping (a number or
                a scalar tensor being copied to the host) and the positions of the watched parameters
                they clipped; ``None`` when none ran.
            forward_origin: where the non-finite loss of one of the step's backward passes was born, when
                gradwatch located it (:mod:`gradwatch.forward_origin`), else ``None``.
        """
        self.step = step
        self._loss = loss
        self._names = names
        self._layer_of = layer_of
        self._numels = numels
        self._parts = parts
        self._event = event
        self._has_grad = has_grad
        self._grads = grads or {}
        self._params: dict[str, ParamStats] | None = None
        self._layers: dict[str, float] | None = None
        self._order = order
        self._grad_none = grad_none
        self._sample_sizes = sample_sizes
        self._unclipped = unclipped
        self._unclipped_total: float | None = None  # (computed on first read: a sink and a detector read it)
        #: where a non-finite loss of the step was born (:class:`~gradwatch.forward_origin.ForwardOrigin`)
        self.forward_origin = forward_origin
        self._layer_map: dict[str, str] | None = None
        #: values derived from the record that several detectors read, computed once (dropped with params)
        self._derived: dict[str, Any] = {}
        #: internal readers (the detectors, a sink) still to read ``params`` (see :meth:`_read_by`)
        self._waiting: set[str] = set()

    def _read_by(self, reader: str) -> None:
        """Internal: ``reader`` is done with :attr:`params`; once every internal reader is, drop the cache.

        A cached ``params`` is one ``ParamStats`` per parameter, and named tuples stay tracked by the
        garbage collector: kept for every record of the history, they made Python's full collections
        (which scan every tracked object) cost 6 ms per step with 1000 parameters. Dropped, a record
        keeps only its host buffers, and ``params`` is rebuilt (then cached) when something reads it
        again.
        """
        self._waiting.discard(reader)  # atomic under the GIL: the sink reads on its own thread
        if not self._waiting:
            self._params = None
            self._derived = {}

    @property
    def backward_order(self) -> dict[str, int]:
        """Parameters that got a gradient this step -> rank in which the backward pass reached them.

        Rank 0 is the parameter nearest the loss (its gradient was accumulated first).
        """
        return {n: k for n, k in zip(self._names, self._order) if k >= 0}

    def layer_of(self, name: str) -> str:
        """The owning layer (module path) of parameter ``name``."""
        if self._layer_map is None:
            self._layer_map = dict(zip(self._names, self._layer_of))
        return self._layer_map[name]

    @property
    def loss(self) -> float | None:
        """The loss given to ``Watcher.record_loss`` (or returned by a decorated train step), or None."""
        if self._loss is not None and not isinstance(self._loss, float):
            if self._event is not None and not self._event.query():
                self._event.synchronize()  # the copy is not done yet: wait for it
            self._loss = float(self._loss)
        return self._loss

    def raw(self) -> list[list[float]]:
        """The ``[10][num_params]`` host buffer by column (:data:`RAW_COLUMNS`); waits for the copy if needed.

        By column: ten lists, not one per parameter, for the garbage collector to track. Built in
        Python lists from one ``tolist()`` per part (on a small model the calls, not the values, cost).
        """
        if self._event is not None and not self._event.query():
            self._event.synchronize()  # the copy is not done yet: wait (a finished one needs no call)
        n = len(self._names)
        cols: list[list[float] | None] = [None] * len(_UNMEASURED_VALUES)
        for positions, col, values in self._parts:  # later parts overwrite earlier ones
            v = values if values.dtype == torch.float64 else values.double()
            rows = v.numpy().T.tolist()
            if len(positions) == n and positions == _every(n):  # (a whole column: taken as it is)
                cols[col : col + len(rows)] = rows
                continue
            for k, row in enumerate(rows, start=col):
                target = cols[k]
                if target is None:
                    target = cols[k] = [_UNMEASURED_VALUES[k]] * n
                for p, value in zip(positions, row):
                    target[p] = value
        return [c if c is not None else [_UNMEASURED_VALUES[k]] * n for k, c in enumerate(cols)]

    @property
    def params(self) -> Mapping[str, ParamStats]:
        """Per-parameter statistics, keyed by parameter name, in ``named_parameters()`` order."""
        if self._params is None:
            out: dict[str, ParamStats] = {}
            none = self._grad_none or [False] * len(self._names)
            sizes = self._sample_sizes or self._numels
            grads = self._grads
            sqrt, isnan, isinf, isfinite = math.sqrt, math.isnan, math.isinf, math.isfinite
            # one plain loop over the columns (cheaper than tensor operations below a few hundred
            # parameters, as cheap above), positional arguments
            for (
                name,
                norm,
                max_abs,
                total,
                nonzero,
                nonfinite,
                nan,
                centered,
                pn,
                un,
                moved,
                n,
                k,
                got,
                nil,
            ) in zip(self._names, *self.raw(), self._numels, sizes, self._has_grad, none):
                scale = sqrt(n / k) if k else 1.0  # sampled norms -> estimates over the whole tensor
                pn *= scale
                if n == 0 and isnan(pn):  # an empty parameter: every norm is 0
                    pn = 0.0
                mean = total / n if n else 0.0
                if not n:
                    std = 0.0
                elif centered >= 0 or isinf(centered):  # ||g - mean|| measured directly
                    std = centered / sqrt(n)
                elif isnan(centered) and not (isfinite(norm) and isfinite(mean)):
                    std = math.nan  # non-finite gradient
                else:  # derived from the sums (cancels when |mean| >> std)
                    var = norm * norm / n - mean * mean
                    std = sqrt(var) if var > 0 else 0.0
                ratio = None
                if not un < 0:  # measured (NaN included: weights that became NaN)
                    un *= scale
                    ratio = un / pn if pn > 0 else (0.0 if un == 0 else math.inf)
                out[name] = ParamStats(
                    norm,
                    max_abs,
                    mean,
                    std,
                    1.0 - nonzero / k if k else 0.0,  # among the sampled entries
                    int(nan),
                    int(nonfinite - nan),
                    bool(got),
                    pn,
                    ratio,
                    grads.get(name),
                    bool(nil),
                    None if isnan(moved) else moved == 0,
                )
            self._params = out
        return self._params

    @property
    def layers(self) -> Mapping[str, float]:
        """Gradient L2 norm per owning module (``sqrt`` of the sum of its parameters' squared norms).

        Keys are module paths as ``named_modules()`` gives them (``""`` for parameters owned by the
        root module); for a mapping or iterable target each tensor is its own layer.
        """
        if self._layers is None:
            sq: dict[str, float] = {}
            for layer, stats in zip(self._layer_of, self.params.values()):
                sq[layer] = sq.get(layer, 0.0) + stats.grad_norm**2
            self._layers = {k: math.sqrt(v) for k, v in sq.items()}
        return self._layers

    @property
    def total_grad_norm(self) -> float:
        """L2 norm of all watched gradients together (as ``torch.nn.utils.clip_grad_norm_`` computes it).

        Of the gradients as the update used them: after clipping, when the loop clips.
        """
        return math.sqrt(sum(s.grad_norm**2 for s in self.params.values()))

    @property
    def unclipped_total_grad_norm(self) -> float | None:
        """The total gradient norm before clipping, or ``None`` when no clip function ran in this step.

        The L2 norm of all watched gradients as they were before the step's first clip: what
        ``torch.nn.utils.clip_grad_norm_`` returned (after ``GradScaler.unscale_`` under AMP, where the
        recipe clips; for a ``norm_type`` other than 2, and for ``clip_grad_value_``, the L2 norm
        measured just before the call), combined as ``sqrt(sum of squares)`` over clip calls on
        disjoint parameters and with the recorded norms of the parameters no clip was given. A second
        clip of the same parameters in one step does not replace the first measurement. Lightning's
        ``gradient_clip_val`` and the Hugging Face Trainer's ``max_grad_norm`` clip that way. Equal to
        :attr:`total_grad_norm` when the clip did not need to rescale.
        """
        if self._unclipped is None:
            return None
        if self._unclipped_total is not None:
            return self._unclipped_total
        measured, covered = self._unclipped
        if not isinstance(measured, float):
            if self._event is not None and not self._event.query():
                self._event.synchronize()  # the copy is not done yet: wait for it
            measured = float(measured)
        # the parameters no clip function was given kept their gradients: their recorded norms count as is
        rest = sum(s.grad_norm**2 for k, s in enumerate(self.params.values()) if k not in covered)
        self._unclipped_total = math.sqrt(measured * measured + rest)
        return self._unclipped_total

    def __repr__(self) -> str:
        loss = "None" if self.loss is None else f"{self.loss:.6g}"
        return (
            f"StepRecord(step={self.step}, params={len(self._names)}, "
            f"total_grad_norm={self.total_grad_norm:.6g}, loss={loss})"
        )
