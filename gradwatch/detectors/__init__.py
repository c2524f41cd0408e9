"""Detectors: one small class per finding kind, reading host-side events and step records."""

from gradwatch.detectors.base import Detector
from gradwatch.detectors.clipping import ClipBeforeUnscaleDetector
from gradwatch.detectors.connectivity import IneffectiveFreezeDetector, NoGradDetector, NotUpdatedDetector
from gradwatch.detectors.record_based import (
    AllZeroGradDetector,
    ExplodingGradDetector,
    NonfiniteGradDetector,
    VanishingGradDetector,
)
from gradwatch.detectors.zero_grad import DiscardedGradDetector, MissingZeroGradDetector

__all__ = [
    "AllZeroGradDetector",
    "ClipBeforeUnscaleDetector",
    "Detector",
    "DiscardedGradDetector",
    "ExplodingGradDetector",
    "IneffectiveFreezeDetector",
    "MissingZeroGradDetector",
    "NoGradDetector",
    "NonfiniteGradDetector",
    "NotUpdatedDetector",
    "VanishingGradDetector",
]
