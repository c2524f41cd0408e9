"""Where step records and findings go: memory history, TensorBoard, warnings/logging."""

from gradwatch.sinks.memory import History
from gradwatch.sinks.report import FindingReporter

__all__ = ["FindingReporter", "History"]
