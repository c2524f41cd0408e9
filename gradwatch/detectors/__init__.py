"""Detectors: one small class per finding kind, reading host-side events and step records."""

from gradwatch.detectors.base import Detector
from gradwatch.detectors.provenance import Provenance
from gradwatch.detectors.zero_grad import DiscardedGradDetector, MissingZeroGradDetector

__all__ = ["Detector", "DiscardedGradDetector", "MissingZeroGradDetector", "Provenance"]
