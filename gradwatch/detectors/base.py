"""The detector interface: one small class per finding kind, fed host-side events by the watcher.

A detector receives the events below (every method is a no-op by default) and returns the findings it
makes. Events arrive on the training thread (or the autograd engine's thread, inside ``backward()``);
a detector must not read device values in them except where its docstring says it pays for one host
read in a rare case.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from gradwatch.findings import Finding
    from gradwatch.records import StepRecord

__all__ = ["Detector"]


class Detector:
    """Base class of all detectors (events are no-ops; override what you need).

    Attributes:
        kinds: the finding kinds this detector can report.
    """

    kinds: tuple[str, ...] = ()

    def on_attach(self, step: int) -> list[Finding]:
        """The watcher attached (its first step will be ``step``)."""
        return []

    def on_optimizer_pre(self, name: str, owned: Sequence[int], step: int) -> list[Finding]:
        """An optimizer (``name``, e.g. ``"SGD#0"``) is about to update the parameters ``owned``.

        For a step given a closure (LBFGS), whose gradients only exist once the closure ran, this
        event comes after the step instead, just before ``on_optimizer_post``.
        """
        return []

    def on_optimizer_post(self, name: str, owned: Sequence[int], step: int) -> list[Finding]:
        """That optimizer has updated the parameters ``owned`` (their provenance not yet marked used)."""
        return []

    def on_optimizer_used(self, name: str, owned: Sequence[int], step: int) -> list[Finding]:
        """After ``on_optimizer_post``, once the gradients of ``owned`` are marked as used."""
        return []

    def on_boundary(self, unowned: Sequence[int], step: int) -> list[Finding]:
        """Step ``step`` ended with no optimizer watched: the boundary uses the gradients of ``unowned``."""
        return []

    def on_boundary_used(self, unowned: Sequence[int], step: int) -> list[Finding]:
        """After ``on_boundary``, once those gradients are marked as used."""
        return []

    def on_record(self, record: StepRecord) -> list[Finding]:
        """A step record was sealed (its values may be read; this costs a host read on CUDA)."""
        return []
