"""Exceptions and warnings raised by gradwatch.

One root per family: every error gradwatch raises on its own behalf is a :class:`GradWatchError`
(a ``RuntimeError``); every warning it issues about a training run is a :class:`GradWatchWarning`
(a ``UserWarning``) with one subclass per finding kind, so a single kind can be filtered or turned into
an error with the standard :mod:`warnings` machinery from the script, e.g.
``warnings.simplefilter("error", gradwatch.MissingZeroGradWarning)``. (Python's ``-W`` option and
``PYTHONWARNINGS`` cannot name gradwatch's classes: they are parsed before installed packages can be
imported. To stop at the first finding without editing the script, set ``GRADWATCH_ON_FINDING=raise``.)

Bad arguments at the API boundary raise the builtin ``TypeError``/``ValueError`` (what Python users
expect from a wrong argument), never a gradwatch class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from gradwatch.findings import Finding

__all__ = [
    "AllZeroGradWarning",
    "ClipBeforeUnscaleWarning",
    "DiscardedGradWarning",
    "ExplodingGradWarning",
    "GradWatchError",
    "GradWatchWarning",
    "GradientError",
    "IneffectiveClipWarning",
    "LrTooHighWarning",
    "IneffectiveFreezeWarning",
    "MissingZeroGradWarning",
    "NewParamWarning",
    "NoGradWarning",
    "NonfiniteGradWarning",
    "NotUpdatedWarning",
    "VanishingGradWarning",
    "WARNING_FOR_KIND",
]


class GradWatchError(RuntimeError):
    """Root of the errors gradwatch raises on its own behalf (not for bad arguments)."""


class GradientError(GradWatchError):
    """A finding reported with ``on_finding="raise"``.

    Raised at the step boundary where the finding was made (inside ``optimizer.step()``, the decorated
    train step, ``Watcher.step()``, or the next ``backward()`` when the boundary is only seen then).

    Attributes:
        finding: the :class:`gradwatch.Finding` that caused it.
    """

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.message)
        self.finding = finding


class GradWatchWarning(UserWarning):
    """Root of the warnings gradwatch issues about a training run (one subclass per finding kind)."""


class MissingZeroGradWarning(GradWatchWarning):
    """Kind ``missing_zero_grad``: a stale gradient was carried into the next step."""


class DiscardedGradWarning(GradWatchWarning):
    """Kind ``discarded_grad``: gradients were wiped before any optimizer used them."""


class NonfiniteGradWarning(GradWatchWarning):
    """Kind ``nonfinite_grad``: NaN or +-Inf in a gradient."""


class NoGradWarning(GradWatchWarning):
    """Kind ``no_grad``: a parameter that should get a gradient does not."""


class NotUpdatedWarning(GradWatchWarning):
    """Kind ``not_updated``: a parameter has a gradient but never moves."""


class VanishingGradWarning(GradWatchWarning):
    """Kind ``vanishing_grad``: gradient norms collapse towards the input layers."""


class ExplodingGradWarning(GradWatchWarning):
    """Kind ``exploding_grad``: gradient norms grow without bound."""


class AllZeroGradWarning(GradWatchWarning):
    """Kind ``all_zero_grad``: every gradient entry is exactly 0 (e.g. dead ReLUs)."""


class IneffectiveFreezeWarning(GradWatchWarning):
    """Kind ``ineffective_freeze``: a freeze that freezes nothing."""


class ClipBeforeUnscaleWarning(GradWatchWarning):
    """Gradients changed (clipped) while still multiplied by an AMP ``GradScaler``'s scale."""


class IneffectiveClipWarning(GradWatchWarning):
    """Kind ``ineffective_clip``: a clip function called with no parameters (an exhausted generator)."""


class LrTooHighWarning(GradWatchWarning):
    """Kind ``lr_too_high``: updates as large as the weights (the learning rate is far too high)."""


class NewParamWarning(GradWatchWarning):
    """Kind ``new_param``: parameters that appeared in the model after the watcher attached."""


#: Finding kind (the string in ``Finding.kind``) -> the warning class issued for it.
WARNING_FOR_KIND: dict[str, type[GradWatchWarning]] = {
    "missing_zero_grad": MissingZeroGradWarning,
    "discarded_grad": DiscardedGradWarning,
    "nonfinite_grad": NonfiniteGradWarning,
    "no_grad": NoGradWarning,
    "not_updated": NotUpdatedWarning,
    "vanishing_grad": VanishingGradWarning,
    "exploding_grad": ExplodingGradWarning,
    "all_zero_grad": AllZeroGradWarning,
    "ineffective_freeze": IneffectiveFreezeWarning,
    "clip_before_unscale": ClipBeforeUnscaleWarning,
    "ineffective_clip": IneffectiveClipWarning,
    "new_param": NewParamWarning,
    "lr_too_high": LrTooHighWarning,
}
