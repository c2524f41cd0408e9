"""Deliver findings to the user: ``warnings.warn``, ``GradientError`` or nothing, plus logging."""

from __future__ import annotations

import logging
import warnings

from gradwatch.errors import WARNING_FOR_KIND, GradientError, GradWatchWarning
from gradwatch.findings import Finding

__all__ = ["FindingReporter"]

log = logging.getLogger("gradwatch")


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
            warnings.warn(str(finding), category, stacklevel=3)
        else:
            log.debug("%s", finding)
