"""Options of a :class:`gradwatch.Watcher`, validated once, at construction.

Schedules decide at which steps something happens. A schedule is any ``Callable[[int], bool]`` taking
the watcher step; :func:`every` and :func:`at_steps` build the common ones, and an ``int`` ``n`` given
to an option means ``every(n)`` (``0`` or ``None`` means never, except for ``every`` itself, which must
record something: pass ``never`` explicitly).
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

__all__ = ["Config", "Schedule", "at_steps", "check_kinds", "every", "never"]

Schedule = Callable[[int], bool]
ScheduleLike = int | Schedule | None
OnFinding = Literal["warn", "raise", "ignore"]


class every:
    """Schedule that fires at every ``n``-th step, counting from ``offset``.

    Args:
        n: period in steps, an ``int >= 1``.
        offset: first step that fires (default 0).

    Raises:
        ValueError: ``n < 1`` or ``offset < 0``.
        TypeError: ``n`` or ``offset`` is not an ``int``.

    Example:
        >>> s = every(3)
        >>> [k for k in range(8) if s(k)]
        [0, 3, 6]
    """

    def __init__(self, n: int, offset: int = 0) -> None:
        for label, value in (("n", n), ("offset", offset)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"every(): {label} must be an int, got {type(value).__name__} {value!r}")
        if n < 1:
            raise ValueError(f"every(): n must be >= 1 step, got {n}; use never() to switch a schedule off")
        if offset < 0:
            raise ValueError(f"every(): offset must be >= 0, got {offset}")
        self.n, self.offset = n, offset

    def __call__(self, step: int) -> bool:
        """Whether the schedule fires at ``step``."""
        return step >= self.offset and (step - self.offset) % self.n == 0

    def __repr__(self) -> str:
        return f"every({self.n})" if not self.offset else f"every({self.n}, offset={self.offset})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, every) and (self.n, self.offset) == (other.n, other.offset)

    def __hash__(self) -> int:
        return hash((every, self.n, self.offset))


class at_steps:
    """Schedule that fires exactly at the given steps.

    Example:
        >>> s = at_steps(0, 5, 7)
        >>> [k for k in range(10) if s(k)]
        [0, 5, 7]
    """

    def __init__(self, *steps: int | Iterable[int]) -> None:
        flat: list[Any] = []
        for s in steps:  # at_steps(1, 2) and at_steps([1, 2]) both work
            flat.extend(s if isinstance(s, Iterable) and not isinstance(s, (str, bytes)) else [s])
        for s in flat:
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise ValueError(f"at_steps(): steps must be ints >= 0, got {s!r}")
        self.steps = frozenset(flat)

    def __call__(self, step: int) -> bool:
        """Whether the schedule fires at ``step``."""
        return step in self.steps

    def __repr__(self) -> str:
        return f"at_steps({', '.join(map(str, sorted(self.steps)))})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, at_steps) and self.steps == other.steps

    def __hash__(self) -> int:
        return hash((at_steps, self.steps))


def never(step: int) -> bool:
    """Schedule that never fires."""
    return False


def check_kinds(kinds: Iterable[str]) -> None:
    """Raise ``ValueError`` naming the valid kinds if any of ``kinds`` is not a finding kind."""
    from gradwatch.findings import FINDING_KINDS

    for kind in kinds:
        if kind not in FINDING_KINDS:
            raise ValueError(f"unknown finding kind {kind!r}; valid kinds: {', '.join(FINDING_KINDS)}")


def _suppress(value: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if isinstance(value, Mapping):
        out = []
        for kind, pats in value.items():
            if isinstance(pats, str):
                pats = [pats]
            if not isinstance(pats, Iterable) or not all(isinstance(p, str) for p in pats):
                raise TypeError(f"suppress[{kind!r}] must be a list of parameter-name patterns, got {pats!r}")
            out.append((kind, tuple(pats) or ("*",)))
    elif isinstance(value, Iterable):  # kinds, or (kind, patterns) pairs as this function returns them
        out = [
            (k[0], tuple(k[1]) or ("*",)) if isinstance(k, tuple) and len(k) == 2 else (k, ("*",))
            for k in value
        ]
    else:
        raise TypeError(
            f"suppress must be a list of finding kinds or a mapping kind -> name patterns, got {value!r}"
        )
    check_kinds(k for k, _ in out)
    return tuple(out)


def _schedule(name: str, value: Any) -> Schedule:
    if value is None or value is False:
        return never
    if isinstance(value, bool):
        raise TypeError(f"{name}=True is ambiguous; pass a step period such as {name}=1 or a schedule")
    if isinstance(value, numbers.Integral):  # (numpy integers too)
        value = int(value)
        if value < 0:
            low = "an int >= 1 (1 = every step)" if name == "every" else ">= 0 steps (0 = never)"
            raise ValueError(f"{name} must be {low}, got {value}")
        return never if value == 0 else every(value)
    if callable(value):
        return value
    raise TypeError(
        f"{name} must be an int step period, a schedule such as gradwatch.every(10), or None; "
        f"got {type(value).__name__} {value!r}"
    )


_WRITER_METHODS = ("add_scalar", "add_histogram_raw", "add_text", "flush")

#: Largest ``histogram_bins`` accepted (TensorBoard's histogram dashboard shows about 30 buckets).
MAX_HISTOGRAM_BINS = 1024


@dataclass(frozen=True)
class Config:
    """Every option of a :class:`gradwatch.Watcher`, declared and validated here once.

    The Watcher's keyword-only options are exactly these fields (``gradwatch.watch(model, opt,
    every=10)`` builds ``Config(every=10)``). Values are validated and normalised when the object is
    built, so a ``Config`` is never invalid: schedules given as ``int`` become :class:`every` (``0`` or
    ``None``: :func:`never`), ``logdir`` becomes a ``str``, ``keep_grads`` a ``bool`` or a
    ``frozenset`` of names, ``suppress`` a tuple of ``(kind, name patterns)`` pairs.

    Attributes:
        logdir: folder for TensorBoard event files (created on attach), ``str`` or ``os.PathLike``;
            default ``None``.
        writer: or your own ``torch.utils.tensorboard.SummaryWriter`` (anything with its
            ``add_scalar``, ``add_histogram_raw``, ``add_text`` and ``flush``), flushed, never closed;
            not with ``logdir``.
        rank_zero_only: in a ``torch.distributed`` job (initialised when the watcher attaches), write
            TensorBoard events on global rank 0 only (default ``True``): every rank records the same
            global gradients and makes the same findings, and one writer per folder keeps TensorBoard
            readable. ``False``: every rank writes (give each its own ``logdir``).
        every: statistics schedule: an int period >= 1 or a schedule callable; default 1 (every step).
            ``gradwatch.never`` records nothing (the hooks and the zero_grad checks still run).
        histogram_every: histogram schedule (needs ``logdir`` or ``writer``); default every 20 steps
            (a 70-step run gets 4 slices, a 1,000-step run 50; the GPU benchmark's "histograms every 20
            steps" configuration), plus the last recorded step at close.
        histogram_bins: buckets per histogram, 1 to 1024; default 30 (TensorBoard's own default).
        max_history: number of :class:`~gradwatch.StepRecord` kept in ``Watcher.history``; default 1000
            (about 80 bytes per parameter tensor each, plus kept gradients).
        on_finding: ``"warn"`` (default), ``"raise"`` or ``"ignore"``; the environment variable
            ``GRADWATCH_ON_FINDING``, when set, replaces it (read by the Watcher).
        keep_grads: ``True`` keeps a CPU copy of every ``.grad`` per recorded step, a collection of
            parameter names keeps those only (``w.history.by_step(7).params["0.weight"].grad``);
            default ``False``. Costs the gradients' size per kept step.
        update_ratio: measure the update-to-weight ratio on recorded steps (default ``True``), on a
            fixed sample of at most 1024 entries per parameter (exact for smaller ones): 4 KiB per
            float32 parameter tensor kept between recorded steps, and as much again during an update;
            see ``ParamStats.update_ratio``.
        start_step: number of the first step (default 0), e.g. when resuming from a checkpoint.
        suppress: findings never to report: a list of kinds, or a mapping kind -> parameter-name
            patterns (``fnmatch`` style, ``"encoder.*"``; ``"*"`` for every parameter).
        no_grad_steps: ``no_grad`` window: optimizer steps in a row without a gradient (default 5).
        all_zero_steps: ``all_zero_grad`` window in recorded steps (default 5).
        not_updated_steps: ``not_updated`` window for held-but-unchanged parameters (default 5).
        persistence: recorded steps in a row a vanishing/exploding rule must hold (default 5).
        vanishing_ratio: first/last layer gradient-norm ratio below which gradients vanish, in (0, 1)
            (1e-3, AutoTrainer, ICSE 2021).
        vanishing_norm: first-layer gradient norm below which gradients vanish (1e-4, AutoTrainer).
        exploding_ratio: first/last layer gradient-norm ratio above which gradients explode, > 1 (70,
            AutoTrainer); also the growth factor of TheDeepChecker's sustained-growth rule.
        read_loss: whether to read the value of a one-element loss handed to ``backward()``, to find where
            a non-finite loss was born in the forward pass (a walk of its autograd graph, run only when
            it is NaN or Inf; ``docs/detectors.md``, ``nonfinite_grad``). ``None`` (default): only where
            reading costs nothing, a loss on the CPU. ``True``: on an accelerator too, which waits for
            the device at every ``backward()`` call (for a run that hunts a NaN). ``False``: never.

    Raises:
        TypeError: an option of the wrong type, or a ``writer`` without the ``SummaryWriter`` methods.
        ValueError: a bad value (negative sizes, unknown ``on_finding`` or finding kind), or both
            ``logdir`` and ``writer``.
    """

    logdir: str | None = None
    writer: Any = None
    rank_zero_only: bool = True
    every: Schedule = 1  # type: ignore[assignment]  # normalised in __post_init__
    histogram_every: Schedule = 20  # type: ignore[assignment]
    histogram_bins: int = 30
    max_history: int = 1000
    on_finding: OnFinding = "warn"
    keep_grads: bool | frozenset[str] = False
    update_ratio: bool = True
    start_step: int = 0
    suppress: tuple[tuple[str, tuple[str, ...]], ...] = ()
    no_grad_steps: int = 5
    all_zero_steps: int = 5
    not_updated_steps: int = 5
    persistence: int = 5
    vanishing_ratio: float = 1e-3
    vanishing_norm: float = 1e-4
    exploding_ratio: float = 70.0
    read_loss: bool | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        logdir = self.logdir
        if logdir is not None and not isinstance(logdir, (str, os.PathLike)):
            raise TypeError(f"logdir must be a path (str or os.PathLike), got {type(logdir).__name__}")
        put("logdir", None if logdir is None else os.fspath(logdir))
        if self.writer is not None:
            if self.logdir is not None:
                raise ValueError("pass either logdir= or writer=, not both")
            missing = [m for m in _WRITER_METHODS if not hasattr(self.writer, m)]
            if missing:
                raise TypeError(
                    f"writer must be a torch.utils.tensorboard.SummaryWriter (or one with the same methods); "
                    f"{type(self.writer).__name__} lacks {', '.join(missing)}"
                )
        if (
            self.every is None
            or self.every is False
            or (
                isinstance(self.every, numbers.Integral)
                and not isinstance(self.every, bool)
                and self.every == 0
            )
        ):
            raise ValueError(
                f"every={self.every!r} would record no step at all while the hooks stay attached (and the "
                f"zero_grad checks still run); every must be an int >= 1 (1 = every step, the default) or "
                f"a schedule such as gradwatch.every(10). To watch nothing, do not attach a watcher (or "
                f"w.detach()); to switch only recording off, pass every=gradwatch.never explicitly."
            )
        put("every", _schedule("every", self.every))
        put("histogram_every", _schedule("histogram_every", self.histogram_every))
        for name, low in (
            ("histogram_bins", 1),
            ("max_history", 1),
            ("start_step", 0),
            ("no_grad_steps", 1),
            ("all_zero_steps", 1),
            ("not_updated_steps", 1),
            ("persistence", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if self.histogram_bins > MAX_HISTOGRAM_BINS:
            raise ValueError(
                f"histogram_bins must be between 1 and {MAX_HISTOGRAM_BINS}, got {self.histogram_bins}: each "
                f"histogram step holds bins x parameters counts on the device, and TensorBoard's histogram "
                f"dashboard shows about 30 buckets (its own default, and gradwatch's)"
            )
        for name in ("vanishing_ratio", "vanishing_norm", "exploding_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
            if not value > 0 or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
            put(name, float(value))
        if not self.vanishing_ratio < 1:
            raise ValueError(
                f"vanishing_ratio must be in (0, 1), got {self.vanishing_ratio}: it is the first/last layer "
                f"gradient-norm ratio *below* which gradients vanish (default 1e-3, AutoTrainer); at 1 or "
                f"above every healthy network would be reported"
            )
        if not self.exploding_ratio > 1:
            raise ValueError(
                f"exploding_ratio must be > 1, got {self.exploding_ratio}: it is the first/last layer "
                f"gradient-norm ratio (and growth factor) *above* which gradients explode (default 70, "
                f"AutoTrainer); at 1 or below every healthy network would be reported"
            )
        if self.on_finding not in ("warn", "raise", "ignore"):
            raise ValueError(f"on_finding must be 'warn', 'raise' or 'ignore', got {self.on_finding!r}")
        for name in ("update_ratio", "rank_zero_only"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.read_loss is not None and not isinstance(self.read_loss, bool):
            raise TypeError(
                f"read_loss must be None (read a CPU loss only), True (on accelerators too) or False, "
                f"got {self.read_loss!r}"
            )
        keep: Any = self.keep_grads
        if isinstance(keep, str):
            put("keep_grads", frozenset([keep]))
        elif not isinstance(keep, bool):
            if not isinstance(keep, Collection) or not all(isinstance(n, str) for n in keep):
                raise TypeError(f"keep_grads must be True/False or a list of parameter names, got {keep!r}")
            put("keep_grads", frozenset(keep))
        put("suppress", _suppress(self.suppress))

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The names of every option, in declaration order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_options(cls, options: Mapping[str, Any], where: str = "Watcher") -> Config:
        """Build a ``Config`` from keyword options, naming ``where`` and the nearest valid option on a typo.

        Raises:
            TypeError: an unknown option (with "did you mean ...?" and the valid ones), or a bad type.
            ValueError: a bad value.
        """
        valid = cls.option_names()
        unknown = [k for k in options if k not in valid]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, valid, n=1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise TypeError(
                f"{where} got unknown option(s) {', '.join(hints)}; valid options: {', '.join(valid)}"
            )
        return cls(**options)

    def keeps(self, names: Sequence[str]) -> list[bool]:
        """For each name, whether ``keep_grads`` asks to keep its gradient."""
        if isinstance(self.keep_grads, bool):
            return [self.keep_grads] * len(names)
        return [n in self.keep_grads for n in names]
