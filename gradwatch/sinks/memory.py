"""Bounded in-memory history of step records."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from typing import overload

from gradwatch.records import StepRecord

__all__ = ["History"]


class History(Sequence[StepRecord]):
    """The last ``maxlen`` :class:`~gradwatch.StepRecord`, oldest first (a read-only sequence).

    Memory is bounded: appending beyond ``maxlen`` drops the oldest record. Each record holds one
    ``[num_params, 8]`` float64 host buffer (64 bytes per parameter tensor) plus any ``keep_grads``
    copies.
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
        return self._records[index]

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[StepRecord]:
        return iter(list(self._records))

    def __repr__(self) -> str:
        steps = [r.step for r in self._records]
        return f"History({len(steps)} records, steps {steps[0]}..{steps[-1]})" if steps else "History(empty)"
