"""Findings as Python warnings (one subclass per kind), a raised ``GradientError``, and log records."""

from __future__ import annotations

import logging
import os
import sys
import warnings

import torch

from gradwatch.errors import WARNING_FOR_KIND, GradientError, GradWatchWarning
from gradwatch.findings import Finding
from gradwatch.records import StepRecord
from gradwatch.sinks.base import HistRows

__all__ = ["WarningSink", "user_stacklevel"]

log = logging.getLogger("gradwatch")

_SKIP = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),  # gradwatch/
    os.path.dirname(os.path.abspath(torch.__file__)),  # torch/ (optimizer and autograd wrappers)
)


#: Training frameworks whose frames stand between the user's code and an optimizer step.
_FRAMEWORKS = ("lightning", "pytorch_lightning", "transformers", "accelerate")


def user_stacklevel() -> int:
    """``stacklevel`` that attributes a warning to the user's own code.

    That is the first frame outside gradwatch, torch and the training frameworks (Lightning,
    transformers, accelerate) that call ``optimizer.step()`` on the user's behalf.
    """
    frame = sys._getframe(1)
    level = 1
    while frame is not None and (
        frame.f_code.co_filename.startswith(_SKIP)
        or frame.f_globals.get("__name__", "").partition(".")[0] in _FRAMEWORKS
    ):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


class WarningSink:
    """Writes findings as the ``on_finding`` policy says: warnings, an exception, or log records only.

    ``"warn"`` issues each finding once per (kind, parameter names) through :func:`warnings.warn` with
    that kind's :class:`~gradwatch.GradWatchWarning` subclass; ``"raise"`` raises
    :class:`~gradwatch.GradientError`; ``"ignore"`` only logs at DEBUG level. Every finding is also
    logged once on the ``"gradwatch"`` logger.
    """

    wants_histograms = False

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self._seen: set[tuple[str, tuple[str, ...]]] = set()

    def write_step(self, record: StepRecord, grad_hist: HistRows | None, param_hist: HistRows | None) -> None:
        """Records are not reported (nothing to do)."""

    def write_histograms(self, step: int, grad_hist: HistRows | None, param_hist: HistRows | None) -> None:
        """Histograms are not reported."""

    def write_summary(self, text: str, step: int) -> None:
        """Log the run's summary line on the ``"gradwatch"`` logger (INFO)."""
        log.info("%s", text)

    def flush(self) -> None:
        """Nothing to flush (warnings and log records are issued at once)."""

    def close(self) -> None:
        """Nothing to close."""

    def write_finding(self, finding: Finding) -> None:
        """Report one finding according to the policy.

        Raises:
            GradientError: when the policy is ``"raise"``.
        """
        key = (finding.kind, finding.params)
        first = key not in self._seen
        self._seen.add(key)
        if self.policy == "raise":
            raise GradientError(finding)
        if not first:
            return
        if self.policy == "warn":
            log.info("%s", finding)
            category = WARNING_FOR_KIND.get(finding.kind, GradWatchWarning)
            warnings.warn(str(finding), category, stacklevel=user_stacklevel())
        else:
            log.debug("%s", finding)
