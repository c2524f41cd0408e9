"""The :class:`Watcher`: attaches to a model, records gradients at every step, feeds the sinks."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import difflib
import fnmatch
import functools
import logging
import math
import numbers
import os
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch

from gradwatch import compat, stats
from gradwatch.boundaries import StepTracker, _graph_task
from gradwatch.config import Config, check_kinds
from gradwatch.detectors import (
    AllZeroGradDetector,
    Detector,
    DiscardedGradDetector,
    ExplodingGradDetector,
    IneffectiveFreezeDetector,
    MissingZeroGradDetector,
    NoGradDetector,
    NonfiniteGradDetector,
    NotUpdatedDetector,
    VanishingGradDetector,
)
from gradwatch.errors import GradientError, GradWatchError, GradWatchWarning
from gradwatch.findings import FINDING_KINDS, Finding
from gradwatch.hooks import HandleGroup, queue_end_of_backward
from gradwatch.provenance import Provenance
from gradwatch.records import Column, Part, StepRecord
from gradwatch.sinks import FindingReporter, History
from gradwatch.targets import resolve_optimizers, resolve_target

__all__ = ["Watcher", "watch"]

log = logging.getLogger("gradwatch")

F = TypeVar("F", bound=Callable[..., Any])

_LIVE: weakref.WeakSet[Watcher] = weakref.WeakSet()


def _disabled_by_env() -> bool:
    return os.environ.get("GRADWATCH_DISABLE", "").strip().lower() in ("1", "true", "yes", "on")


@atexit.register
def _close_all_at_exit() -> None:  # pragma: no cover - runs at interpreter exit
    for w in list(_LIVE):
        try:
            w.close()
        except Exception:
            log.exception("gradwatch: closing a watcher at exit failed")


class _StepState:
    """What the current step has gathered so far (device tensors until it is sealed)."""

    def __init__(self, n: int) -> None:
        self.parts: list[Part] = []
        self.received = bytearray(n)
        self.snaps: dict[int, tuple[list[int], stats.Samples]] = {}
        self.unowned_snap: tuple[list[int], stats.Samples] | None = None
        self.grad_hist: list[tuple[list[int], torch.Tensor]] = []  # (positions, rows) per capture
        self.kept: dict[str, torch.Tensor] = {}
        self.loss: torch.Tensor | float | None = None
        self.order = [-1] * n  # rank of each parameter's first gradient in this step (backward order)
        self.grad_none = [True] * n  # .grad was None (or never read) when the statistics were taken
        self.ranked = 0


class Watcher:
    """Watches the gradients of a model (or of leaf tensors) through training.

    Attach with ``with gradwatch.watch(...) as w``, with :meth:`attach`/:meth:`detach`, or by calling a
    function decorated with :meth:`train_step`. At every recorded step it computes, for every watched
    parameter, the statistics of :class:`~gradwatch.ParamStats` batched on the gradients' device (one
    Triton kernel per group on CUDA, ``_foreach`` kernels without Triton, numpy segment reductions over
    one copy for small CPU tensors; see :mod:`gradwatch.stats`), copies them to the host once, keeps a bounded
    :attr:`history`, and writes TensorBoard scalars and histograms from a background thread.

    Args:
        target: an ``nn.Module`` instance, a ``Mapping[str, Tensor]`` of leaf tensors, or an iterable of
            leaf tensors (see :mod:`gradwatch.targets`). Parameter names are ``named_parameters()``
            names or the mapping's keys.
        optimizer: a ``torch.optim.Optimizer``, a sequence of them, or ``None``. Their ``step()`` calls
            are the step boundaries unless steps are marked (see :mod:`gradwatch.boundaries`).
        logdir: write TensorBoard event files to this folder (a ``SummaryWriter`` gradwatch owns).
        writer: or write to your own ``torch.utils.tensorboard.SummaryWriter`` (flushed, never closed).
        every: statistics schedule (int period, schedule callable or ``None``); default every step.
        histogram_every: histogram schedule; default every 100 steps. Histograms need a writer.
        histogram_bins: buckets per histogram; default 30.
        max_history: records kept in :attr:`history`; default 1000 (about 64 bytes per parameter
            tensor each, plus kept gradients).
        on_finding: ``"warn"`` (default), ``"raise"`` or ``"ignore"``.
        keep_grads: ``True`` or a list of parameter names: keep CPU copies of those ``.grad`` tensors
            per recorded step (``w.history.by_step(7).params["0.weight"].grad``).
        update_ratio: measure the update-to-weight ratio (default ``True``) on a fixed sample of at
            most 1024 entries per parameter (all of them for smaller parameters): 4 KiB per float32
            parameter tensor kept between recorded steps, and as much again during an update.
        start_step: number of the first step (default 0).

    Raises:
        TypeError: a bad target or optimizer (see :func:`~gradwatch.targets.resolve_target`), an unknown
            option, an option of the wrong type, or a ``writer`` without the ``SummaryWriter`` methods.
        ValueError: an empty target, a tensor that does not require grad, a bad option value, or both
            ``logdir`` and ``writer``.

    With ``GRADWATCH_DISABLE=1`` in the environment the watcher validates its arguments and then does
    nothing at all: no hooks, no files, an empty history.
    """

    def __init__(self, target: Any, optimizer: Any = None, **options: Any) -> None:
        valid = Config.option_names()
        unknown = [k for k in options if k not in valid]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, valid, n=1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise TypeError(
                f"Watcher got unknown option(s) {', '.join(hints)}; valid options: {', '.join(valid)}"
            )
        self.config = Config(**options)
        targets = resolve_target(target)
        self._optimizers = [weakref.ref(o) for o in resolve_optimizers(optimizer)]
        self.disabled = _disabled_by_env()
        self.names: tuple[str, ...] = tuple(targets.names)
        self.frozen: tuple[str, ...] = tuple(targets.frozen)
        # Parameters are held strongly only while attached (a module target is re-read on attach), so a
        # detached watcher keeps no model alive and no weak reference blocks module.to() in swap mode.
        self._tensors = None if targets.module is not None else list(targets.params)
        self._params: list[torch.Tensor] | None = None
        self._index = {id(p): i for i, p in enumerate(targets.params)}
        self._layer_of = tuple(targets.layers)
        self._set_shapes(targets.params)
        sizes = self._sample_sizes
        self._views: list[tuple[int, int, torch.Tensor] | None] = [None] * len(self._numels)
        self._views_made = 0  # sample views built so far: a batching layout is valid while this stays
        # parameter positions -> (views built when it was made, its layout): per optimizer, and unowned
        self._layouts: dict[tuple[int, ...], tuple[int, stats.SampleLayout]] = {}
        # parameter positions -> the samples taken before the last recorded update of those parameters
        self._prev_samples: dict[tuple[int, ...], stats.Samples] = {}
        if isinstance(self.config.keep_grads, frozenset):
            for name in sorted(self.config.keep_grads - set(self.names)):
                close = difflib.get_close_matches(name, self.names, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValueError(
                    f"keep_grads names {name!r}, which is not a watched parameter; {hint}"
                    f"watched: {', '.join(self.names[:8])}{' ...' if len(self.names) > 8 else ''}"
                )
        self._keep = self.config.keeps(self.names)
        self._module = weakref.ref(targets.module) if targets.module is not None else None
        self._history = History(self.config.max_history)
        self._findings: list[Finding] = []
        self._reporter = FindingReporter(self.config.on_finding)
        self._handles = HandleGroup()
        self._sink: Any = None
        self._attached = False
        self._closed = False
        self._failed = False
        self._owned: dict[int, list[int]] = {}
        self._owned_key: dict[int, int] = {}
        self._unowned: list[int] = []
        self._versions: list[int] = []
        self._tracker = StepTracker(self, self.config.start_step, bool(self._optimizers))
        self._cur = _StepState(len(self.names))
        self._opt_names: dict[int, str] = {}
        for pos, ref in enumerate(self._optimizers):
            opt = ref()
            self._opt_names[id(opt)] = (
                f"{type(opt).__name__}#{pos}" if len(self._optimizers) > 1 else type(opt).__name__
            )
        self._prov = Provenance(len(self.names))
        cfg = self.config
        by_layer = targets.module is not None  # layer-ratio rules need layers (modules), not loose tensors
        self._discarded = DiscardedGradDetector(self._prov, self.names)
        self._no_grad = NoGradDetector(self._prov, self.names, cfg.no_grad_steps, self._requires_grad)
        self._not_updated = NotUpdatedDetector(
            self.names,
            lambda: self._unowned if self._optimizers else None,
            self._learning_rates,
            lambda: list(self._opt_names.values()),
            cfg.not_updated_steps,
            [k if s > 1 else None for k, s in zip(sizes, self._strides)],
        )
        self._freeze = IneffectiveFreezeDetector(
            self._module if self._module is not None else (lambda: None), self.names
        )
        self._detectors: list[Detector] = [
            MissingZeroGradDetector(self._prov, self.names, self._norm_at, self._numels),
            self._discarded,
            self._no_grad,
            self._not_updated,
            self._freeze,
            NonfiniteGradDetector(),
            AllZeroGradDetector(cfg.all_zero_steps),
            VanishingGradDetector(cfg.persistence, cfg.vanishing_ratio, cfg.vanishing_norm, by_layer),
            ExplodingGradDetector(cfg.persistence, cfg.exploding_ratio, by_layer),
        ]
        self._unjudged: list[StepRecord] = []  # sealed records the detectors have not read yet
        self._closure_step = False  # the optimizer step in progress was given a closure (LBFGS)
        self._closure_before: dict[int, tuple[list[int], stats.Samples]] = {}
        self._graph_checked = False
        self._suppressed: list[tuple[str, tuple[str, ...]]] = list(self.config.suppress)

    # ------------------------------------------------------------------ lifecycle
    def attach(self) -> Watcher:
        """Register the hooks (idempotent: attaching twice adds nothing) and open the TensorBoard writer.

        Returns:
            ``self``.

        Raises:
            GradWatchError: the watcher was closed, or the watched model no longer exists.
        """
        if self.disabled or self._attached:
            return self
        if self._closed:
            raise GradWatchError("this Watcher is closed; create a new one with gradwatch.watch(...)")
        params = self._resolve_params()
        self._params = params
        self._index = {id(p): i for i, p in enumerate(params)}
        self._owned_key.clear()
        try:
            for i, p in enumerate(params):
                if p.requires_grad:
                    self._handles.before_accumulate(p, functools.partial(self._on_incoming_grad, i, p))
                    self._handles.post_accumulate_grad(p, functools.partial(self._on_grad, i))
            for ref in self._optimizers:
                opt = ref()
                if opt is not None:
                    self._handles.optimizer_step(opt, self._on_opt_pre, self._on_opt_post)
            self._refresh_ownership()
            if self._sink is None and (self.config.writer is not None or self.config.logdir is not None):
                from gradwatch.sinks.tensorboard import TensorBoardSink

                self._sink = TensorBoardSink(self.config.logdir, self.config.writer)
        except BaseException:
            self._handles.remove()
            self._params = None
            raise
        self._attached = True
        _LIVE.add(self)
        self._emit([f for d in self._detectors for f in d.on_attach(self._tracker.step)])
        return self

    def detach(self) -> None:
        """Remove every hook; the model, its parameters and the optimizers are left exactly as found.

        A step whose boundary was already seen is recorded first. Idempotent.
        """
        if not self._attached:
            return
        try:
            self._tracker.flush(final=False)
        finally:
            self._handles.remove()
            self._attached = False
            self._params = None
            self._views = [None] * len(self._numels)

    def close(self) -> None:
        """Record the last step, detach, and flush (and close, if gradwatch opened it) the writer.

        Idempotent; runs automatically when a ``with`` block exits (also by an exception) and at
        interpreter exit.
        """
        if self._closed:
            return
        try:
            if self._attached and not self._failed:
                self._tracker.flush(final=True)
            if not self._failed:
                self._emit(self._judge_records(final=True))
        except (GradientError, GradWatchWarning):  # the user's policy, not our failure
            raise
        except Exception as err:
            self._fail(err)
        finally:
            self.detach() if self._attached else None
            self._closed = True
            _LIVE.discard(self)
            if self._sink is not None:
                self._sink.close()

    def flush(self) -> None:
        """Record a step whose boundary was seen and wait until the writer has written everything."""
        if self._attached and not self._failed:
            self._tracker.flush(final=False)
        if self._sink is not None:
            self._sink.flush()

    def __enter__(self) -> Watcher:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def attached(self) -> bool:
        """Whether the hooks are registered."""
        return self._attached

    # ------------------------------------------------------------------ user-facing API
    def train_step(self, fn: F) -> F:
        """Decorate a training-step function: one call is one step.

        The first call attaches the watcher if needed. When the call returns, the step ends (even if it
        stepped several optimizers); a returned scalar tensor or number is recorded as the loss. A call
        that raises ends no step.
        """

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self.disabled or self._closed:
                return fn(*args, **kwargs)
            if not self._attached:
                self.attach()
            self._tracker.begin_user_step()
            done = False
            try:
                out = fn(*args, **kwargs)
                done = True
            finally:
                if done:
                    self._note_loss(out)
                self._guard(self._tracker.end_user_step, done)
            return out

        return wrapper  # type: ignore[return-value]

    def step(self) -> None:
        """Mark a step boundary explicitly (for loops with no optimizer, or to group several)."""
        if self._attached and not self._failed:
            self._guard(self._tracker.mark)

    def record_loss(self, loss: torch.Tensor | float) -> None:
        """Record the loss of the current step (a scalar tensor or a number); read without a host sync.

        Raises:
            TypeError: ``loss`` is not a number or a one-element tensor.
        """
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise TypeError(
                    f"record_loss() needs a scalar loss, got a tensor of shape {tuple(loss.shape)}"
                )
            self._cur.loss = loss.detach().reshape(())
            if self._attached and not self._failed and not self._graph_checked:
                self._graph_checked = True  # once: the walk costs O(graph size) on the host
                self._guard(self._check_graph, loss)
        elif isinstance(loss, numbers.Real) and not isinstance(loss, bool):  # int, float, numpy scalars
            self._cur.loss = float(loss)
        else:
            raise TypeError(f"record_loss() needs a scalar tensor or a number, got {type(loss).__name__}")

    @property
    def current_step(self) -> int:
        """The number of the step now accumulating (the next one to be recorded)."""
        return self._tracker.step

    @property
    def history(self) -> History:
        """Recorded steps, oldest first, at most ``max_history`` of them (a read-only sequence)."""
        self._sync_reads()
        return self._history

    @property
    def skipped_steps(self) -> list[int]:
        """Steps where gradients holding NaN/Inf were dropped without an optimizer step.

        That is what an AMP ``GradScaler`` does when it skips ``step()``: not a bug, so not a finding;
        shown by :meth:`report`. One entry per skipped gradient content (all the passes accumulated
        into it), so a step number repeats when two contents were dropped before the step ended. Only
        known when an optimizer is watched (the last 1000).
        """
        self._sync_reads()
        return list(self._discarded.skipped_steps)

    @property
    def findings(self) -> list[Finding]:
        """Findings so far, oldest first (a copy)."""
        self._sync_reads()
        return list(self._findings)

    def report(self) -> str:
        """A readable summary of the run, for ``print()``.

        Findings first (most severe first, each with its fix), then a per-parameter table of the last
        recorded step: name, shape, grad norm, max |g|, mean, update ratio, non-finite count.
        """
        self._sync_reads()
        lines: list[str] = []
        if self.disabled:
            return "gradwatch is disabled (GRADWATCH_DISABLE is set): nothing was recorded."
        order = {k: i for i, k in enumerate(FINDING_KINDS)}
        findings = sorted(self._findings, key=lambda f: (order.get(f.kind, len(order)), f.step))
        lines.append(f"gradwatch report: {len(findings)} finding(s)")
        for f in findings:
            lines.append(f"  ! {f}")
        skipped = self._discarded.skipped_steps
        at = sorted(set(skipped))
        if skipped:
            lines.append(
                f"  {len(skipped)} optimizer step(s) skipped because the gradients were not finite (an AMP "
                f"GradScaler lowering its scale), around steps {', '.join(map(str, at[:10]))}"
                + (" ..." if len(at) > 10 else "")
            )
        if not self._history:
            lines.append("no step recorded yet")
            return "\n".join(lines)
        rec = self._history[-1]
        lines.append(
            f"step {rec.step}: total grad norm {rec.total_grad_norm:.4g}"
            + ("" if rec.loss is None else f", loss {rec.loss:.4g}")
        )
        header = ("parameter", "shape", "grad norm", "max |g|", "mean", "update ratio", "non-finite")
        rows = []
        for name, shape in zip(self.names, self._shapes):
            s = rec.params[name]
            nonfinite = s.nan_count + s.inf_count
            rows.append(
                (
                    name,
                    "x".join(map(str, shape)) or "scalar",
                    f"{s.grad_norm:.3e}" if s.has_grad or s.grad_norm else "no grad",
                    f"{s.grad_max_abs:.3e}",
                    f"{s.grad_mean:+.3e}",
                    "-" if s.update_ratio is None else f"{s.update_ratio:.3e}",
                    str(nonfinite) if nonfinite else "0",
                )
            )
        widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
        for r in [header, *rows]:
            lines.append(
                "  "
                + "  ".join(v.ljust(w) if c < 2 else v.rjust(w) for c, (v, w) in enumerate(zip(r, widths)))
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        state = (
            "disabled"
            if self.disabled
            else "closed"
            if self._closed
            else "attached"
            if self._attached
            else "detached"
        )
        return (
            f"Watcher({len(self.names)} params, {len(self._optimizers)} optimizer(s), {state}, "
            f"step {self.current_step})"
        )

    # ------------------------------------------------------------------ hooks (training thread)
    def _on_incoming_grad(self, index: int, param: torch.Tensor, _grad: torch.Tensor) -> None:
        if self._failed:
            return
        try:
            tracker = self._tracker
            if not tracker.in_backward or _graph_task() != tracker.task:  # else: nothing to do there
                tracker.incoming()
            self._prov.before_accumulate(index, param)
        except (GradientError, GradWatchWarning):  # the user's policy, not our failure
            raise
        except Exception as err:
            self._fail(err)

    def _on_grad(self, index: int, param: torch.Tensor) -> None:
        if self._failed:
            return
        try:
            tracker = self._tracker
            if not tracker.in_backward or tracker.opt_depth or _graph_task() != tracker.task:
                tracker.grad()  # else: a pass already running, outside any optimizer step: nothing to do
            cur = self._cur
            if not cur.received[index]:
                cur.received[index] = 1
                cur.order[index] = cur.ranked
                cur.ranked += 1
            self._prov.accumulated(index, param)
        except (GradientError, GradWatchWarning):  # the user's policy, not our failure
            raise
        except Exception as err:
            self._fail(err)

    def _on_opt_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        # the hook's args are step()'s positional arguments, the optimizer itself first
        pos = [a for a in (args or ()) if a is not optimizer]
        closure = pos[0] if pos else (kwargs or {}).get("closure")
        self._closure_step = callable(closure)
        if not self._failed:
            self._guard(self._tracker.optimizer_pre, optimizer)

    def _on_opt_post(self, optimizer: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        if not self._failed:
            self._guard(self._tracker.optimizer_post, optimizer)

    # ------------------------------------------------------------------ BoundaryCallbacks
    def queue_end_of_backward(self, callback: Callable[[], None]) -> bool:
        """Internal (BoundaryCallbacks): run ``callback`` when the running backward pass ends."""
        return queue_end_of_backward(lambda: self._guard(callback))

    def parameters_changed(self) -> bool:
        """Internal (BoundaryCallbacks): whether a watched parameter changed in place since then."""
        if not self._versions:
            return False
        params = self._live_params()
        return any(compat.version_counter(p) != v for p, v in zip(params, self._versions))

    def backward_started(self, inside_optimizer: bool) -> None:
        """Internal (BoundaryCallbacks): a backward pass reached its first watched parameter."""
        self._prov.new_pass(inside_optimizer)

    def backward_aborted(self) -> None:
        """Internal (BoundaryCallbacks): the running backward pass raised or was interrupted."""
        # a pass that raised (or was interrupted) half-way is not the user's accumulation bug
        self._prov.used_passes.add(self._prov.pass_id)

    def backward_ended(self, step: int) -> None:
        """Internal (BoundaryCallbacks): a backward pass ended; capture what no optimizer will read."""
        params = self._live_params()
        if not self._optimizers:
            self._versions = [compat.version_counter(p) for p in params]
        else:  # one device flag per pass: tells an AMP-skipped step from discarded gradients
            touched = self._prov.touched.get(self._prov.pass_id)
            if touched:
                # (not reused by the statistics: an in-place write through ``.grad.data``, such as
                # ``p.grad.data.clamp_(-1, 1)``, changes the values without a new version)
                self._prov.pass_finite[self._prov.pass_id] = stats.all_finite(
                    [params[i].grad for i in touched]
                )
        unowned = self._unowned
        if unowned and self.config.every(step):
            before = self._samples(unowned, params) if self.config.update_ratio else None
            self._capture(unowned, params, step, before)
            if before is not None:
                self._cur.unowned_snap = (unowned, before)

    def optimizer_pre(self, optimizer: Any, step: int) -> None:
        """Internal (BoundaryCallbacks): read and judge the gradients an optimizer is about to use."""
        owned = self._owned_by(optimizer)
        if not owned:
            return
        params = self._live_params()
        for i in owned:
            self._prov.check(i, params[i])
        name = self._opt_names.get(id(optimizer), type(optimizer).__name__)
        findings = []
        if not self._closure_step:  # with a closure the gradients are computed inside step(): judge after
            findings = [f for d in self._detectors for f in d.on_optimizer_pre(name, owned, step)]
        if self._closure_step:
            # the closure computes this step's gradients inside step() (and may end the previous step
            # first): keep the weights' sample outside the step state, read everything in the post-hook
            self._closure_before[id(optimizer)] = (owned, self._samples(owned, params))
        elif self.config.every(step):
            before = self._samples(owned, params) if self.config.update_ratio else None
            self._capture(owned, params, step, before)
            if before is not None:
                self._cur.snaps[id(optimizer)] = (owned, before)
        try:
            self._emit(findings)
        except BaseException:
            # on_finding="raise" (or a warning filter set to error) aborts this optimizer step: no post
            # hook will run, so close it here, and count its gradients as seen (already reported)
            self._tracker.opt_depth = 0
            self._cur.snaps.pop(id(optimizer), None)
            self._closure_before.pop(id(optimizer), None)
            for i in owned:
                self._prov.use(i, params[i], step, name, observe=True)
            raise

    def optimizer_post(self, optimizer: Any, step: int, backward_inside: bool) -> None:
        """Internal (BoundaryCallbacks): measure the update, mark the gradients used."""
        owned = self._owned_by(optimizer)
        if not owned:
            return
        params = self._live_params()
        name = self._opt_names.get(id(optimizer), type(optimizer).__name__)
        findings = []
        if self._closure_step:
            findings += [f for d in self._detectors for f in d.on_optimizer_pre(name, owned, step)]
        findings += [f for d in self._detectors for f in d.on_optimizer_post(name, owned, step)]
        for i in owned:
            self._prov.use(i, params[i], step, name, observe=True)
        findings += [f for d in self._detectors for f in d.on_optimizer_used(name, owned, step)]
        try:
            if self.config.every(step):
                self._record_update(optimizer, owned, params, step, backward_inside)
        finally:
            self._emit(findings)

    def _record_update(
        self, optimizer: Any, owned: list[int], params: list[torch.Tensor], step: int, backward_inside: bool
    ) -> None:
        closure = self._closure_before.pop(id(optimizer), None)
        if backward_inside or closure is not None:  # a closure (LBFGS) computed the gradients inside step()
            before = closure[1] if closure is not None else None
            self._capture(owned, params, step, before)  # the weights' norm from before the update
            if before is not None and self.config.update_ratio:
                self._cur.snaps[id(optimizer)] = (owned, before)
        snap = self._cur.snaps.pop(id(optimizer), None)
        if snap is not None:
            self._cur.parts.extend(self._update_parts(*snap, params))

    def seal(self, step: int) -> None:
        """Internal (BoundaryCallbacks): record step ``step`` and hand it to the detectors and sinks."""
        cur, self._cur = self._cur, _StepState(len(self.names))
        params = self._live_params()
        findings: list[Finding] = []
        if not self._optimizers:  # the boundary itself is what uses the gradients
            every = range(len(self.names))
            findings = [f for d in self._detectors for f in d.on_boundary(every, step)]
            for i in every:
                self._prov.use(i, params[i], step, "the update", observe=False)
            findings += [f for d in self._detectors for f in d.on_boundary_used(every, step)]
        try:
            if self.config.every(step):
                self._seal_record(cur, params, step)
            findings += self._judge_records(final=False)
        finally:
            self._emit(findings)

    def _judge_records(self, final: bool) -> list[Finding]:
        """Run the record detectors on sealed records whose host copy has arrived.

        On the CPU that is every record at once. On CUDA a record waits until its asynchronous copy is
        done (``Event.query()``, which does not block), usually one step later; only when more than
        :data:`_MAX_UNJUDGED` records wait (the device runs that far behind) does the oldest one wait for
        its copy. ``final`` judges everything (close, reads of ``findings``).
        """
        findings: list[Finding] = []
        while self._unjudged:
            record = self._unjudged[0]
            event = record._event
            if not final and event is not None and len(self._unjudged) <= _MAX_UNJUDGED and not event.query():
                break
            self._unjudged.pop(0)
            for d in self._detectors:
                findings += d.on_record(record)
            record._read_by("detectors")
        return findings

    def _seal_record(self, cur: _StepState, params: list[torch.Tensor], step: int) -> None:
        if cur.unowned_snap is not None:
            cur.parts.extend(self._update_parts(*cur.unowned_snap, params))
        param_hist = None
        if self._sink is not None and self.config.histogram_every(step):
            param_hist = self._named_hist(self._histograms(range(len(params)), params))
        grad_hist = self._grad_hist_rows(cur.grad_hist)
        # one device-to-host copy for the whole step (asynchronous; waited for by whoever reads first)
        loss = cur.loss
        host, singles, event = _to_host(
            [t for _, _, t in cur.parts],
            [
                loss if isinstance(loss, torch.Tensor) else None,
                None if grad_hist is None else grad_hist[1],
                None if param_hist is None else param_hist[1],
            ],
        )
        host_parts: list[Part] = [(pos, col, t) for (pos, col, _), t in zip(cur.parts, host)]
        host_loss, grad_rows, param_rows = singles
        if host_loss is not None:
            loss = host_loss
        if grad_hist is not None and grad_rows is not None:
            grad_hist = (grad_hist[0], grad_rows)
        if param_hist is not None and param_rows is not None:
            param_hist = (param_hist[0], param_rows)
        record = StepRecord(
            step=step,
            names=self.names,
            layer_of=self._layer_of,
            numels=self._numels,
            parts=host_parts,
            has_grad=[bool(b) for b in cur.received],
            grads=cur.kept,
            loss=loss,
            event=event,
            order=cur.order,
            grad_none=cur.grad_none,
            sample_sizes=self._sample_sizes,
        )
        record._waiting.update(("detectors", "sink") if self._sink is not None else ("detectors",))
        self._history.append(record)
        self._unjudged.append(record)
        if self._sink is not None:
            self._sink.write_step(record, grad_hist, param_hist)

    # ------------------------------------------------------------------ internals
    def _resolve_params(self) -> list[torch.Tensor]:
        if self._tensors is not None:
            return self._tensors
        model = self._module() if self._module is not None else None
        if model is None:
            raise GradWatchError("the watched model no longer exists; create a new watcher for a new model")
        named = dict(model.named_parameters())
        missing = [n for n in self.names if n not in named]
        if missing:
            raise GradWatchError(
                f"parameter(s) {', '.join(missing[:5])} are no longer in the model (layers replaced since "
                f"the watcher was created); create a new watcher with gradwatch.watch(model, ...)"
            )
        return [named[n] for n in self.names]

    def _live_params(self) -> list[torch.Tensor]:
        if self._params is None:
            raise GradWatchError("the watcher is not attached")
        return self._params

    def _refresh_ownership(self) -> None:
        owned_any: set[int] = set()
        for ref in self._optimizers:
            opt = ref()
            if opt is None:
                continue
            idx = self._owned_by(opt)
            owned_any.update(idx)
        self._unowned = [i for i in range(len(self.names)) if i not in owned_any]

    def _owned_by(self, optimizer: Any) -> list[int]:
        key = sum(len(g["params"]) for g in optimizer.param_groups)
        if self._owned_key.get(id(optimizer)) != key:
            seen: dict[int, None] = {}
            for group in optimizer.param_groups:
                for p in group["params"]:
                    i = self._index.get(id(p))
                    if i is not None:
                        seen[i] = None
            self._owned[id(optimizer)] = list(seen)
            self._owned_key[id(optimizer)] = key
            if self._attached:
                self._refresh_ownership()
        return self._owned[id(optimizer)]

    def _requires_grad(self, index: int) -> bool:
        return self._params is None or bool(self._params[index].requires_grad)

    def _set_shapes(self, params: Sequence[torch.Tensor]) -> None:
        """Shapes, entry counts and sample strides of the parameters (again when one is resized)."""
        self._shapes = tuple(tuple(p.shape) for p in params)
        self._complex = tuple(p.is_complex() for p in params)
        # entries as the statistics read them: a complex parameter's real and imaginary parts side by side
        real = [(*shape, 2) if c else shape for c, shape in zip(self._complex, self._shapes)]
        self._numels = tuple(math.prod(shape) for shape in real)
        self._strides = tuple(stats.sample_stride(shape) for shape in real)
        self._sample_sizes = tuple(-(-n // s) if n else 0 for n, s in zip(self._numels, self._strides))
        if hasattr(self, "_not_updated"):
            self._not_updated.sample_sizes = [
                k if s > 1 else None for k, s in zip(self._sample_sizes, self._strides)
            ]

    def _sample_views(self, idx: Sequence[int], params: list[torch.Tensor]) -> list[torch.Tensor]:
        """Views of the sampled entries of ``params[i]`` (cached while the parameter keeps its storage).

        New storage (or a new size on the same storage: ``p.data = p.data[:k]``) is also where a
        parameter may have been resized (``p.data = torch.cat(...)``, a vocabulary that grows) or made
        complex: its entry count and sample stride follow.
        """
        out = []
        for i in idx:
            p = params[i]
            cached = self._views[i]
            if cached is not None and cached[0] == p.data_ptr() and cached[1] == p.numel():
                out.append(cached[2])
                continue
            if (tuple(p.shape), p.is_complex()) != (self._shapes[i], self._complex[i]):
                self._set_shapes(params)
            view = stats.sample_view(p, self._strides[i])
            self._views_made += 1
            # a copy (an unusual, gappy layout; or a view of such a copy) would go stale: rebuilt every time
            if not p.is_sparse and view.untyped_storage().data_ptr() == p.untyped_storage().data_ptr():
                self._views[i] = (p.data_ptr(), p.numel(), view)
            out.append(view)
        return out

    def _layout(self, idx: Sequence[int], views: list[torch.Tensor]) -> stats.SampleLayout:
        """The batching layout of these views (kept while no sample view is rebuilt)."""
        key = tuple(idx)
        hit = self._layouts.get(key)
        if hit is not None and hit[0] == self._views_made:
            return hit[1]
        layout = stats.SampleLayout(views)
        if hit is not None and hit[1].same_batches(layout):
            layout = hit[1]  # views rebuilt, batched alike: samples taken with the old layout still pair up
        self._layouts[key] = (self._views_made, layout)
        self._forget_stale(self._layouts)
        return layout

    def _forget_stale(self, table: dict[tuple[int, ...], Any]) -> None:
        """Bound a table keyed by parameter positions: drop the lists no optimizer owns any more.

        There is one live list per optimizer and one for the parameters none holds; param groups that
        change (``add_param_group``) leave old ones behind.
        """
        if len(table) <= 2 * len(self._optimizers) + 8:
            return
        # (the lists as last computed: recomputing them here would change the unowned list under a caller)
        live = {tuple(self._unowned), *(tuple(owned) for owned in self._owned.values())}
        for key in [k for k in table if k not in live]:
            del table[key]

    def _samples(self, idx: list[int], params: list[torch.Tensor]) -> stats.Samples:
        """Copies of the sampled entries of ``params[i]``, taken before an update."""
        views = self._sample_views(idx, params)
        return stats.take_samples(views, self._layout(idx, views))

    def _update_parts(self, idx: list[int], before: stats.Samples, params: list[torch.Tensor]) -> list[Part]:
        """Record parts for the update of ``params[i]``: sampled update norm, change since the last record.

        The change compares ``before`` (the sample taken before this step's update) with the one taken
        before the previous recorded update, which it then replaces: batched when both have the same
        layout, else parameter by parameter (the list changed, or a parameter got new storage), and not
        for a parameter whose sample changed shape or dtype. The update norm is not measured when the
        storage changed inside ``step()`` itself (the layouts of the two samples differ).
        """
        now = self._sample_views(idx, params)
        parts: list[Part] = []
        if self._layout(idx, now) is before.layout:
            parts += [
                ([idx[j] for j in pos], Column.UPDATE_NORM, t)
                for pos, t in stats.sample_distances(now, before)
            ]
        key = tuple(idx)
        prev = self._prev_samples.get(key)
        if prev is not None and prev.layout is before.layout:
            parts += [
                ([idx[j] for j in pos], Column.RESTORE_DIFF, t)
                for pos, t in stats.sample_distances(before, prev, ord=1.0)
            ]
        else:  # the parameters' list or storage changed since (add_param_group, p.data = ...): one by one
            parts += self._changes_by_parameter(idx, before)
        self._prev_samples.pop(key, None)  # (re-inserted last: the newest entry is the last one)
        self._prev_samples[key] = before
        self._forget_stale(self._prev_samples)
        return parts

    def _changes_by_parameter(self, idx: list[int], before: stats.Samples) -> list[Part]:
        """The restore column parameter by parameter, against whichever kept samples hold each one."""
        old: dict[int, torch.Tensor] = {}
        for key, kept in self._prev_samples.items():  # oldest first: newer samples overwrite older ones
            for j, row in kept.rows().items():
                old[key[j]] = row
        positions, changes = [], []
        for j, row in before.rows().items():
            was = old.get(idx[j])
            if was is not None and was.shape == row.shape and was.dtype == row.dtype:
                positions.append(idx[j])
                changes.append(torch.linalg.vector_norm(row.double() - was.double(), 1.0))
        return [(positions, Column.RESTORE_DIFF, torch.stack(changes)[:, None])] if changes else []

    def _add_blocks(self, idx: Sequence[int], col: int, blocks: list[stats.Block]) -> None:
        for pos, t in blocks:
            self._cur.parts.append(([idx[j] for j in pos], col, t))

    def _capture(
        self, idx: list[int], params: list[torch.Tensor], step: int, samples: stats.Samples | None = None
    ) -> None:
        """Statistics of the gradients of ``params[i] for i in idx`` as they are now, into this step.

        ``samples``: copies of the parameters' sampled entries just taken (their norms are read from
        them instead of gathering the scattered entries again).
        """
        views = self._sample_views(idx, params) if samples is None else None  # (follows resized ones)
        ps = [params[i] for i in idx]
        grads = [p.grad for p in ps]
        for i, g in zip(idx, grads):
            self._cur.grad_none[i] = g is None
        strides = [self._strides[i] for i in idx]
        hist_step = self._sink is not None and self.config.histogram_every(step)
        ranges: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = {} if hist_step else None
        grad_blocks = stats.grad_stats(grads, strides, ranges)
        self._add_blocks(idx, Column.GRAD_NORM, grad_blocks)
        if samples is not None:
            self._add_blocks(idx, Column.PARAM_NORM, stats.sample_norms(samples))
        elif views is not None:
            self._add_blocks(idx, Column.PARAM_NORM, stats.sample_norms(views, self._layout(idx, views)))
        for i, g in zip(idx, grads):
            if self._keep[i] and g is not None:
                self._cur.kept[self.names[i]] = g.detach().to("cpu", copy=True)
        if ranges is not None:
            sums: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # sum and sum of squares, known
            for pos, block in grad_blocks if ranges else ():  # (the CPU path; the fused one needs none)
                for j, (total, square) in zip(pos, torch.stack([block[:, 2], block[:, 0].square()], 1)):
                    sums[idx[j]] = (total, square)
            known_ranges = {idx[j]: r for j, r in ranges.items()}  # min and max, known (CPU)
            hist = self._histograms(idx, [g for g in grads], sums, known_ranges)
            if hist is not None:
                self._cur.grad_hist.append(hist)

    def _histograms(
        self,
        idx: Sequence[int],
        tensors: Sequence[torch.Tensor | None],
        sums: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
        ranges: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> tuple[list[int], torch.Tensor] | None:
        """Histogram rows (on the host) of the non-empty tensors, and their parameter positions.

        ``sums``: parameter position -> the tensor's sum and sum of squares, already computed;
        ``ranges``: parameter position -> its min and max, already computed.
        """
        # (not detached here: the statistics read parameters without recording autograd history)
        keep = [(i, t) for i, t in zip(idx, tensors) if t is not None and t.numel()]
        if not keep:
            return None
        by_device: dict[torch.device, list[tuple[int, torch.Tensor]]] = {}
        for i, t in keep:
            by_device.setdefault(t.device, []).append((i, t))
        order: list[int] = []
        rows: list[torch.Tensor] = []
        for items in by_device.values():
            known = [sums.get(i) for i, _ in items] if sums else None
            extremes = [ranges.get(i) for i, _ in items] if ranges else None
            h = stats.histograms([t for _, t in items], self.config.histogram_bins, known, extremes)
            order.extend(i for i, _ in items)
            rows.append(h)  # on the device: copied with the rest of the step's record
        return order, torch.cat(rows) if len(rows) == 1 else torch.cat([r.to(rows[0].device) for r in rows])

    def _grad_hist_rows(
        self, blocks: list[tuple[list[int], torch.Tensor]]
    ) -> tuple[list[str], torch.Tensor] | None:
        """The step's gradient histogram rows by parameter name (a later capture of one replaces it)."""
        if not blocks:
            return None
        order = [i for idx, _ in blocks for i in idx]
        rows = torch.cat([r for _, r in blocks]) if len(blocks) > 1 else blocks[0][1]
        last = {i: k for k, i in enumerate(order)}
        if len(last) < len(order):  # captured twice in one step: keep the last rows
            keep = sorted(last.values())
            order = [order[k] for k in keep]
            rows = rows[torch.tensor(keep, device=rows.device)]
        return [self.names[i] for i in order], rows

    def _named_hist(
        self, hist: tuple[list[int], torch.Tensor] | None
    ) -> tuple[list[str], torch.Tensor] | None:
        return None if hist is None else ([self.names[i] for i in hist[0]], hist[1])

    def _learning_rates(self) -> dict[int, float]:
        lrs: dict[int, float] = {}
        for ref in self._optimizers:
            opt = ref()
            if opt is None:
                continue
            for group in opt.param_groups:
                lr = group.get("lr")
                if isinstance(lr, torch.Tensor):
                    if lr.device.type != "cpu":
                        continue  # reading it would sync with the device
                    lr = float(lr)
                if not isinstance(lr, (int, float)):
                    continue
                for p in group["params"]:
                    i = self._index.get(id(p))
                    if i is not None:
                        lrs[i] = float(lr)
        return lrs

    def _check_graph(self, loss: torch.Tensor) -> None:
        """Walk the autograd graph of ``loss`` once: is any watched parameter reached? Any unwatched leaf?"""
        step = self._tracker.step
        if loss.grad_fn is None:
            why = "it is a leaf tensor made to require grad" if loss.requires_grad else "it has no grad_fn"
            self._emit(self._no_grad.loss_not_connected(step, why))
            return
        watched = set(self._index)
        reached: set[int] = set()
        foreign: dict[int, torch.Tensor] = {}
        seen: set[Any] = set()
        stack = [loss.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            var = getattr(node, "variable", None)
            if isinstance(var, torch.Tensor):
                if id(var) in watched:
                    reached.add(id(var))
                elif var.requires_grad:
                    foreign[id(var)] = var
            stack.extend(fn for fn, _ in node.next_functions if fn is not None)
        findings: list[Finding] = []
        if not reached:
            findings += self._no_grad.loss_not_connected(step, "its autograd graph contains none of them")
        if foreign and self._module is not None:
            leaves = [(f"tensor{k}", tuple(t.shape)) for k, t in enumerate(foreign.values())]
            findings += self._not_updated.unreachable_leaves(step, leaves)
        self._emit(findings)

    def _norm_at(self, index: int, step: int) -> float | None:
        for record in reversed(self._history):
            if record.step == step:
                return record.params[self.names[index]].grad_norm
            if record.step < step:
                break
        return None

    def _emit(self, findings: list[Finding]) -> None:
        """Hand findings to memory, TensorBoard and the on_finding policy (which may raise)."""
        for f in findings:
            kept = tuple(
                p
                for p in f.params
                if not any(
                    kind == f.kind and any(fnmatch.fnmatchcase(p, pat) for pat in pats)
                    for kind, pats in self._suppressed
                )
            )
            whole_kind = any(kind == f.kind and "*" in pats for kind, pats in self._suppressed)
            if (f.params and not kept) or (not f.params and whole_kind):
                continue
            if kept != f.params:
                f = dataclasses.replace(f, params=kept)
            self._findings.append(f)
            if self._sink is not None:
                self._sink.write_finding(f)
            self._reporter.deliver(f)

    @contextlib.contextmanager
    def suppress(self, kind: str, *params: str) -> Iterator[None]:
        """Silence findings of ``kind`` made inside the ``with`` block.

        Args:
            kind: a finding kind.
            *params: parameter-name patterns (``fnmatch`` style); none means every parameter.

        Raises:
            ValueError: ``kind`` is not a known finding kind.
        """
        check_kinds([kind])
        entry = (kind, params or ("*",))
        self._suppressed.append(entry)
        try:
            yield
        finally:
            self._suppressed.remove(entry)

    def _note_loss(self, out: Any) -> None:
        value = out[0] if isinstance(out, (tuple, list)) and out else out
        scalar = isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point()
        if scalar or isinstance(value, float):
            self.record_loss(value)

    def _sync_reads(self) -> None:
        if self._attached and not self._failed:
            self._guard(self._tracker.flush, False)
        if not self._failed:
            findings = self._guard(self._judge_records, True)
            self._emit(findings or [])

    def _guard(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except (GradientError, GradWatchWarning):  # the user's policy, not our failure
            raise
        except Exception as err:
            self._fail(err)
            return None

    def _fail(self, err: BaseException) -> None:
        if not self._failed:
            self._failed = True
            log.error(
                "gradwatch: internal error, recording stops here and training goes on: %s: %s",
                type(err).__name__,
                err,
                exc_info=err,
            )


#: Records whose host copy may still be in flight before the oldest is waited for (see ``_judge_records``).
_MAX_UNJUDGED = 4


def _to_host(
    parts: list[torch.Tensor], singles: list[torch.Tensor | None]
) -> tuple[list[torch.Tensor], list[torch.Tensor | None], Any]:
    """Host copies of a step's device tensors: one ``cat`` on the device, one non-blocking copy.

    ``parts`` (float64 blocks) and ``singles`` (the loss, histogram rows; None where absent) are
    returned in the same structure, as views of one pinned host buffer, with the CUDA event recorded
    after the copy (None when nothing was on a CUDA device: CPU tensors are returned as they are).
    """
    wanted = [*parts, *(t for t in singles if t is not None)]
    on_device = [t for t in wanted if t.device.type == "cuda"]
    if not on_device:
        return parts, singles, None
    device = on_device[0].device
    flat = torch.cat([t.reshape(-1).to(device=device, dtype=torch.float64) for t in wanted])
    host = torch.empty(flat.shape, dtype=torch.float64, pin_memory=True)
    host.copy_(flat, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    views = iter(host.split([t.numel() for t in wanted]))
    out_parts = [next(views).view(t.shape) for t in parts]
    out_singles = [None if t is None else next(views).view(t.shape) for t in singles]
    return out_parts, out_singles, event


def watch(target: Any, optimizer: Any = None, **options: Any) -> Watcher:
    """Create a :class:`Watcher` and attach it; use it as a context manager to detach and flush on exit.

    Example:
        >>> import torch, gradwatch
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> with gradwatch.watch(model, opt) as w:
        ...     for _ in range(3):
        ...         opt.zero_grad()
        ...         model(torch.ones(4, 3)).pow(2).mean().backward()
        ...         opt.step()
        >>> [r.step for r in w.history]
        [0, 1, 2]
        >>> sorted(w.history[-1].params)
        ['bias', 'weight']

    Args and raises: as :class:`Watcher`.
    """
    return Watcher(target, optimizer, **options).attach()
