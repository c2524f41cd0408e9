"""The detector suite: builds every detector once and runs each event over all of them.

Detectors read what they need of the watch through a :class:`~gradwatch.detectors.base.WatchView`
(read-only: names, owners, learning rates, provenance, history), never through callbacks handed to
their constructors. The suite
sends each event only to the detectors that handle it (those that override the event's method of
:class:`~gradwatch.detectors.base.Detector`), and judges sealed step records once their host copy has
arrived (see :meth:`DetectorSuite.judge`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from gradwatch.detectors.base import Detector, WatchView
from gradwatch.detectors.clipping import ClipBeforeUnscaleDetector, IneffectiveClipDetector
from gradwatch.detectors.connectivity import (
    IneffectiveFreezeDetector,
    NoGradDetector,
    NotUpdatedDetector,
    loss_graph_leaves,
)
from gradwatch.detectors.learning_rate import LearningRateDetector
from gradwatch.detectors.membership import NeverSteppedDetector, NewParamDetector
from gradwatch.detectors.record_based import (
    AllZeroGradDetector,
    ExplodingGradDetector,
    NonfiniteGradDetector,
    VanishingGradDetector,
)
from gradwatch.detectors.zero_grad import DiscardedGradDetector, MissingZeroGradDetector

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from gradwatch.config import Config
    from gradwatch.findings import Finding
    from gradwatch.records import StepRecord

__all__ = ["JUDGE_BATCH", "MAX_UNJUDGED", "DetectorSuite", "WatchView"]

#: Records whose host copy may still be in flight before the oldest is waited for (see ``judge``).
MAX_UNJUDGED = 4

#: Records judged together: the record detectors run once this many sealed records are queued (and on
#: every read of ``findings`` or ``history``, and at close). Measured on the CPU digits MLP (6 tensors,
#: 0.75 ms steps, ``benchmarks/overhead.py``): judging 4 records back to back instead of one per step
#: took the watched step's mean from 1.72-1.79x to 1.67-1.68x the unwatched one (the detectors' code and
#: state stay in the CPU caches for the 3 later records). The latency this adds to record findings is
#: documented in docs/detectors.md. With ``on_finding="raise"`` each record is judged at its own step
#: (the user asked to stop there).
JUDGE_BATCH = 4


_EVENTS = (
    "on_attach",
    "on_optimizer_pre",
    "on_optimizer_post",
    "on_optimizer_used",
    "on_boundary",
    "on_boundary_used",
    "on_unscale",
    "on_backward_end",
    "on_close",
    "on_record",
)


class DetectorSuite:
    """Every detector, built from the :class:`~gradwatch.config.Config` and a :class:`WatchView`.

    Args:
        view: what the detectors read.
        config: thresholds and windows (each documented on ``Config``).
        by_layer: whether parameters belong to layers of a module (the layer-ratio rules need layers).
    """

    def __init__(self, view: WatchView, config: Config, by_layer: bool) -> None:
        # on_finding="raise" asks to stop at the first finding: every record is judged at its own step
        self._batch = 1 if config.on_finding == "raise" else JUDGE_BATCH
        self.discarded = DiscardedGradDetector(view)
        self.no_grad = NoGradDetector(view, config.no_grad_steps)
        self.not_updated = NotUpdatedDetector(view, config.not_updated_steps)
        self.freeze = IneffectiveFreezeDetector(view)
        self.clipping = IneffectiveClipDetector()
        self.never_stepped = NeverSteppedDetector(view)
        self.new_param = NewParamDetector(view)
        self._passes = 0  # backward passes seen
        self.detectors: list[Detector] = [
            MissingZeroGradDetector(view),
            self.discarded,
            self.no_grad,
            self.not_updated,
            self.freeze,
            NonfiniteGradDetector(),
            AllZeroGradDetector(config.all_zero_steps),
            VanishingGradDetector(
                config.persistence, config.vanishing_ratio, config.vanishing_norm, by_layer
            ),
            ExplodingGradDetector(config.persistence, config.exploding_ratio, by_layer),
            ClipBeforeUnscaleDetector(view),
            self.clipping,
            self.never_stepped,
            self.new_param,
            LearningRateDetector(view),
        ]
        self._view = view
        # event -> bound methods of the detectors that handle it (the base class's no-ops are skipped)
        self._handlers: dict[str, list[Any]] = {
            event: [
                getattr(d, event)
                for d in self.detectors
                if getattr(type(d), event) is not getattr(Detector, event)
            ]
            for event in _EVENTS
        }
        self._other_backward_end = [
            h
            for h in self._handlers["on_backward_end"]
            if getattr(h, "__self__", None) not in (self.never_stepped, self.new_param)
        ]
        self._unjudged: deque[StepRecord] = deque()  # sealed records the detectors have not read yet

    def _run(self, event: str, *args: Any) -> list[Finding]:
        out: list[Finding] = []
        for handler in self._handlers[event]:
            out += handler(*args)
        return out

    def attached(self, step: int) -> list[Finding]:
        """The watcher attached; its first step will be ``step``."""
        return self._run("on_attach", step)

    def optimizer_pre(self, name: str, owned: Sequence[int], step: int) -> list[Finding]:
        """See :meth:`Detector.on_optimizer_pre`."""
        return self._run("on_optimizer_pre", name, owned, step)

    def optimizer_post(self, name: str, owned: Sequence[int], step: int) -> list[Finding]:
        """See :meth:`Detector.on_optimizer_post`."""
        return self._run("on_optimizer_post", name, owned, step)

    def optimizer_used(self, name: str, owned: Sequence[int], step: int) -> list[Finding]:
        """See :meth:`Detector.on_optimizer_used`."""
        return self._run("on_optimizer_used", name, owned, step)

    def boundary(self, unowned: Sequence[int], step: int) -> list[Finding]:
        """See :meth:`Detector.on_boundary`."""
        return self._run("on_boundary", unowned, step)

    def boundary_used(self, unowned: Sequence[int], step: int) -> list[Finding]:
        """See :meth:`Detector.on_boundary_used`."""
        return self._run("on_boundary_used", unowned, step)

    def unscale(self, name: str, changed: Sequence[int], step: int) -> list[Finding]:
        """See :meth:`Detector.on_unscale`."""
        return self._run("on_unscale", name, changed, step)

    def backward_end(self, touched: Collection[int], step: int) -> list[Finding]:
        """See :meth:`Detector.on_backward_end` (skipped while no detector has anything to do then)."""
        self._passes += 1
        out: list[Finding] = []
        if not self.never_stepped.done:
            out += self.never_stepped.on_backward_end(touched, step)
        if self.new_param.due(self._passes):
            out += self.new_param.on_backward_end(touched, step)
        for handler in self._other_backward_end:
            out += handler(touched, step)
        return out

    def closing(self, step: int) -> list[Finding]:
        """See :meth:`Detector.on_close`."""
        return self._run("on_close", step)

    def frozen_moved(self, optimizer: str, names: Sequence[str], step: int) -> list[Finding]:
        """Frozen parameters (``requires_grad=False``) that ``optimizer``'s step changed anyway."""
        return self.freeze.frozen_moved(optimizer, names, step)

    def clip_call(
        self, function: str, params: Sequence[object], intended: Sequence[str], step: int
    ) -> list[Finding]:
        """``torch.nn.utils.<function>`` was called on ``params`` (a list, however it was given)."""
        return self.clipping.clip_call(function, params, intended, step)

    def add_record(self, record: StepRecord) -> None:
        """Queue a sealed record; :meth:`judge` reads it once its host copy has arrived."""
        record._waiting.add("detectors")
        self._unjudged.append(record)

    @property
    def pending(self) -> int:
        """Records queued and not judged yet."""
        return len(self._unjudged)

    def judge(self, final: bool) -> list[Finding]:
        """Run the record detectors on queued records whose host copy has arrived, oldest first.

        Only once :data:`JUDGE_BATCH` records are queued (one with ``on_finding="raise"``), unless
        ``final``. On the CPU every queued record is then judged. On CUDA a record waits until its
        asynchronous copy is done (``Event.query()``, which does not block), usually one step later; only
        when more than :data:`MAX_UNJUDGED` records wait (the device runs that far behind) does the
        oldest one wait for its copy. ``final`` judges everything (close, reads of ``findings``).
        """
        findings: list[Finding] = []
        if not final and len(self._unjudged) < self._batch:
            return findings
        handlers = self._handlers["on_record"]
        while self._unjudged:
            record = self._unjudged[0]
            event = record._event
            if not final and event is not None and len(self._unjudged) <= MAX_UNJUDGED and not event.query():
                break
            self._unjudged.popleft()
            for handler in handlers:
                findings += handler(record)
            record._read_by("detectors")
        return findings

    def loss_graph(self, loss: torch.Tensor, step: int, watched: set[int]) -> list[Finding]:
        """Walk the autograd graph of ``loss`` once: is any watched parameter reached? Any unwatched leaf?

        ``watched``: ``id()`` of each watched parameter tensor. Costs O(graph size) on the host, so the
        recorder does it for the first recorded loss only.
        """
        if loss.grad_fn is None:
            why = "it is a leaf tensor made to require grad" if loss.requires_grad else "it has no grad_fn"
            return self.no_grad.loss_not_connected(step, why)
        reached, foreign = loss_graph_leaves(loss, watched)
        findings: list[Finding] = []
        if not reached:
            findings += self.no_grad.loss_not_connected(step, "its autograd graph contains none of them")
        if foreign and self._view.module() is not None:
            leaves = [(f"tensor{k}", tuple(t.shape)) for k, t in enumerate(foreign)]
            findings += self.not_updated.unreachable_leaves(step, leaves)
        return findings

    @property
    def skipped_steps(self) -> list[int]:
        """Steps where non-finite gradients were dropped without an optimizer step (AMP skips)."""
        return list(self.discarded.skipped_steps)
