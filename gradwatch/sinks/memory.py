"""The records and findings kept in memory: ``Watcher.history`` and ``Watcher.findings``."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, overload

from gradwatch.errors import GradWatchError
from gradwatch.findings import Finding
from gradwatch.records import ParamStats, StepRecord
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

    def to_dicts(self) -> list[dict[str, Any]]:
        """The history as plain data: one dict per record, oldest first, ready for ``json.dumps``.

        Each dict: ``step`` (int), ``loss`` (float or None), ``total_grad_norm`` (float),
        ``unclipped_total_grad_norm`` (float or None), ``layers`` ({module path: gradient norm}), and
        ``params`` ({parameter name: {field: value}} with every :class:`~gradwatch.ParamStats` field but
        ``grad``: floats, ints, bools or None).
        Non-finite values stay floats: Python's ``json.dumps`` writes them as ``NaN``/``Infinity``
        (pass ``allow_nan=False`` only after replacing them, for a strict JSON parser). Reads each
        record's host copy (waits for it on CUDA).
        """
        fields = [f for f in ParamStats._fields if f != "grad"]
        return [
            {
                "step": r.step,
                "loss": r.loss,
                "total_grad_norm": r.total_grad_norm,
                "unclipped_total_grad_norm": r.unclipped_total_grad_norm,
                "layers": dict(r.layers),
                "params": {name: {f: getattr(s, f) for f in fields} for name, s in r.params.items()},
            }
            for r in self
        ]

    def to_dataframe(self) -> Any:
        """The history as a ``pandas.DataFrame``: one row per recorded step and parameter.

        Columns: ``step``, ``param`` (the name from ``named_parameters()``), ``layer``, ``loss``,
        ``total_grad_norm``, ``unclipped_total_grad_norm`` (the step's, on each of its rows), then every
        :class:`~gradwatch.ParamStats` field but ``grad``. pandas is imported here only.

        Raises:
            GradWatchError: pandas is not installed (``pip install 'gradwatch[export]'``).
        """
        try:
            import pandas as pd
        except ImportError as err:
            raise GradWatchError(
                "history.to_dataframe() needs pandas: pip install 'gradwatch[export]' (or pip install "
                "pandas); history.to_dicts() gives the same data without it"
            ) from err
        fields = [f for f in ParamStats._fields if f != "grad"]
        rows = []
        for r in self:
            step = {
                "step": r.step,
                "loss": r.loss,
                "total_grad_norm": r.total_grad_norm,
                "unclipped_total_grad_norm": r.unclipped_total_grad_norm,
            }
            for name, s in r.params.items():
                rows.append(
                    step | {"param": name, "layer": r.layer_of(name)} | {f: getattr(s, f) for f in fields}
                )
        columns = ["step", "param", "layer", "loss", "total_grad_norm", "unclipped_total_grad_norm", *fields]
        return pd.DataFrame(rows, columns=columns)

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
        self.summary: str | None = None

    def write_step(self, record: StepRecord, grad_hist: HistRows | None, param_hist: HistRows | None) -> None:
        """Append the record to the history (histograms are not kept in memory)."""
        self.history.append(record)

    def write_finding(self, finding: Finding) -> None:
        """Append the finding."""
        self.findings.append(finding)

    def write_histograms(self, step: int, grad_hist: HistRows | None, param_hist: HistRows | None) -> None:
        """Histograms are not kept in memory."""

    def write_summary(self, text: str, step: int) -> None:
        """Keep the run's summary line (``Watcher.summary``)."""
        self.summary = text

    def flush(self) -> None:
        """Nothing to flush."""

    def close(self) -> None:
        """Nothing to close: the history stays readable after the watcher is closed."""
