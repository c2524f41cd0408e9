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

import functools
import json
import logging
import math
import os
import queue
import struct
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch

from gradwatch.errors import GradWatchError, GradWatchWarning
from gradwatch.findings import Finding
from gradwatch.records import StepRecord
from gradwatch.sinks.base import HistRows

__all__ = ["TensorBoardSink", "native_event_checksums"]

log = logging.getLogger("gradwatch")

_STOP = object()

#: Steps the writer thread may fall behind (bounds the memory the queue holds). Beyond it, a step's
#: histograms are left out (thinned, counted, one warning) and its scalars wait for room: training
#: slows down to the writer's pace (backpressure); no scalar and no finding is ever dropped.
MAX_PENDING = 256


def _c_masked_crc32c() -> Callable[[bytes], int] | None:
    """TensorBoard's masked CRC-32C computed by ``google-crc32c``'s C code, or ``None`` where unavailable.

    Checked against TensorBoard's own function on test inputs (once per process).
    """
    global _C_CRC
    if _C_CRC is not None:
        return _C_CRC or None
    _C_CRC = False
    from tensorboard.compat.tensorflow_stub import pywrap_tensorflow

    with warnings.catch_warnings():  # without its C extension it warns that it falls back to Python
        warnings.simplefilter("ignore", RuntimeWarning)
        import google_crc32c
    if google_crc32c.implementation != "c":
        return None
    value = google_crc32c.value

    def masked_crc32c(data: bytes) -> int:
        x = value(data)
        return (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    probes = [b"", b"\x00", b"gradwatch", bytes(range(256)) * 3, bytes(k * k % 251 for k in range(999))]
    if any(masked_crc32c(d) != pywrap_tensorflow.masked_crc32c(d) for d in probes):
        log.warning("gradwatch: google-crc32c disagrees with TensorBoard's checksum; not using it")
        return None
    _C_CRC = masked_crc32c
    return masked_crc32c


_C_CRC: Any = None  # None: not looked for yet; False: unavailable; else the function


def native_event_checksums(writer: Any) -> bool:
    """Have one ``SummaryWriter``'s event file checksum its records in C, with ``google-crc32c``.

    Every record of an event file carries a masked CRC-32C of its length and of its bytes (the TFRecord
    format). TensorBoard's writer (``tensorboard.summary.writer.record_writer.RecordWriter``) computes
    them with a pure-Python loop, on a background thread that holds the GIL meanwhile: measured on the
    development machine's CPU, 145 ns per byte, so 4.5 ms per step for the 31 kB of every-step
    histograms and scalars of a 26-tensor CNN, and 1 ms per step for the 6.6 kB of scalars of a
    52-tensor transformer. With the C implementation of ``google-crc32c`` installed (the ``tensorboard``
    extra installs it), this changes the class of that one writer's ``RecordWriter`` object to a
    subclass whose ``write`` computes the same checksums in C (3 µs for 60 kB there): the bytes written
    are the same, and TensorBoard's reader checks them with its own code. Nothing else in the process
    changes (no module function is replaced), so there is nothing to undo.

    The TensorBoard sink calls it on the writer it creates for ``logdir``; a ``writer`` you pass is left
    as it is (call this on it yourself if you like). Left alone as well: when ``google-crc32c`` or its C
    extension is missing, when this TensorBoard lays its writer out differently (the attribute path
    ``writer._get_file_writer().event_writer._async_writer._writer`` is private), when the record
    writer is not TensorBoard's own class, and when the environment variable ``GRADWATCH_NATIVE_CRC`` is
    ``0``, ``false``, ``no`` or ``off``. Never raises.

    Returns:
        Whether that writer now checksums in C.
    """
    if os.environ.get("GRADWATCH_NATIVE_CRC", "").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        from tensorboard.summary.writer.record_writer import RecordWriter

        records = writer._get_file_writer().event_writer._async_writer._writer
        if type(records) is _native_record_writer_class():
            return True
        if type(records) is not RecordWriter:
            return False
        if _c_masked_crc32c() is None:
            return False
        records.__class__ = _native_record_writer_class()
        return True
    except Exception:  # never our reason to stop a run: TensorBoard keeps its own checksum
        log.debug("gradwatch: could not switch a TensorBoard writer to google-crc32c", exc_info=True)
        return False


@functools.cache
def _native_record_writer_class() -> type:
    from tensorboard.summary.writer.record_writer import RecordWriter

    class NativeChecksumRecordWriter(RecordWriter):  # type: ignore[misc]
        """TensorBoard's ``RecordWriter`` with the checksums of ``google-crc32c``'s C code."""

        def write(self, data: bytes) -> None:
            crc = _c_masked_crc32c() or _stock_crc
            header = struct.pack("<Q", len(data))
            self._writer.write(header + struct.pack("<I", crc(header)) + data + struct.pack("<I", crc(data)))

    return NativeChecksumRecordWriter


def _stock_crc(data: bytes) -> int:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    return int(masked_crc32c(data))


def _open_writer(logdir: str | None) -> Any:
    """TensorBoard's ``SummaryWriter`` on ``logdir`` (created if missing).

    Raises:
        GradWatchError: TensorBoard is not installed, or ``logdir`` cannot hold an event file (a file
            is in the way, a parent is a file, no permission, a read-only file system); the message
            names the option, the path and what to do.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter  # lazy: imports tensorboard
    except ImportError as err:
        raise GradWatchError(
            f"logdir={logdir!r} asks for TensorBoard event files, but TensorBoard is not installed "
            f"({type(err).__name__}: {err}). Install it with pip install 'gradwatch[tensorboard]' (or pip "
            f"install tensorboard), or leave logdir out to record in memory only (w.history, w.findings)."
        ) from err
    try:
        return SummaryWriter(log_dir=logdir)
    except OSError as err:
        what = err.strerror or str(err)
        where = err.filename or logdir
        raise GradWatchError(
            f"logdir={logdir!r}: gradwatch cannot write TensorBoard event files there ({type(err).__name__}: "
            f"{what}: {where!r}). Pass logdir= a folder you can write to (it is created if missing), e.g. "
            f"logdir='runs/exp1', or leave logdir out to record in memory only."
        ) from err


#: TensorBoard's Custom Scalars layout written to each event file gradwatch opens: the overview of a run.
OVERVIEW = {
    "gradwatch": {
        "total gradient norm (and before clipping)": [
            "Multiline",
            ["grad_norm/total", "grad_norm/total_unclipped"],
        ],
        "gradient norm per layer": ["Multiline", [r"layer_grad_norm/.*"]],
        "update-to-weight ratio per layer (about 1e-3 is healthy)": ["Multiline", [r"layer_update_ratio/.*"]],
        "loss": ["Multiline", ["gradwatch/loss"]],
    }
}


def _layer_update_ratios(params: Any, record: StepRecord) -> dict[str, float]:
    """Per layer: ``||update|| / ||weights||`` over its parameters whose update ratio was measured.

    ``sqrt(sum (ratio * norm)^2) / sqrt(sum norm^2)`` over the layer's parameters: the ratio of the layer
    taken as one vector, from the per-parameter (sampled, scaled) norms.
    """
    moved: dict[str, float] = {}
    size: dict[str, float] = {}
    for name, s in params.items():
        if s.update_ratio is None or not s.param_norm > 0 or not math.isfinite(s.update_ratio):
            continue
        layer = record.layer_of(name)
        moved[layer] = moved.get(layer, 0.0) + (s.update_ratio * s.param_norm) ** 2
        size[layer] = size.get(layer, 0.0) + s.param_norm**2
    return {layer: math.sqrt(moved[layer] / size[layer]) for layer in moved}


#: Every sink not closed yet (a forked child disowns them: see _disown_in_child).
_OPEN: weakref.WeakSet[TensorBoardSink] = weakref.WeakSet()


def _disown_in_child() -> None:
    """In a child made by ``os.fork()``: leave the parent's writers alone.

    The child has no writer thread (threads do not survive a fork) and shares the parent's open event
    files, so it writes nothing to them and does not wait for, flush or close them: its exit is
    immediate. Its watchers keep recording in memory (``w.history``, ``w.findings``).
    """
    for sink in list(_OPEN):
        sink.failed = True
        sink._closed = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_disown_in_child)


class TensorBoardSink:
    """Writes records and findings to a ``SummaryWriter`` on a daemon thread.

    Args:
        logdir: folder for a writer this sink creates (and closes), or ``None``.
        writer: the user's ``torch.utils.tensorboard.SummaryWriter`` (flushed, never closed), or ``None``.

    A failure while writing is logged once (with traceback) on the ``"gradwatch"`` logger and the
    sink stops writing; training is never interrupted.
    """

    wants_histograms = True

    def __init__(self, logdir: str | None = None, writer: Any = None) -> None:
        if writer is None:
            writer = _open_writer(logdir)
            native_event_checksums(writer)
            writer.add_custom_scalars(OVERVIEW)  # (a run has one layout: only in a writer gradwatch owns)
            self._owned = True
        else:
            self._owned = False
        self.writer = writer
        self.failed = False
        self._nonfinite: set[str] = set()  # parameters whose last written nan/inf count was nonzero
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=MAX_PENDING)
        #: steps whose histograms were left out because the writer was MAX_PENDING steps behind
        self.thinned = 0
        #: times a step waited for the writer (scalars are never dropped)
        self.waited = 0
        self._thread = threading.Thread(target=self._run, name="gradwatch-tensorboard", daemon=True)
        self._thread.start()
        self._closed = False
        _OPEN.add(self)

    # -- training thread -------------------------------------------------------------------------
    def write_step(self, record: StepRecord, grad_hist: HistRows | None, param_hist: HistRows | None) -> None:
        """Queue the scalars of ``record`` and the histogram buffers (rows from :func:`stats.histograms`).

        When the writer is :data:`MAX_PENDING` steps behind (a slow or network disk), the step's
        histograms are left out (counted in :attr:`thinned`, one warning) and its scalars wait for room
        in the queue: nothing but histograms is ever dropped, and memory stays bounded.
        """
        if self.failed or self._closed:
            record._read_by("sink")
            return
        try:
            self._queue.put_nowait(lambda: self._write_step(record, grad_hist, param_hist))
            return
        except queue.Full:
            pass
        if grad_hist is not None or param_hist is not None:
            self.thinned += 1
            if self.thinned == 1:
                warnings.warn(
                    f"gradwatch: the TensorBoard writer is {MAX_PENDING} steps behind (a slow disk?): "
                    f"histograms are left out while it catches up (step {record.step} first; the count is "
                    f"logged at close), and steps wait for it rather than lose scalars. Histogram less often "
                    f"(histogram_every=...) or record less often (every=...) to keep up.",
                    GradWatchWarning,
                    stacklevel=2,
                )
        self.waited += 1
        self._put(lambda: self._write_step(record, None, None))

    def _put(self, item: Any) -> None:
        """Queue ``item``, waiting for room (backpressure) unless the writer thread has stopped."""
        while not self.failed and self._thread.is_alive():
            try:
                self._queue.put(item, timeout=1.0)
                return
            except queue.Full:
                continue

    def write_finding(self, finding: Finding) -> None:
        """Queue a finding as a text entry under ``gradwatch/findings``.

        The text is the finding in words (``**kind**: message``), followed by the finding itself as JSON
        in an HTML comment, which TensorBoard's Text tab does not show and ``gradwatch report`` reads.
        """
        if not self.failed and not self._closed:
            exact = json.dumps(
                {
                    "kind": finding.kind,
                    "step": finding.step,
                    "params": list(finding.params),
                    "message": finding.message,
                }
            ).replace("--", "\\u002d\\u002d")  # (no "--" inside an HTML comment)
            text = f"**{finding.kind}**: {finding.message}\n\n<!-- gradwatch-finding {exact} -->"
            self._put(lambda: self.writer.add_text("gradwatch/findings", text, finding.step))

    def write_histograms(self, step: int, grad_hist: HistRows | None, param_hist: HistRows | None) -> None:
        """Queue histograms of ``step`` (written after its scalars: the last step's, at close)."""
        if self.failed or self._closed:
            return

        def write() -> None:
            for prefix, hist in (("gradients", grad_hist), ("parameters", param_hist)):
                if hist is not None:
                    names, rows = hist
                    self._histograms([(f"{prefix}/{n}", row) for n, row in zip(names, rows.tolist())], step)

        self._put(write)

    def write_summary(self, text: str, step: int) -> None:
        """Queue the run's summary line as a text entry under ``gradwatch/summary`` (at close)."""
        if not self.failed and not self._closed:
            self._put(lambda: self.writer.add_text("gradwatch/summary", text, step))

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
        if self.thinned:
            log.warning(
                "gradwatch: %d step(s) were written without their histograms because the TensorBoard "
                "writer was %d steps behind; every scalar and finding was written",
                self.thinned,
                MAX_PENDING,
            )
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
        step = record.step
        params = record.params
        scalars: list[tuple[str, float]] = []
        for k, (name, s) in enumerate(params.items()):
            if k % 64 == 63:
                time.sleep(0)  # let the training thread take the GIL (its hooks wait for it otherwise)
            scalars.append((f"grad_norm/{name}", s.grad_norm))
            if s.update_ratio is not None:
                scalars.append((f"update_ratio/{name}", s.update_ratio))
            nonfinite = bool(s.nan_count or s.inf_count)
            if nonfinite or name in self._nonfinite:
                # written at steps with non-finite entries, and once more (as 0) at the first clean step
                # after them: otherwise TensorBoard draws a line from the last bad step to the next one
                # and the chart claims the steps in between were bad too.
                scalars.append((f"nan_count/{name}", s.nan_count))
                scalars.append((f"inf_count/{name}", s.inf_count))
                (self._nonfinite.add if nonfinite else self._nonfinite.discard)(name)
        scalars.append(("grad_norm/total", record.total_grad_norm))
        if record.unclipped_total_grad_norm is not None:
            scalars.append(("grad_norm/total_unclipped", record.unclipped_total_grad_norm))
        for layer, value in record.layers.items():
            scalars.append((f"layer_grad_norm/{layer or '<root>'}", value))
        for layer, value in _layer_update_ratios(params, record).items():
            scalars.append((f"layer_update_ratio/{layer or '<root>'}", value))
        if record.loss is not None:
            scalars.append(("gradwatch/loss", record.loss))
        record._read_by("sink")
        self._scalars(scalars, step)
        time.sleep(0)  # let the training thread take the GIL (its hooks wait for it otherwise)
        for prefix, hist in (("gradients", grad_hist), ("parameters", param_hist)):
            if hist is not None:
                names, rows = hist
                self._histograms([(f"{prefix}/{name}", row) for name, row in zip(names, rows.tolist())], step)
                time.sleep(0)

    def _scalars(self, scalars: list[tuple[str, float]], step: int) -> None:
        """Write all of a step's scalars as one event (one ``Summary`` with many values).

        That is the format ``add_scalar`` writes one value at a time, at a fraction of the cost; a
        writer without ``_get_file_writer`` gets ``add_scalar`` calls.
        """
        file_writer = getattr(self.writer, "_get_file_writer", None)
        if file_writer is None:
            for tag, value in scalars:
                self.writer.add_scalar(tag, value, step)
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(value)) for tag, value in scalars])
        file_writer().add_summary(summary, step)

    def _histograms(self, rows: list[tuple[str, list[float]]], step: int) -> None:
        """Write histogram rows (from :func:`gradwatch.stats.histograms`) as one event.

        Each becomes the ``HistogramProto`` that ``add_histogram_raw`` writes, all in one ``Summary``;
        a writer without ``_get_file_writer`` gets ``add_histogram_raw`` calls. Rows with nothing
        finite are skipped (their counts went to ``nan_count``/``inf_count``).
        """
        file_writer = getattr(self.writer, "_get_file_writer", None)
        from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary

        values = []
        for tag, row in rows:
            lo, hi, num, total, sum_sq = row[:5]
            bins = (len(row) - 5) // 2
            if num == 0 or not math.isfinite(total) or not math.isfinite(sum_sq):
                continue
            limits, counts = row[5 : 5 + bins], row[5 + bins :]
            if file_writer is None:
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
                continue
            histo = HistogramProto(
                min=lo, max=hi, num=num, sum=total, sum_squares=sum_sq, bucket_limit=limits, bucket=counts
            )
            values.append(Summary.Value(tag=tag, histo=histo))
        if values and file_writer is not None:
            file_writer().add_summary(Summary(value=values), step)
