"""The :class:`Sink` protocol every destination of records and findings implements, and a null sink.

The recorder hands each sealed :class:`~gradwatch.StepRecord` and each :class:`~gradwatch.Finding` to
every sink in turn, on the training thread: a sink must return at once (queue the work, as the
TensorBoard sink does) and must not read device values. Sinks: :mod:`~gradwatch.sinks.memory` (the
history and findings kept in memory), :mod:`~gradwatch.sinks.tensorboard` (event files, on a
background thread), :mod:`~gradwatch.sinks.warn` (Python warnings, ``GradientError``, log records).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from gradwatch.findings import Finding
    from gradwatch.records import StepRecord

__all__ = ["NullSink", "Sink"]

#: Histogram rows of one step: parameter names, and a ``[len(names), 5 + 2 * bins]`` float64 host tensor
#: (rows of :func:`gradwatch.stats.histograms`: min, max, count, sum, sum of squares, right bucket edges,
#: bucket counts).
HistRows = tuple[Sequence[str], "torch.Tensor"]


class Sink(Protocol):
    """Where records and findings go.

    Attributes:
        wants_histograms: whether this sink writes histograms (only then are they computed).
    """

    wants_histograms: bool

    def write_step(self, record: StepRecord, grad_hist: HistRows | None, param_hist: HistRows | None) -> None:
        """Take one sealed step record and that step's gradient and parameter histograms (or ``None``)."""

    def write_finding(self, finding: Finding) -> None:
        """Take one finding (may raise ``GradientError`` or a warning turned error: the user's policy)."""

    def write_histograms(self, step: int, grad_hist: HistRows | None, param_hist: HistRows | None) -> None:
        """Take histograms of ``step`` written after its record (the last step's, at close)."""

    def write_summary(self, text: str, step: int) -> None:
        """Take the run's summary line (at close)."""

    def flush(self) -> None:
        """Write out everything taken so far (may block until it is written)."""

    def close(self) -> None:
        """Flush and release what the sink holds; idempotent."""


class NullSink:
    """A sink that takes everything and writes nothing (no TensorBoard asked for)."""

    wants_histograms = False

    def write_step(self, record: StepRecord, grad_hist: HistRows | None, param_hist: HistRows | None) -> None:
        """Drop the record (no internal reader waits on this sink)."""

    def write_finding(self, finding: Finding) -> None:
        """Drop the finding."""

    def write_histograms(self, step: int, grad_hist: HistRows | None, param_hist: HistRows | None) -> None:
        """Drop the histograms."""

    def write_summary(self, text: str, step: int) -> None:
        """Drop the summary."""

    def flush(self) -> None:
        """Nothing to flush."""

    def close(self) -> None:
        """Nothing to close."""
