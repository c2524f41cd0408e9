"""Options of a :class:`gradwatch.Watcher`, validated once, at construction.

Schedules decide at which steps something happens. A schedule is any ``Callable[[int], bool]`` taking
the watcher step; :func:`every` and :func:`at_steps` build the common ones, and an ``int`` ``n`` given
to an option means ``every(n)`` (``0`` or ``None`` means never).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
    elif isinstance(value, Iterable):
        out = [(k, ("*",)) for k in value]
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
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{name} must be >= 0 steps (0 = never), got {value}")
        return never if value == 0 else every(value)
    if callable(value):
        return value
    raise TypeError(
        f"{name} must be an int step period, a schedule such as gradwatch.every(10), or None; "
        f"got {type(value).__name__} {value!r}"
    )


@dataclass(frozen=True)
class Config:
    """Validated watcher options (all keyword-only on :class:`gradwatch.Watcher`).

    Attributes:
        logdir: folder for TensorBoard event files (created on attach), or ``None``.
        every: statistics schedule; default every step.
        histogram_every: histogram schedule (needs ``logdir`` or ``writer``); default every 100 steps.
        histogram_bins: buckets per histogram, default 30 (TensorBoard's own default).
        max_history: number of :class:`~gradwatch.StepRecord` kept in ``Watcher.history``; default 1000.
        on_finding: ``"warn"`` (default), ``"raise"`` or ``"ignore"``.
        keep_grads: ``True`` keeps a CPU copy of every ``.grad`` per recorded step, a collection of
            parameter names keeps those only; default ``False``. Costs the gradients' size per kept step.
        update_ratio: measure the update-to-weight ratio on recorded steps (default ``True``), on a
            fixed sample of at most 1024 entries per parameter (exact for smaller ones; 4 KiB kept
            per tensor); see ``ParamStats.update_ratio``.
        start_step: number of the first step (default 0), e.g. when resuming from a checkpoint.
        suppress: findings never to report: ``(kind, name patterns)`` pairs; patterns are ``fnmatch``
            style (``"encoder.*"``), ``"*"`` for every parameter.
        no_grad_steps: ``no_grad`` window: optimizer steps in a row without a gradient (default 5).
        all_zero_steps: ``all_zero_grad`` window in recorded steps (default 5).
        not_updated_steps: ``not_updated`` window for held-but-unchanged parameters (default 5).
        persistence: recorded steps in a row a vanishing/exploding rule must hold (default 5).
        vanishing_ratio: first/last layer gradient-norm ratio below which gradients vanish (1e-3,
            AutoTrainer, ICSE 2021).
        vanishing_norm: first-layer gradient norm below which gradients vanish (1e-4, AutoTrainer).
        exploding_ratio: first/last layer gradient-norm ratio above which gradients explode (70,
            AutoTrainer); also the growth factor of TheDeepChecker's sustained-growth rule.
    """

    logdir: str | None = None
    every: Schedule = field(default_factory=lambda: every(1))
    histogram_every: Schedule = field(default_factory=lambda: every(100))
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

    @classmethod
    def build(
        cls,
        *,
        logdir: str | os.PathLike[str] | None = None,
        every: ScheduleLike = 1,
        histogram_every: ScheduleLike = 100,
        histogram_bins: int = 30,
        max_history: int = 1000,
        on_finding: str = "warn",
        keep_grads: bool | Collection[str] = False,
        update_ratio: bool = True,
        start_step: int = 0,
        suppress: Any = None,
        no_grad_steps: int = 5,
        all_zero_steps: int = 5,
        not_updated_steps: int = 5,
        persistence: int = 5,
        vanishing_ratio: float = 1e-3,
        vanishing_norm: float = 1e-4,
        exploding_ratio: float = 70.0,
    ) -> Config:
        """Validate raw option values and build a :class:`Config`.

        Raises:
            TypeError: an option has the wrong type.
            ValueError: an option has a bad value (negative sizes, unknown ``on_finding``).
        """
        if logdir is not None and not isinstance(logdir, (str, os.PathLike)):
            raise TypeError(f"logdir must be a path (str or os.PathLike), got {type(logdir).__name__}")
        for name, value, low in (
            ("histogram_bins", histogram_bins, 1),
            ("max_history", max_history, 1),
            ("start_step", start_step, 0),
            ("no_grad_steps", no_grad_steps, 1),
            ("all_zero_steps", all_zero_steps, 1),
            ("not_updated_steps", not_updated_steps, 1),
            ("persistence", persistence, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        for fname, fvalue in (
            ("vanishing_ratio", vanishing_ratio),
            ("vanishing_norm", vanishing_norm),
            ("exploding_ratio", exploding_ratio),
        ):
            if isinstance(fvalue, bool) or not isinstance(fvalue, (int, float)):
                raise TypeError(f"{fname} must be a number, got {type(fvalue).__name__} {fvalue!r}")
            if not fvalue > 0 or not math.isfinite(fvalue):
                raise ValueError(f"{fname} must be a finite number > 0, got {fvalue}")
        if on_finding not in ("warn", "raise", "ignore"):
            raise ValueError(f"on_finding must be 'warn', 'raise' or 'ignore', got {on_finding!r}")
        if not isinstance(update_ratio, bool):
            raise TypeError(f"update_ratio must be True or False, got {update_ratio!r}")
        kept: bool | frozenset[str]
        if isinstance(keep_grads, bool):
            kept = keep_grads
        elif isinstance(keep_grads, str):
            kept = frozenset([keep_grads])
        elif isinstance(keep_grads, Collection) and all(isinstance(n, str) for n in keep_grads):
            kept = frozenset(keep_grads)
        else:
            raise TypeError(f"keep_grads must be True/False or a list of parameter names, got {keep_grads!r}")
        return cls(
            logdir=None if logdir is None else os.fspath(logdir),
            every=_schedule("every", every),
            histogram_every=_schedule("histogram_every", histogram_every),
            histogram_bins=histogram_bins,
            max_history=max_history,
            on_finding=on_finding,  # type: ignore[arg-type]
            keep_grads=kept,
            update_ratio=update_ratio,
            start_step=start_step,
            suppress=_suppress(suppress),
            no_grad_steps=no_grad_steps,
            all_zero_steps=all_zero_steps,
            not_updated_steps=not_updated_steps,
            persistence=persistence,
            vanishing_ratio=float(vanishing_ratio),
            vanishing_norm=float(vanishing_norm),
            exploding_ratio=float(exploding_ratio),
        )

    def keeps(self, names: Sequence[str]) -> list[bool]:
        """For each name, whether ``keep_grads`` asks to keep its gradient."""
        if isinstance(self.keep_grads, bool):
            return [self.keep_grads] * len(names)
        return [n in self.keep_grads for n in names]
