"""``clip_before_unscale``: gradients changed while still multiplied by an AMP ``GradScaler``'s loss scale.

``GradScaler.scale(loss).backward()`` leaves every gradient multiplied by the scale ``S`` (65,536 by
default). Clipping them before ``scaler.unscale_(optimizer)`` compares the *scaled* gradients with the
threshold: ``clip_grad_norm_`` then shrinks them ``S`` times too hard (the update is ``max_norm / S`` long
instead of ``max_norm``), and ``clip_grad_value_`` cuts them at ``clip_value / S`` of the true values.
PyTorch's AMP examples ("Working with unscaled gradients: gradient clipping") call ``unscale_`` first.

How it is seen, without reading a value: the recorder notes each gradient's version counter once the
backward pass and everything queued at its end (DDP's gradient reduction) is done, and looks again just
before each enabled ``GradScaler.unscale_`` (:meth:`gradwatch.hooks.HandleGroup.around_unscale`; the
unscale ``GradScaler.step`` does itself included). A gradient written in place, or replaced, in between was
changed while scaled. Any such change is reported: clipping is the usual one; a linear rescaling there
(``p.grad /= n``) would be harmless but is reported too. Parameters sharded by FSDP2 are not checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from gradwatch.detectors.base import Detector
from gradwatch.findings import Finding, short_list

if TYPE_CHECKING:  # pragma: no cover
    from gradwatch.detectors.base import WatchView

__all__ = ["ClipBeforeUnscaleDetector"]


class ClipBeforeUnscaleDetector(Detector):
    """Gradients changed after ``backward()`` and before ``GradScaler.unscale_``: clipped while scaled.

    Reported once per optimizer, at the first step where it happens, naming the changed parameters.

    Args:
        view: parameter names.
    """

    kinds = ("clip_before_unscale",)

    def __init__(self, view: WatchView) -> None:
        self.names = view.names
        self.reported: set[str] = set()

    def on_unscale(self, name: str, changed: Sequence[int], step: int) -> list[Finding]:  # noqa: D102
        if not changed or name in self.reported:
            return []
        self.reported.add(name)
        grads = short_list([f"{self.names[i]}.grad" for i in changed])
        message = (
            f"{grads} changed in place after backward() and before GradScaler.unscale_() at step "
            f"{step} (optimizer {name}): they were still multiplied by the loss scale, so clipping them "
            f"there (clip_grad_norm_, clip_grad_value_) applies the threshold to the scaled gradients and "
            f"clips them about scale-times too hard. Fix: scaler.scale(loss).backward(); "
            f"scaler.unscale_(optimizer); clip_grad_norm_(model.parameters(), max_norm); "
            f"scaler.step(optimizer); scaler.update()."
        )
        return [Finding("clip_before_unscale", step, tuple(self.names[i] for i in changed), message)]


class IneffectiveClipDetector(Detector):
    """``clip_grad_norm_`` / ``clip_grad_value_`` called with no parameters at all: it clips nothing.

    The usual cause is a generator: ``params = model.parameters()`` is iterated once (by the optimizer's
    constructor, a parameter count, a loop) and is empty when it reaches the clip, which then silently
    does nothing (PyTorch issue 148259; recent versions warn, older ones do not). Seen by wrapping the two
    public functions while a watcher is attached (:meth:`gradwatch.hooks.HandleGroup.around_clip`); a
    function imported by name (``from torch.nn.utils import clip_grad_norm_``) before the watcher attached
    is the original and is not seen. Reported once, at the first such call, naming the watched parameters
    that had gradients then (those the clip was presumably meant for).
    """

    kinds = ("ineffective_clip",)

    def __init__(self) -> None:
        self.reported = False

    def clip_call(
        self, function: str, params: Sequence[object], intended: Sequence[str], step: int
    ) -> list[Finding]:
        """``torch.nn.utils.<function>`` got ``params`` (a list); ``intended``: watched params with grads."""
        if params or self.reported or not intended:
            return []
        self.reported = True
        shown = short_list(intended)
        message = (
            f"torch.nn.utils.{function} was called with no parameters at step {step}, so it clipped nothing "
            f"and {shown} kept their unclipped gradients. The usual cause: a generator such as "
            f"model.parameters() kept in a variable and already consumed (by the optimizer's constructor, a "
            f"count, an earlier loop). Fix: pass model.parameters() at the call "
            f"({function}(model.parameters(), ...)) or keep a list: params = list(model.parameters())."
        )
        return [Finding("ineffective_clip", step, tuple(intended), message)]
