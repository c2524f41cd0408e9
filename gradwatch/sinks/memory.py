"""The records and findings kept in memory: ``Watcher.history`` and ``Watcher.findings``."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from typing import overload

from gradwatch.findings import Finding
from gradwatch.records import StepRecord
from gradwatch.sinks.base import HistRows

__all__ = ["History", "MemorySink"]


class History(Sequence[StepRecord]):
    """The last ``maxlen`` :class:`~gradwatch.StepRecord`, oldest first (a read-only sequence).

    Memory is bounded: appending beyond ``maxlen`` drops the oldest record. Each record holds its
    ``[num_params, 10]`` float64 host buffer (80 bytes per parameter tensor, in a few blocks) plus any
    ``keep_grads`` copies.
    """

    def __init__(self, maxlen: int) -> None:
        self._records: deque[StepRecord] = deque(maxlen=maxlen)

    def append(self, record: StepRecord) -> None:
        """Add the newest record."""
        self._records.append(record)

    def by_step(self, step: int) -> StepRecord:
        """The record of watcher step ``step``.

        Raises:
            KeyError: that step was not recorded (schedule) or is no longer in the history.
        """
        for record in reversed(self._records):
            if record.step == step:
                return record
        steps = [r.step for r in self._records]
        span = f"{steps[0]}..{steps[-1]}" if steps else "none yet"
        raise KeyError(f"step {step} is not in the history (recorded steps held: {span})")

    @overload
    def __getitem__(self, index: int) -> StepRecord: ...
    @overload
    def __getitem__(self, index: slice) -> list[StepRecord]: ...
    def __getitem__(self, index: int | slice) -> StepRecord | list[StepRecord]:
        if isinstance(index, slice):
            return list(self._records)[index]
        if not self._records:
            raise IndexError("the history is empty: no step has been recorded yet")
        if not -len(self._records) <= index < len(self._records):
            raise IndexError(
                f"history index {index} is out of range: it holds {len(self._records)} records (steps "
                f"{self._records[0].step}..{self._records[-1].step}); by_step(n) finds a step by number"
            )
        return self._records[index]

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[StepRecord]:
        return iter(list(self._records))

    def __repr__(self) -> str:
        steps = [r.step for r in self._records]
        return f"History({len(steps)} records, steps {steps[0]}..{steps[-1]})" if steps else "History(empty)"


class MemorySink:
    """Keeps the last ``max_history`` records (:attr:`history`) and every finding (:attr:`findings`).

    Args:
        max_history: records kept (older ones are dropped); findings are all kept (one per kind and
            parameter at most, as the detectors report each once).
    """

    wants_histograms = False

    def __init__(self, max_history: int) -> None:
        self.history = History(max_history)
        self.findings: list[Finding] = []

    def write_step(self, record: StepRecord, grad_hist: HistRows | None, param_hist: HistRows | None) -> None:
        """Append the record to the history (histograms are not kept in memory)."""
        self.history.append(record)

    def write_finding(self, finding: Finding) -> None:
        """Append the finding."""
        self.findings.append(finding)

    def flush(self) -> None:
        """Nothing to flush."""

    def close(self) -> None:
        """Nothing to close: the history stays readable after the watcher is closed."""
