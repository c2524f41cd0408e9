"""Stream step records to TensorBoard from a background thread.

Imported only when a ``logdir`` or ``writer`` is given, so ``import gradwatch`` never imports
tensorboard. The training thread only enqueues work (records whose statistics are already on the host
or being copied there, histogram buffers binned on the device); this thread turns them into events
through TensorBoard's own ``SummaryWriter`` (``add_scalar``, ``add_histogram_raw``, ``add_text``), so
the training thread never waits on disk or on protobuf encoding.

Tags (DESIGN section 3): ``gradients/<name>`` and ``parameters/<name>`` (histograms),
``grad_norm/<name>``, ``grad_norm/total`` and ``update_ratio/<name>`` (scalars), plus
``layer_grad_norm/<layer>``, ``nan_count/<name>``, ``inf_count/<name>``, ``gradwatch/loss`` (scalars)
and ``gradwatch/findings`` (text). ``global_step`` is always the watcher's step.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from gradwatch.findings import Finding, StepRecord

__all__ = ["TensorBoardSink"]

log = logging.getLogger("gradwatch")

_STOP = object()


class TensorBoardSink:
    """Writes records and findings to a ``SummaryWriter`` on a daemon thread.

    Args:
        logdir: folder for a writer this sink creates (and closes), or ``None``.
        writer: the user's ``torch.utils.tensorboard.SummaryWriter`` (flushed, never closed), or ``None``.

    A failure while writing is logged once (with traceback) on the ``"gradwatch"`` logger and the
    sink stops writing; training is never interrupted.
    """

    def __init__(self, logdir: str | None = None, writer: Any = None) -> None:
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter  # lazy: imports tensorboard

            writer = SummaryWriter(log_dir=logdir)
            self._owned = True
        else:
            self._owned = False
        self.writer = writer
        self.failed = False
        self._nonfinite: set[str] = set()  # parameters whose last written nan/inf count was nonzero
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="gradwatch-tensorboard", daemon=True)
        self._thread.start()
        self._closed = False

    # -- training thread -------------------------------------------------------------------------
    def write_step(
        self,
        record: StepRecord,
        grad_hist: tuple[Sequence[str], torch.Tensor] | None,
        param_hist: tuple[Sequence[str], torch.Tensor] | None,
    ) -> None:
        """Queue the scalars of ``record`` and the histogram buffers (rows from :func:`stats.histograms`)."""
        if not self.failed and not self._closed:
            self._queue.put(lambda: self._write_step(record, grad_hist, param_hist))

    def write_finding(self, finding: Finding) -> None:
        """Queue a finding as a text entry under ``gradwatch/findings``."""
        if not self.failed and not self._closed:
            self._queue.put(
                lambda: self.writer.add_text(
                    "gradwatch/findings", f"**{finding.kind}**: {finding.message}", finding.step
                )
            )

    def flush(self, timeout: float | None = 60.0) -> None:
        """Wait until everything queued is written, then flush the writer to disk."""
        if self._closed:
            return
        done = threading.Event()
        self._queue.put(done.set)
        if not done.wait(timeout):
            log.warning("gradwatch: TensorBoard writer did not drain within %.0f s", timeout)
            return
        self._guard(self.writer.flush)

    def close(self) -> None:
        """Flush, stop the thread, and close the writer if this sink created it. Idempotent."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout=60.0)
        if self._owned:
            self._guard(self.writer.close)

    # -- writer thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if not self.failed:
                self._guard(item)
            elif item.__name__ == "set":  # keep flush() from waiting on a failed sink
                item()

    def _guard(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception:
            if not self.failed:
                self.failed = True
                log.exception(
                    "gradwatch: writing to TensorBoard failed; TensorBoard logging is off from now on"
                )

    def _write_step(
        self,
        record: StepRecord,
        grad_hist: tuple[Sequence[str], torch.Tensor] | None,
        param_hist: tuple[Sequence[str], torch.Tensor] | None,
    ) -> None:
        w, step = self.writer, record.step
        params = record.params
        for name, s in params.items():
            w.add_scalar(f"grad_norm/{name}", s.grad_norm, step)
            if s.update_ratio is not None:
                w.add_scalar(f"update_ratio/{name}", s.update_ratio, step)
            nonfinite = bool(s.nan_count or s.inf_count)
            if nonfinite or name in self._nonfinite:
                # written at steps with non-finite entries, and once more (as 0) at the first clean step
                # after them: otherwise TensorBoard draws a line from the last bad step to the next one
                # and the chart claims the steps in between were bad too.
                w.add_scalar(f"nan_count/{name}", s.nan_count, step)
                w.add_scalar(f"inf_count/{name}", s.inf_count, step)
                (self._nonfinite.add if nonfinite else self._nonfinite.discard)(name)
        w.add_scalar("grad_norm/total", record.total_grad_norm, step)
        for layer, value in record.layers.items():
            w.add_scalar(f"layer_grad_norm/{layer or '<root>'}", value, step)
        if record.loss is not None:
            w.add_scalar("gradwatch/loss", record.loss, step)
        for prefix, hist in (("gradients", grad_hist), ("parameters", param_hist)):
            if hist is None:
                continue
            names, rows = hist
            for name, row in zip(names, rows.tolist()):
                self._histogram(f"{prefix}/{name}", row, step)

    def _histogram(self, tag: str, row: list[float], step: int) -> None:
        lo, hi, num, total, sum_sq = row[:5]
        bins = (len(row) - 5) // 2
        if num == 0 or not math.isfinite(total) or not math.isfinite(sum_sq):
            return  # nothing finite to show; the counts went to nan_count/inf_count
        limits = row[5 : 5 + bins]
        counts = row[5 + bins :]
        self.writer.add_histogram_raw(
            tag,
            min=lo,
            max=hi,
            num=int(num),
            sum=total,
            sum_squares=sum_sq,
            bucket_limits=limits,
            bucket_counts=counts,
            global_step=step,
        )
