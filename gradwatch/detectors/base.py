"""The detector interface: one small class per finding kind, fed host-side events by the watcher.

A detector receives the events below (every method is a no-op by default) and returns the findings it
makes. Events arrive on the training thread (or the autograd engine's thread, inside ``backward()``);
a detector must not read device values in them except where its docstring says it pays for one host
read in a rare case.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from gradwatch.findings import Finding
    from gradwatch.provenance import Provenance
    from gradwatch.records import StepRecord

__all__ = ["Detector", "WatchView"]


class WatchView(Protocol):
    """What detectors may read of the watch (the recorder implements it; nothing here writes)."""

    @property
    def names(self) -> Sequence[str]:
        """Watched parameter names, in ``named_parameters()`` order (positions index them)."""

    @property
    def provenance(self) -> Provenance:
        """The host-side provenance of every ``.grad`` (read-only to detectors)."""

    @property
    def numels(self) -> Sequence[int]:
        """Entries of each parameter (a complex parameter counts its real and imaginary parts)."""

    def module(self) -> nn.Module | None:
        """The watched module, or ``None`` (loose tensors, or the module no longer exists)."""

    def unowned(self) -> Sequence[int] | None:
        """Positions no watched optimizer holds; ``None`` when no optimizer is watched."""

    def learning_rates(self) -> dict[int, float]:
        """Position -> learning rate of its param group, where it is a host number."""

    def optimizer_names(self) -> Sequence[str]:
        """Names of the watched optimizers (``"SGD"``, or ``"SGD#0"``... when there are several)."""

    def requires_grad(self, i: int) -> bool:
        """Whether parameter ``i`` requires grad now (True when not attached)."""

    def sampled_size(self, i: int) -> int | None:
        """Entries in parameter ``i``'s update sample when it is sampled, else ``None`` (all entries)."""

    def norm_at(self, i: int, step: int) -> float | None:
        """Parameter ``i``'s recorded gradient norm at ``step``, or ``None`` when not recorded (or gone)."""

    def closure_stepped(self) -> set[int]:
        """Positions held by an optimizer whose ``step()`` was given a closure (LBFGS)."""

    def shape(self, i: int) -> tuple[int, ...]:
        """Parameter ``i``'s shape (the whole tensor's, for a sharded parameter)."""

    def optimizer_positions(self) -> dict[str, Sequence[int]]:
        """Optimizer name -> positions of the watched parameters it holds."""

    def backward_roots(self) -> Sequence[Any]:
        """Autograd roots of the backward call whose pass is ending (several optimizers only, else empty)."""

    def positions_by_id(self) -> Mapping[int, int]:
        """``id()`` of each watched parameter tensor -> its position."""

    def optimizer_holding(self, t: object) -> str | None:
        """Name of the watched optimizer that holds the tensor ``t`` (by identity), or ``None``."""


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

    def on_unscale(self, name: str, changed: Sequence[int], step: int) -> list[Finding]:
        """An enabled ``GradScaler.unscale_`` is about to unscale the gradients of optimizer ``name``.

        ``changed``: its parameters whose ``.grad`` was written in place or replaced since the end of
        the last backward pass (while still scaled).
        """
        return []

    def on_backward_end(self, touched: Collection[int], step: int) -> list[Finding]:
        """A backward pass ended, having accumulated gradients into the parameters ``touched``."""
        return []

    def on_close(self, step: int) -> list[Finding]:
        """The watcher is closing (``step``: the last step number in use)."""
        return []

    def on_record(self, record: StepRecord) -> list[Finding]:
        """A step record was sealed (its values may be read; this costs a host read on CUDA)."""
        return []
