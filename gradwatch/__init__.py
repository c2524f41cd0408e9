"""gradwatch: make a PyTorch training loop explain its own gradients.

Attach to any ``nn.Module`` (or leaf tensors) and every step's per-parameter gradient statistics are
recorded on the device in one batched pass, kept in a bounded history, and streamed to TensorBoard::

    import gradwatch as gw

    with gw.watch(model, optimizer, logdir="runs/exp1") as w:
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
    print(w.report())
"""

from importlib.metadata import PackageNotFoundError, version

from gradwatch.config import at_steps, every, never
from gradwatch.errors import (
    AllZeroGradWarning,
    ClipBeforeUnscaleWarning,
    DiscardedGradWarning,
    ExplodingGradWarning,
    GradientError,
    GradWatchError,
    GradWatchWarning,
    IneffectiveClipWarning,
    IneffectiveFreezeWarning,
    LrTooHighWarning,
    MissingZeroGradWarning,
    NewParamWarning,
    NoGradWarning,
    NonfiniteGradWarning,
    NotUpdatedWarning,
    VanishingGradWarning,
)
from gradwatch.findings import FINDING_KINDS, Finding
from gradwatch.records import ParamStats, StepRecord
from gradwatch.watcher import Watcher, watch

try:
    __version__ = version("gradwatch")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "FINDING_KINDS",
    "AllZeroGradWarning",
    "ClipBeforeUnscaleWarning",
    "DiscardedGradWarning",
    "ExplodingGradWarning",
    "Finding",
    "GradWatchError",
    "GradWatchWarning",
    "GradientError",
    "IneffectiveClipWarning",
    "IneffectiveFreezeWarning",
    "LrTooHighWarning",
    "MissingZeroGradWarning",
    "NewParamWarning",
    "NoGradWarning",
    "NonfiniteGradWarning",
    "NotUpdatedWarning",
    "ParamStats",
    "StepRecord",
    "VanishingGradWarning",
    "Watcher",
    "__version__",
    "at_steps",
    "every",
    "never",
    "watch",
]
