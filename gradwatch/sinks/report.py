"""Deliver findings to the user: ``warnings.warn``, ``GradientError`` or nothing, plus logging."""

from __future__ import annotations

import logging
import os
import sys
import warnings

import torch

from gradwatch.errors import WARNING_FOR_KIND, GradientError, GradWatchWarning
from gradwatch.findings import Finding

__all__ = ["FindingReporter"]

log = logging.getLogger("gradwatch")

_SKIP = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),  # gradwatch/
    os.path.dirname(os.path.abspath(torch.__file__)),  # torch/ (optimizer and autograd wrappers)
)


def _user_stacklevel() -> int:
    """``stacklevel`` that attributes a warning to the first frame outside gradwatch and torch."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_SKIP):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


class FindingReporter:
    """Applies the ``on_finding`` policy.

    ``"warn"`` issues each finding once per (kind, parameter names) through :func:`warnings.warn` with
    that kind's :class:`~gradwatch.GradWatchWarning` subclass; ``"raise"`` raises
    :class:`~gradwatch.GradientError`; ``"ignore"`` only logs at DEBUG level. Every finding is also
    logged once on the ``"gradwatch"`` logger.
    """

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self._seen: set[tuple[str, tuple[str, ...]]] = set()

    def deliver(self, finding: Finding) -> None:
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
            warnings.warn(str(finding), category, stacklevel=_user_stacklevel())
        else:
            log.debug("%s", finding)
