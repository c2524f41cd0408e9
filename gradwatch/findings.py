"""Findings: what gradwatch reports (:class:`Finding`) and the kinds it knows (:data:`FINDING_KINDS`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FINDING_KINDS", "Finding"]

#: Every finding kind gradwatch knows, most severe first (the order ``Watcher.report()`` uses).
FINDING_KINDS: tuple[str, ...] = (
    "nonfinite_grad",
    "missing_zero_grad",
    "discarded_grad",
    "no_grad",
    "not_updated",
    "ineffective_freeze",
    "exploding_grad",
    "vanishing_grad",
    "all_zero_grad",
)


@dataclass(frozen=True)
class Finding:
    """One gradient bug found in a training run.

    Attributes:
        kind: one of :data:`FINDING_KINDS` (the strings are API; new kinds may be added).
        step: the watcher step (0-based, or from ``start_step``) at which it was found.
        params: the parameter names involved, exactly as ``named_parameters()`` or the target
            mapping's keys give them.
        message: what was seen, where (parameter, step) and how to fix it.
    """

    kind: str
    step: int
    params: tuple[str, ...]
    message: str

    def __str__(self) -> str:
        return f"[{self.kind}] step {self.step}: {self.message}"
