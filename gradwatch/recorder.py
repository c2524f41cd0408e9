"""The recorder: every hook endpoint, the step boundary protocol, the per-step buffer, capture and seal.

The only module that registers torch hooks (through :class:`~gradwatch.hooks.HandleGroup`) or receives
their callbacks. Per step it:

1. notes, in the tensor hooks, which parameters got a gradient and in which order (host only), and
   keeps the gradients' :class:`~gradwatch.provenance.Provenance`;
2. at the moment an optimizer is about to read them (or at the end of the backward pass for
   parameters no optimizer holds), *captures* the gradients' statistics with the batched engine of
   :mod:`gradwatch.stats` and the weights' samples of :class:`~gradwatch.sampling.UpdateSampler`, into
   the step's buffer (device tensors);
3. when the :class:`~gradwatch.boundaries.StepTracker` says the step ended, *seals* it: one
   device-to-host copy of the whole buffer (non-blocking on CUDA), a :class:`~gradwatch.StepRecord`
   handed to the sinks and queued for the :class:`~gradwatch.detectors.suite.DetectorSuite`.

Every endpoint runs under the failsafe (:func:`failsafe`): an error of ours is logged once and stops
recording; the user's training goes on untouched. Not part of the public API.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from gradwatch import compat, stats
from gradwatch.boundaries import StepTracker
from gradwatch.config import Config, never
from gradwatch.detectors.suite import DetectorSuite
from gradwatch.errors import GradientError, GradWatchError, GradWatchWarning
from gradwatch.findings import FINDING_KINDS, Finding, Suppressions
from gradwatch.forward_origin import ForwardOrigin, locate
from gradwatch.hooks import HandleGroup, queue_end_of_backward, watched_elsewhere
from gradwatch.provenance import Provenance
from gradwatch.records import Column, Part, StepRecord
from gradwatch.sampling import UpdateSampler
from gradwatch.sharding import ShardPlan, is_dtensor, local
from gradwatch.sinks import MemorySink, NullSink, Sink, WarningSink
from gradwatch.sinks.warn import user_stacklevel
from gradwatch.targets import Optimizers, Targets

__all__ = ["Recorder", "failsafe"]

log = logging.getLogger("gradwatch")

R = TypeVar("R")


#: Optimizer steps between two looks for frozen parameters an optimizer still moves (the 1st, 11th, ...:
#: a frozen parameter with a .grad stays that way, so it is caught within this many steps).
FROZEN_PROBE_EVERY = 10

#: Walks of a non-finite loss's autograd graph a watcher may make in a row (:mod:`gradwatch.forward_origin`):
#: each is host Python over the whole graph, and a run whose weights became NaN, or a GradScaler's
#: skipped overflow steps, hand ``backward()`` one non-finite loss after another.
MAX_ORIGIN_WALKS = 8

#: One walk is allowed again every this many ``backward()`` calls (up to :data:`MAX_ORIGIN_WALKS`).
ORIGIN_WALK_REFILL = 200


def failsafe(method: Callable[..., R]) -> Callable[..., R | None]:
    """Run a :class:`Recorder` method so that no error of ours reaches the user's training loop.

    Once the recorder has failed, the method does nothing and returns ``None``. An exception raised
    by the method is logged once (with its traceback, on the ``"gradwatch"`` logger) and stops all
    recording, except the user's own policy: a :class:`~gradwatch.GradientError` (``on_finding=
    "raise"``) or a :class:`~gradwatch.GradWatchWarning` turned into an error by a warnings filter,
    which propagate. Every hook endpoint and every entry from the Watcher goes through here.
    """

    @functools.wraps(method)
    def guarded(self: Recorder, *args: Any) -> R | None:
        if self.failed:
            return None
        try:
            return method(self, *args)
        except (GradientError, GradWatchWarning):  # the user's policy, not our failure
            raise
        except Exception as err:
            self.fail(err)
            return None

    return guarded


def _same(fn: Callable[..., Any]) -> Callable[..., Any]:
    return fn


class _StepState:
    """What the current step has gathered so far (device tensors until it is sealed)."""

    def __init__(self, n: int) -> None:
        self.parts: list[Part] = []
        self.received = bytearray(n)
        self.snaps: dict[int, tuple[list[int], stats.Samples]] = {}
        self.unowned_snap: tuple[list[int], stats.Samples] | None = None
        self.grad_hist: list[tuple[list[int], torch.Tensor]] = []  # (positions, rows) per capture
        self.kept: dict[str, torch.Tensor] = {}
        self.loss: torch.Tensor | float | None = None
        self.order = [-1] * n  # rank of each parameter's first gradient in this step (backward order)
        self.grad_none = [True] * n  # .grad was None (or never read) when the statistics were taken
        self.ranked = 0
        self.combined = 0  # parts before this one hold whole-tensor values of sharded parameters
        # ids of the parameters a clip function was given -> the total norm it measured before clipping
        self.unclipped: dict[tuple[int, ...], torch.Tensor] = {}
        # where the first non-finite loss among this step's backward passes was born (seen before backward)
        self.forward_origin: ForwardOrigin | None = None


class Recorder:
    """Hooks, boundaries and the per-step buffer of one watcher.

    Implements the tracker's ``BoundaryCallbacks`` and the detectors' ``WatchView``.

    Args:
        targets: the resolved target (names, parameters, layers, module).
        optimizers: the resolved optimizers.
        config: the validated options.
    """

    def __init__(self, targets: Targets, optimizers: Sequence[torch.optim.Optimizer], config: Config) -> None:
        self.config = config
        self.names: tuple[str, ...] = tuple(targets.names)
        self.layer_of: tuple[str, ...] = tuple(targets.layers)
        # Parameters are held strongly only while attached (a module target is re-read on attach), so a
        # detached watcher keeps no model alive and no weak reference blocks module.to() in swap mode.
        self._tensors = None if targets.module is not None else list(targets.params)
        self._module = weakref.ref(targets.module) if targets.module is not None else None
        self.params: list[torch.Tensor] | None = None
        self._ids: set[int] = set()
        self.shards = ShardPlan(self.names, targets.params)  # (raises for DTensors it cannot handle)
        self.optimizers = Optimizers(optimizers, len(self.names))
        self.optimizers.bind(targets.params)
        self.sampler = UpdateSampler(targets.params, self.optimizers, self.shards.dtensors)
        self._keep = config.keeps(self.names)
        self.provenance = Provenance(len(self.names))
        self.provenance.shard(sorted(self.shards.dtensors))
        self.memory = MemorySink(config.max_history)
        self.board: Sink = NullSink()
        self.sinks: tuple[Sink, ...] = (self.memory, self.board, WarningSink(config.on_finding))
        self._record_sinks = _record_sinks(self.sinks)
        self.suppressions = Suppressions(config.suppress)
        self.suite = DetectorSuite(self, config, by_layer=targets.module is not None)
        self.tracker = StepTracker(self, config.start_step, bool(self.optimizers))
        self._handles = HandleGroup()
        self._cur = _StepState(len(self.names))
        self._versions: list[int] = []
        self._closure_step = False  # the optimizer step in progress was given a closure (LBFGS)
        self._closure_before: dict[int, tuple[list[int], stats.Samples]] = {}
        self._closure_owned: set[int] = set()  # positions of optimizers stepped with a closure
        self._graph_checked = False
        self._next_loss: torch.Tensor | float | None = None
        # (id, version) of each .grad once the last backward pass and its queued work ended (see
        # _note_grad_versions), compared just before a GradScaler unscales them
        self._grad_versions: dict[int, tuple[int, int]] = {}
        self._value_clip_norm: torch.Tensor | None = None  # the norm clip_grad_value_ is about to clip
        self._unscale_seen = False  # a GradScaler unscaled watched gradients
        self._stepped = False  # a watched optimizer has stepped
        # per optimizer: its frozen parameters with a .grad, and a copy of their sampled entries (pre-hook)
        self._frozen: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._probes = 0  # optimizer steps seen (frozen parameters are probed every FROZEN_PROBE_EVERY-th)
        self._recorded: list[int] = []  # first and last recorded step, and how many: [first, last, count]
        self._hist_step = -1  # the last step whose histograms were written
        self._eager_tracker_call: Callable[..., None] = self._tracker_call
        self._settle_pending: Callable[[], None] = self._before_zero_grad
        self._positions: dict[int, int] = {}  # id() of each watched parameter -> its position
        self._origin_walks = MAX_ORIGIN_WALKS  # walks left (refilled, see ORIGIN_WALK_REFILL)
        self._backward_calls = 0
        self._pending_origin: ForwardOrigin | None = None  # found before the pass that will carry it
        #: autograd roots of the running backward call (several optimizers only), until the pass ends
        self._roots: list[Any] = []
        self.failed = False

    # ------------------------------------------------------------------ lifecycle
    @property
    def attached(self) -> bool:
        """Whether the hooks are registered."""
        return self.params is not None

    def attach(self) -> list[Finding]:
        """Register every hook and open the TensorBoard sink if asked for; returns the attach findings.

        Raises:
            GradWatchError: the watched model no longer exists, or lost watched parameters.
        """
        params = self._resolve_params()
        if any(watched_elsewhere(p) for p in params):
            warnings.warn(
                "gradwatch: these parameters are already watched by another watcher that is still attached "
                "(a notebook cell run twice?), so both record every step and every finding is reported "
                "twice. Close the old one first (w.close()), or open watchers with `with "
                "gradwatch.watch(...) as w:` so they close themselves.",
                GradWatchWarning,
                stacklevel=user_stacklevel(),
            )
        # Every function through which torch calls into gradwatch always runs eagerly
        # (torch.compiler.disable): called while a torch.compile'd train step runs (a tensor hook or the
        # end-of-backward callback during its eager backward(), an optimizer hook inside its compiled
        # step()), it is neither traced nor compiled, so gradwatch adds no graph break to the user's
        # graphs and none of its host code is compiled. About 0.3 us per call. (Wrapped here, not at
        # import: it imports torch._dynamo, about 1 s, which the first optimizer step imports anyway.
        # Without an optimizer and without torch.compile in use yet, nothing is wrapped: no such cost.)
        wrap = bool(self.optimizers) or compat.dynamo_imported()
        eager = compat.compiler_disable if wrap else _same
        incoming, accumulated = eager(self._on_incoming_grad), eager(self._on_grad)
        self._eager_tracker_call = eager(self._tracker_call)
        try:
            for i, p in enumerate(params):
                if not p.requires_grad:
                    continue
                if i in self.shards.dtensors:  # (FSDP2 runs only their post-accumulate hooks)
                    self._handles.post_accumulate_grad(p, functools.partial(accumulated, True, i))
                    continue
                self._handles.before_accumulate(p, functools.partial(incoming, i, p))
                self._handles.post_accumulate_grad(p, functools.partial(accumulated, False, i))
            for opt in self.optimizers:
                self._handles.optimizer_step(opt, eager(self._on_opt_pre), eager(self._on_opt_post))
            if self.optimizers:
                self._handles.around_unscale(eager(self._before_unscale), eager(self._after_unscale))
                self._settle_pending = eager(self._before_zero_grad)
                self._handles.before_zero_grad(self._zero_grad_called)
            self._handles.around_clip(eager(self._on_clip), eager(self._after_clip))
            self._handles.before_backward(eager(self._before_backward))
            self.params = params
            self._ids = {id(p) for p in params}
            self._positions = {id(p): i for i, p in enumerate(params)}
            self.optimizers.bind(params)
            wanted = self.config.writer is not None or self.config.logdir is not None
            if self.config.rank_zero_only and compat.global_rank() != 0:
                wanted = False  # (distributed: rank 0 writes; every rank records and reports)
            if isinstance(self.board, NullSink) and wanted:
                from gradwatch.sinks.tensorboard import TensorBoardSink

                self.board = TensorBoardSink(self.config.logdir, self.config.writer)
                self.sinks = (self.memory, self.board, self.sinks[2])
                self._record_sinks = _record_sinks(self.sinks)
        except BaseException:
            self._handles.remove()
            self.params = None
            raise
        return self.suite.attached(self.tracker.step)

    def detach(self) -> None:
        """Record a step whose boundary was already seen, then remove every hook. Idempotent."""
        if self.params is None:
            return
        try:
            self.flush_step(False)
        finally:
            self._handles.remove()
            self.params = None
            self.sampler.forget_views()

    def close(self) -> None:
        """Record the last step, judge every record, detach, close the sinks. Idempotent."""
        try:
            if self.attached:
                self.flush_step(True)
                self._emit_closing()
                self._last_histograms()
            self._emit_judged()
            self._summarise()
        finally:
            self.detach()
            for sink in self.sinks:
                sink.close()

    def flush(self) -> None:
        """Record a step whose boundary was seen; wait until every sink has written everything."""
        if self.attached:
            self.flush_step(False)
        for sink in self.sinks:
            sink.flush()

    def sync(self) -> None:
        """Bring what the user reads up to date: seal a step whose boundary was seen, judge records."""
        if self.attached:
            self.flush_step(False)
        self._emit_judged()

    def fail(self, err: BaseException) -> None:
        """Stop recording for good after an internal error (logged once); training goes on."""
        if not self.failed:
            self.failed = True
            log.error(
                "gradwatch: internal error, recording stops here and training goes on: %s: %s",
                type(err).__name__,
                err,
                exc_info=err,
            )

    # ------------------------------------------------------------------ entries from the Watcher
    @failsafe
    def flush_step(self, final: bool) -> None:
        """Seal a step whose boundary was seen (with ``final``: any pending backward too)."""
        self.tracker.flush(final)

    @failsafe
    def _last_histograms(self) -> None:
        """Histograms of the last recorded step at close, when its schedule left it without them.

        Weights as they are at close; gradients as ``.grad`` holds them at close (the last step's,
        unless the loop zeroed them after its last ``optimizer.step()``, in which case there are none).
        One host read; only at close.
        """
        if (
            not self.board.wants_histograms
            or self.config.histogram_every is never
            or not self._recorded
            or self._recorded[1] == self._hist_step
        ):
            return
        step = self._recorded[1]
        params = self._live_params()
        every = range(len(params))
        grads = self._histograms(every, self.shards.grads(every, params))
        weights = self._histograms(every, self.shards.values(params))
        named = [
            None if h is None else ([self.names[i] for i in h[0]], h[1].cpu().double())
            for h in (grads, weights)
        ]
        self._hist_step = step
        self.board.write_histograms(step, named[0], named[1])

    @failsafe
    def _summarise(self) -> None:
        """One line for the run, at close: to TensorBoard's Text tab and the ``"gradwatch"`` logger."""
        first, last, count = self._recorded or (None, None, 0)
        kinds = sorted({f.kind for f in self.memory.findings})
        found = len(self.memory.findings)
        text = (
            f"gradwatch: {count} step(s) recorded"
            + (f" (steps {first}-{last})" if count else "")
            + f", {len(self.names)} parameter(s) watched, {len(FINDING_KINDS)} checks run, "
            + (f"{found} finding(s): {', '.join(kinds)}." if found else "0 findings.")
        )
        for sink in self.sinks:
            sink.write_summary(text, last if last is not None else self.tracker.step)

    @failsafe
    def _emit_closing(self) -> None:
        tracker = self.tracker
        step = tracker.step  # (after the final seal: one past the last step, if any was sealed)
        if not tracker.backward_seen and step > self.config.start_step:
            step -= 1  # the last sealed step (a backward pass left unsealed belongs to the step in progress)
        self.emit(self.suite.closing(step))

    @failsafe
    def _emit_judged(self) -> None:
        """Judge every sealed record (waiting for its host copy if needed) and report the findings."""
        self.emit(self.suite.judge(final=True))

    @failsafe
    def mark(self) -> None:
        """An explicit step boundary (``Watcher.step()``)."""
        self.tracker.mark()

    def begin_user_step(self) -> None:
        """A decorated train step was entered."""
        self.tracker.begin_user_step()

    @failsafe
    def end_user_step(self, completed: bool) -> None:
        """A decorated train step returned (``completed``) or raised."""
        self.tracker.end_user_step(completed)

    def set_loss(self, loss: torch.Tensor | float) -> None:
        """Keep the loss of the current step (a detached scalar tensor or a float); check its graph once.

        A loss recorded after the step's boundary was seen but before the step was sealed (the usual
        ``loss = f(model(x)); w.record_loss(loss); loss.backward()`` after the previous
        ``optimizer.step()``) belongs to the step its backward pass will start: it is kept for that one.
        """
        value = loss.detach().reshape(()) if isinstance(loss, torch.Tensor) else loss
        if self.attached and self._boundary_seen():
            self._next_loss = value
        else:
            self._cur.loss = value
        if isinstance(loss, torch.Tensor) and self.attached and not self._graph_checked:
            self._graph_checked = True  # once: the walk costs O(graph size) on the host
            self._check_graph(loss)

    @failsafe
    def _boundary_seen(self) -> bool:
        return self.tracker.boundary_seen()

    @failsafe
    def _check_graph(self, loss: torch.Tensor) -> None:
        self.emit(self.suite.loss_graph(loss, self.tracker.step, self._ids))

    def emit(self, findings: list[Finding]) -> None:
        """Hand findings, less the suppressed ones, to every sink (the warning sink may raise)."""
        for f in findings:
            kept = self.suppressions.apply(f)
            if kept is not None:
                for sink in self.sinks:
                    sink.write_finding(kept)

    # ------------------------------------------------------------------ WatchView (read by detectors)
    @property
    def numels(self) -> Sequence[int]:
        """Entries of each parameter as the statistics read them."""
        return self.sampler.numels

    def module(self) -> nn.Module | None:
        """The watched module, or ``None``."""
        return self._module() if self._module is not None else None

    def unowned(self) -> Sequence[int] | None:
        """Positions no watched optimizer holds; ``None`` when no optimizer is watched."""
        return self.optimizers.unowned if len(self.optimizers) else None

    def learning_rates(self) -> dict[int, float]:
        """Position -> learning rate (host numbers only)."""
        return self.optimizers.learning_rates()

    def optimizer_names(self) -> Sequence[str]:
        """Names of the watched optimizers."""
        return self.optimizers.names()

    def requires_grad(self, i: int) -> bool:
        """Whether parameter ``i`` requires grad now (True when not attached)."""
        return self.params is None or bool(self.params[i].requires_grad)

    def sampled_size(self, i: int) -> int | None:
        """Entries of parameter ``i``'s update sample, or ``None`` when all entries are read."""
        return self.sampler.sampled_size(i)

    def closure_stepped(self) -> set[int]:
        """Positions held by an optimizer whose ``step()`` was given a closure (LBFGS)."""
        return self._closure_owned

    def shape(self, i: int) -> tuple[int, ...]:
        """Parameter ``i``'s shape (the whole tensor's, for a sharded parameter)."""
        return self.sampler.shapes[i]

    def backward_roots(self) -> Sequence[Any]:
        """The ``grad_fn`` of each tensor given to the backward call whose pass is ending.

        Kept only while several optimizers are watched, from the call to the pass's end (the graph's
        structure, without the tensors it saved for backward); empty otherwise.
        """
        return self._roots

    def positions_by_id(self) -> Mapping[int, int]:
        """``id()`` of each watched parameter tensor -> its position."""
        return self._positions

    def optimizer_positions(self) -> dict[str, Sequence[int]]:
        """Optimizer name -> positions of the watched parameters it holds."""
        return dict(self.optimizers.positions())

    def optimizer_holding(self, t: object) -> str | None:
        """Name of the watched optimizer that holds ``t`` (by identity), or ``None``."""
        return self.optimizers.holder(t) if isinstance(t, torch.Tensor) else None

    def norm_at(self, i: int, step: int) -> float | None:
        """Parameter ``i``'s recorded gradient norm at ``step`` (``None``: not recorded, or dropped)."""
        for record in reversed(self.memory.history):
            if record.step == step:
                return record.params[self.names[i]].grad_norm
            if record.step < step:
                break
        return None

    # ------------------------------------------------------------------ hook endpoints (training thread)
    @failsafe
    def _on_incoming_grad(self, index: int, param: torch.Tensor, _grad: torch.Tensor) -> None:
        tracker = self.tracker
        if not tracker.in_backward or compat.current_graph_task_id() != tracker.task:
            tracker.incoming()  # (else: a pass already running, nothing to do there)
        self.provenance.before_accumulate(index, param)

    @failsafe
    def _on_grad(self, sharded: bool, index: int, param: torch.Tensor) -> None:
        # (``sharded``: FSDP2 ran this hook after writing the gradient, and no hook ran before: the
        # tracker ends a closed step here, before the provenance reads what the new gradient found)
        if not param.requires_grad:  # frozen after the forward pass: autograd accumulated nothing
            return
        tracker = self.tracker
        if not tracker.in_backward or tracker.opt_depth or compat.current_graph_task_id() != tracker.task:
            tracker.grad()  # else: a pass already running, outside any optimizer step: nothing to do
        cur = self._cur
        if not cur.received[index]:
            cur.received[index] = 1
            cur.order[index] = cur.ranked
            cur.ranked += 1
        if sharded:
            self.provenance.sharded_accumulated(index, param)
        else:
            self.provenance.accumulated(index, param)

    @failsafe
    def _on_clip(self, function: str, params: list[Any], l2: bool = True) -> None:
        if not self.attached:
            return
        if not params:  # a clip that clips nothing
            live = self._live_params()
            intended = [self.names[i] for i, p in enumerate(live) if p.grad is not None]
            self.emit(self.suite.clip_call(function, params, intended, self.tracker.step))
            return
        self._value_clip_norm = None
        if (function == "clip_grad_value_" or not l2) and any(id(p) in self._ids for p in params):
            # clip_grad_value_ returns nothing, and a clip by another norm returns that norm: measure the
            # L2 norm of what it is about to clip (device work only)
            grads = [local(p.grad) for p in params if isinstance(p, torch.Tensor) and p.grad is not None]
            if grads:
                norms = [n.to(grads[0].device, torch.float64) for n in compat.foreach_norm(grads, 2)]
                self._value_clip_norm = torch.linalg.vector_norm(torch.stack(norms))

    @failsafe
    def _after_clip(self, function: str, params: list[Any], result: Any) -> None:
        """Keep the total norm the clip measured; without an optimizer, read the clipped gradients."""
        if not self.attached or not params or not any(id(p) in self._ids for p in params):
            return
        total = self._value_clip_norm if self._value_clip_norm is not None else result
        self._value_clip_norm = None
        if isinstance(total, torch.Tensor):
            # the first clip of these parameters in the step measured them before any clipping
            self._cur.unclipped.setdefault(tuple(sorted(id(p) for p in params)), total.detach())
        step = self.tracker.step
        unowned = self.optimizers.unowned
        if unowned and self.config.every(step):  # read at the end of backward, before this clip: again
            clipped = {id(p) for p in params}
            live = self._live_params()
            idx = [i for i in unowned if id(live[i]) in clipped]
            if idx:
                self._capture(idx, live, step)

    @failsafe
    def _before_unscale(self, _scaler: Any, optimizer: torch.optim.Optimizer) -> None:
        self._unscale_seen = True
        owned = self.optimizers.owned_by(optimizer)
        if not owned or not self.attached:
            return
        params = self._live_params()
        seen = self._grad_versions
        changed = []
        for i in owned:
            g = params[i].grad
            was = seen.get(i)
            if g is not None and was is not None and (id(g), compat.version_counter(g)) != was:
                changed.append(i)
        if changed:
            name = self.optimizers.name(optimizer)
            self.emit(self.suite.unscale(name, changed, self.tracker.step))

    @failsafe
    def _after_unscale(self, _scaler: Any, optimizer: torch.optim.Optimizer) -> None:
        owned = self.optimizers.owned_by(optimizer)
        if owned and self.attached:  # (a second unscale_ before step() raises in torch: no new finding)
            self._note_grad_versions(owned)
            # the scaler may skip this step on a non-finite gradient, and zero_grad(set_to_none=False)
            # would then zero the values the deferred finite flags describe: read them now
            self.provenance.settle_held(owned)

    def _zero_grad_called(self) -> None:
        # (every zero_grad() in the process calls this: one dict read, and the eager, failsafe call only
        # when a pass no optimizer used yet has a deferred flag)
        if self.provenance.pass_finite:
            self._settle_pending()

    @failsafe
    def _before_zero_grad(self) -> None:
        # zero_grad(set_to_none=False) is about to zero gradients in place: the deferred finite flags of
        # the passes no optimizer used yet (a step skipped by hand on a non-finite loss) are read first
        self.provenance.settle_pending()

    def _probe_frozen(self, optimizer: torch.optim.Optimizer) -> None:
        """Copy the sampled entries of ``optimizer``'s frozen parameters that still have a ``.grad``.

        (Host reads of ``requires_grad`` and ``.grad`` per parameter the optimizer holds; a device copy
        only for such parameters, which a correct loop does not have.)
        """
        probe = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.requires_grad or p.grad is None or p.is_sparse or is_dtensor(p) or not p.numel():
                    continue
                probe.append((p, stats.sample_view(p, stats.sample_stride(p.shape)).clone()))
        if probe:
            self._frozen[id(optimizer)] = probe
        else:
            self._frozen.pop(id(optimizer), None)

    def _frozen_moved(self, optimizer: torch.optim.Optimizer) -> list[str]:
        """Names of the probed frozen parameters the step changed (one host read, only when there are any)."""
        if not self._frozen:
            return []
        probe = self._frozen.pop(id(optimizer), None)
        if not probe:
            return []
        moved = [
            p
            for p, before in probe
            if not torch.equal(stats.sample_view(p, stats.sample_stride(p.shape)), before)
        ]
        if not moved:
            return []
        names = {id(p): n for n, p in zip(self.names, self._live_params())}
        model = self.module()
        if model is not None and any(id(p) not in names for p in moved):
            names.update({id(p): n for n, p in model.named_parameters()})
        return [names.get(id(p), f"<tensor of shape {tuple(p.shape)}>") for p in moved]

    def _note_grad_versions(self, idx: Sequence[int] | None = None) -> None:
        """Note (id, version) of the gradients, for the check before ``GradScaler.unscale_``."""
        params = self._live_params()
        sharded = self.shards.dtensors
        seen = self._grad_versions
        for i in range(len(params)) if idx is None else idx:
            g = params[i].grad
            if g is None or i in sharded:
                seen.pop(i, None)
            else:
                seen[i] = (id(g), compat.version_counter(g))

    def _on_opt_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        # the hook's args are step()'s positional arguments, the optimizer itself first
        pos = [a for a in (args or ()) if a is not optimizer]
        closure = pos[0] if pos else (kwargs or {}).get("closure")
        self._closure_step = callable(closure)
        self._tracker_call(self.tracker.optimizer_pre, optimizer)

    def _on_opt_post(self, optimizer: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        self._tracker_call(self.tracker.optimizer_post, optimizer)

    @failsafe
    def _tracker_call(self, fn: Callable[..., None], *args: Any) -> None:
        fn(*args)

    # ------------------------------------------------------------------ BoundaryCallbacks (from the tracker)
    def queue_end_of_backward(self, callback: Callable[[], None]) -> bool:
        """Run ``callback`` (under the failsafe) when the running backward pass ends."""
        return queue_end_of_backward(functools.partial(self._eager_tracker_call, callback))

    def parameters_changed(self) -> bool:
        """Whether a watched parameter changed in place since the last backward pass ended."""
        if not self._versions:
            return False
        params = self._live_params()
        return any(compat.version_counter(p) != v for p, v in zip(params, self._versions))

    def backward_started(self, inside_optimizer: bool) -> None:
        """A backward pass reached its first watched parameter."""
        self.provenance.new_pass(inside_optimizer)
        if self._pending_origin is not None:  # (the step this pass belongs to is known now)
            if self._cur.forward_origin is None:
                self._cur.forward_origin = self._pending_origin
            self._pending_origin = None

    @failsafe
    def _before_backward(self, tensors: Any) -> None:
        """``backward()`` is about to run on ``tensors``: if the loss is not finite, find where it was born.

        By default only where reading the loss costs nothing (a scalar on the CPU): on an accelerator it
        waits for the device at every step, so only with the option ``read_loss=True``. The graph is
        walked (:func:`gradwatch.forward_origin.locate`) at most :data:`MAX_ORIGIN_WALKS` times in a
        row, one more every :data:`ORIGIN_WALK_REFILL` calls, and not again once the weights themselves
        are non-finite. What it finds goes with the step this pass belongs to
        (``StepRecord.forward_origin``); a step a GradScaler skips is never recorded, so an overflow it
        handles is not reported. With several optimizers, the call's roots are also kept until the pass
        ends (:meth:`backward_roots`).
        """
        self._pending_origin = None
        given = [tensors] if isinstance(tensors, torch.Tensor) else tensors
        if len(self.optimizers) > 1 and compat.current_graph_task_id() == -1:  # (not a reentrant call)
            # the graph's structure outlives its saved tensors: the leak rule reads it at the pass's end
            self._roots = [r.grad_fn for r in given or () if isinstance(r, torch.Tensor)]
        read = self.config.read_loss
        if read is False:
            return
        self._backward_calls += 1
        if self._backward_calls % ORIGIN_WALK_REFILL == 0 and 0 <= self._origin_walks < MAX_ORIGIN_WALKS:
            self._origin_walks += 1
        if self._origin_walks <= 0:
            return
        roots = [r for r in given if isinstance(r, torch.Tensor) and r.grad_fn is not None] if given else []
        if not roots or any(
            r.numel() != 1 or r.is_complex() or not (read or stats.reads_freely(r.device)) for r in roots
        ):
            return  # (a vector-Jacobian product of a whole output, or a complex one, is not a loss; a
            # device loss: not read)
        loss = next((v for r in roots if not math.isfinite(v := r.detach().item())), None)
        if loss is None:
            return
        self._origin_walks -= 1
        try:
            origin = locate(roots, self._positions)
        except Exception:  # a best-effort diagnosis: a graph it cannot read leaves the gradient rule to it
            log.debug("gradwatch: the forward-origin walk failed; the finding falls back", exc_info=True)
            origin = None
        if origin is not None:
            origin = dataclasses.replace(origin, loss=loss)
        if origin is not None and origin.cause == "weights":
            self._origin_walks = -1  # every later loss is non-finite from here: never again
        self._pending_origin = origin

    def backward_aborted(self) -> None:
        """The running backward pass raised or was interrupted: not the user's accumulation bug."""
        self.provenance.used_passes.add(self.provenance.pass_id)

    def backward_ended(self, step: int) -> None:
        """A backward pass ended; capture what no optimizer will read."""
        params = self._live_params()
        prov = self.provenance
        touched = prov.touched.get(prov.pass_id)
        if not self.optimizers:
            self._versions = [compat.version_counter(p) for p in params]
        else:  # one device flag per pass: tells an AMP-skipped step from discarded gradients
            if touched:
                # (not reused by the statistics: an in-place write through ``.grad.data``, such as
                # ``p.grad.data.clamp_(-1, 1)``, changes the values without a new version)
                grads = (
                    self.shards.grads(sorted(touched), params)
                    if self.shards
                    else [params[i].grad for i in touched]
                )
                prov.pass_finite[prov.pass_id] = stats.all_finite(grads)
        if self.optimizers and (self._unscale_seen or not self._stepped):
            # after everything else queued for the end of this pass (DDP writes the reduced gradients
            # there), note the gradients' versions for the check before GradScaler.unscale_
            late = functools.partial(self._eager_tracker_call, self._note_grad_versions)
            if not queue_end_of_backward(late, at_end=True):
                self._note_grad_versions()
        if touched:
            self.emit(self.suite.backward_end(touched, step))
        self._roots = []
        unowned = self.optimizers.unowned
        if unowned and self.config.every(step):
            before = self.sampler.before(unowned, params) if self.config.update_ratio else None
            self._capture(unowned, params, step, before)
            if before is not None:
                self._cur.unowned_snap = (unowned, before)

    def optimizer_pre(self, optimizer: Any, step: int) -> None:
        """Read and judge the gradients an optimizer is about to use."""
        owned = self.optimizers.owned_by(optimizer)
        if not owned:
            return
        params = self._live_params()
        self.provenance.check_all(owned, params)
        name = self.optimizers.name(optimizer)
        findings = []
        self._probes += 1
        if self._probes % FROZEN_PROBE_EVERY == 1 or FROZEN_PROBE_EVERY == 1:
            self._probe_frozen(optimizer)
        if self._closure_step:
            self._closure_owned.update(owned)
            # the closure computes this step's gradients inside step() (and may end the previous step
            # first): keep the weights' sample outside the step state, read everything in the post-hook
            self._closure_before[id(optimizer)] = (owned, self.sampler.before(owned, params))
        else:
            findings = self.suite.optimizer_pre(name, owned, step)
            if self.config.every(step):
                before = self.sampler.before(owned, params) if self.config.update_ratio else None
                self._capture(owned, params, step, before)
                if before is not None:
                    self._cur.snaps[id(optimizer)] = (owned, before)
        try:
            self.emit(findings)
        except BaseException:
            # on_finding="raise" (or a warning filter set to error) aborts this optimizer step: no post
            # hook will run, so close it here, and count its gradients as seen (already reported)
            self.tracker.opt_depth = 0
            self._cur.snaps.pop(id(optimizer), None)
            self._closure_before.pop(id(optimizer), None)
            self.provenance.use_all(owned, params, step, name, observe=True)
            raise

    def optimizer_post(self, optimizer: Any, step: int, backward_inside: bool) -> None:
        """Measure the update, mark the gradients used."""
        owned = self.optimizers.owned_by(optimizer)
        if not owned:
            return
        self._stepped = True
        params = self._live_params()
        name = self.optimizers.name(optimizer)
        findings = []
        if self._closure_step:
            findings += self.suite.optimizer_pre(name, owned, step)
        findings += self.suite.optimizer_post(name, owned, step)
        self.provenance.use_all(owned, params, step, name, observe=True)
        findings += self.suite.optimizer_used(name, owned, step)
        if self._frozen:
            moved = self._frozen_moved(optimizer)
            if moved:
                findings += self.suite.frozen_moved(name, moved, step)
        try:
            if self.config.every(step):
                self._record_update(optimizer, owned, params, step, backward_inside)
                if self.shards.sharded:
                    self._combine_shards(owned, params)
        finally:
            self.emit(findings)

    def seal(self, step: int) -> None:
        """Record step ``step`` and hand it to the sinks and the detectors."""
        cur, self._cur = self._cur, _StepState(len(self.names))
        if self._next_loss is not None:  # recorded for this new step before its boundary sealed the last
            self._cur.loss, self._next_loss = self._next_loss, None
        params = self._live_params()
        findings: list[Finding] = []
        if not self.optimizers:  # the boundary itself is what uses the gradients
            every = range(len(self.names))
            findings = self.suite.boundary(every, step)
            self.provenance.use_all(every, params, step, "the update", observe=False)
            findings += self.suite.boundary_used(every, step)
        try:
            if self.config.every(step):
                self._seal_record(cur, params, step)
            findings += self.suite.judge(final=False)
        finally:
            self.emit(findings)

    # ------------------------------------------------------------------ capture and seal
    def _record_update(
        self, optimizer: Any, owned: list[int], params: list[torch.Tensor], step: int, backward_inside: bool
    ) -> None:
        closure = self._closure_before.pop(id(optimizer), None)
        if backward_inside or closure is not None:  # a closure (LBFGS) computed the gradients inside step()
            before = closure[1] if closure is not None else None
            self._capture(owned, params, step, before)  # the weights' norm from before the update
            if before is not None and self.config.update_ratio:
                self._cur.snaps[id(optimizer)] = (owned, before)
        snap = self._cur.snaps.pop(id(optimizer), None)
        if snap is not None:
            self._cur.parts.extend(self.sampler.after(*snap, params))

    def _combine_shards(self, positions: Sequence[int], params: list[torch.Tensor]) -> None:
        """Whole-tensor values of the sharded parameters among ``positions``: one collective.

        Runs on every rank at the same point, whatever was measured (see :mod:`gradwatch.sharding`).
        """
        if not self.shards.sharded or not self.shards.sharded.intersection(positions):
            return
        cur = self._cur
        sampler = self.sampler
        self.shards.combine(cur.parts, cur.combined, positions, params, sampler.sample_sizes, sampler.strides)
        cur.combined = len(cur.parts)

    def _capture(
        self, idx: list[int], params: list[torch.Tensor], step: int, samples: stats.Samples | None = None
    ) -> None:
        """Statistics of the gradients of ``params[i] for i in idx`` as they are now, into this step.

        ``samples``: copies of the parameters' sampled entries just taken (their norms are read from
        them instead of gathering the scattered entries again).
        """
        cur = self._cur
        grads = self.shards.grads(idx, params) if self.shards.dtensors else [params[i].grad for i in idx]
        grad_none = cur.grad_none
        for i, g in zip(idx, grads):
            grad_none[i] = g is None
        strides = [self.sampler.strides[i] for i in idx]
        hist_step = self.board.wants_histograms and self.config.histogram_every(step)
        both = None
        ranges: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
        if samples is not None and not hist_step and not self.shards.dtensors:
            both = stats.grad_and_param_stats(grads, strides, samples)  # (a small CPU model: one pass)
        if both is not None:
            cur.parts.append((idx, Column.GRAD_NORM, both))
        else:
            # (the norms first: they follow resized parameters)
            param_norms = self.sampler.norms(idx, params, samples)
            ranges = {} if hist_step else None
            grad_blocks = stats.grad_stats(grads, strides, ranges)
            cur.parts += [([idx[j] for j in pos], Column.GRAD_NORM, t) for pos, t in grad_blocks]
            cur.parts += param_norms
        for i, g in zip(idx, grads):
            if self._keep[i] and g is not None:
                cur.kept[self.names[i]] = g.detach().to("cpu", copy=True)
        if ranges is not None:
            sums: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # sum and sum of squares, known
            for pos, block in grad_blocks if ranges else ():  # (the CPU path; the fused one needs none)
                for j, (total, square) in zip(pos, torch.stack([block[:, 2], block[:, 0].square()], 1)):
                    sums[idx[j]] = (total, square)
            known_ranges = {idx[j]: r for j, r in ranges.items()}  # min and max, known (CPU)
            hist = self._histograms(idx, grads, sums, known_ranges)
            if hist is not None:
                cur.grad_hist.append(hist)

    def _seal_record(self, cur: _StepState, params: list[torch.Tensor], step: int) -> None:
        if cur.unowned_snap is not None:
            cur.parts.extend(self.sampler.after(*cur.unowned_snap, params))
        if self.optimizers.unowned:
            self._combine_shards(self.optimizers.unowned, params)
        param_hist = None
        if self.board.wants_histograms and self.config.histogram_every(step):
            param_hist = self._histograms(range(len(params)), self.shards.values(params))
            self._hist_step = step
        rec = self._recorded
        self._recorded = [step, step, 1] if not rec else [rec[0], step, rec[2] + 1]
        grad_hist = self._grad_hist_rows(cur.grad_hist) if cur.grad_hist else None
        # one device-to-host copy for the whole step (asynchronous; waited for by whoever reads first)
        loss = cur.loss
        unclipped = None
        covered: frozenset[int] = frozenset()
        if cur.unclipped:  # clip calls on disjoint parameters: sqrt(sum of squares)
            totals = list(cur.unclipped.values())
            unclipped = torch.linalg.vector_norm(
                torch.stack([t.to(totals[0].device, torch.float64) for t in totals])
            )
            clipped = {k for key in cur.unclipped for k in key}
            covered = frozenset(i for i, p in enumerate(params) if id(p) in clipped)
        host, singles, event = _to_host(
            [t for _, _, t in cur.parts],
            [
                loss if isinstance(loss, torch.Tensor) else None,
                None if grad_hist is None else grad_hist[1],
                None if param_hist is None else param_hist[1],
                unclipped,
            ],
        )
        host_loss, grad_rows, param_rows, host_unclipped = singles
        record = StepRecord(
            step=step,
            names=self.names,
            layer_of=self.layer_of,
            numels=self.sampler.numels,
            parts=[(pos, col, t) for (pos, col, _), t in zip(cur.parts, host)],
            has_grad=list(map(bool, cur.received)),
            grads=cur.kept,
            loss=loss if host_loss is None else host_loss,
            event=event,
            order=cur.order,
            grad_none=cur.grad_none,
            sample_sizes=self.sampler.sample_sizes,
            unclipped=None if host_unclipped is None else (host_unclipped.reshape(()), covered),
            forward_origin=cur.forward_origin,
        )
        if grad_hist is not None and grad_rows is not None:
            grad_hist = (grad_hist[0], grad_rows)
        named_params = None
        if param_hist is not None and param_rows is not None:
            named_params = ([self.names[i] for i in param_hist[0]], param_rows)
        if not isinstance(self.board, NullSink):
            record._waiting.add("sink")  # (read on the sink's thread, which then calls _read_by)
        self.suite.add_record(record)
        for sink in self._record_sinks:
            sink.write_step(record, grad_hist, named_params)

    def _histograms(
        self,
        idx: Sequence[int],
        tensors: Sequence[torch.Tensor | None],
        sums: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
        ranges: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> tuple[list[int], torch.Tensor] | None:
        """Histogram rows (on the device) of the non-empty tensors, and their parameter positions.

        ``sums``: parameter position -> the tensor's sum and sum of squares, already computed;
        ``ranges``: parameter position -> its min and max, already computed.
        """
        # (not detached here: the statistics read parameters without recording autograd history)
        keep = [(i, t) for i, t in zip(idx, tensors) if t is not None and t.numel()]
        if not keep:
            return None
        by_device: dict[torch.device, list[tuple[int, torch.Tensor]]] = {}
        for i, t in keep:
            by_device.setdefault(t.device, []).append((i, t))
        order: list[int] = []
        rows: list[torch.Tensor] = []
        for items in by_device.values():
            known = [sums.get(i) for i, _ in items] if sums else None
            extremes = [ranges.get(i) for i, _ in items] if ranges else None
            h = stats.histograms([t for _, t in items], self.config.histogram_bins, known, extremes)
            order.extend(i for i, _ in items)
            rows.append(h)  # on the device: copied with the rest of the step's record
        return order, torch.cat(rows) if len(rows) == 1 else torch.cat([r.to(rows[0].device) for r in rows])

    def _grad_hist_rows(
        self, blocks: list[tuple[list[int], torch.Tensor]]
    ) -> tuple[list[str], torch.Tensor] | None:
        """The step's gradient histogram rows by parameter name (a later capture of one replaces it)."""
        if not blocks:
            return None
        order = [i for idx, _ in blocks for i in idx]
        rows = torch.cat([r for _, r in blocks]) if len(blocks) > 1 else blocks[0][1]
        last = {i: k for k, i in enumerate(order)}
        if len(last) < len(order):  # captured twice in one step: keep the last rows
            keep = sorted(last.values())
            order = [order[k] for k in keep]
            rows = rows[torch.tensor(keep, device=rows.device)]
        return [self.names[i] for i in order], rows

    # ------------------------------------------------------------------ parameters
    def _resolve_params(self) -> list[torch.Tensor]:
        if self._tensors is not None:
            return self._tensors
        model = self.module()
        if model is None:
            raise GradWatchError("the watched model no longer exists; create a new watcher for a new model")
        named = dict(model.named_parameters())
        missing = [n for n in self.names if n not in named]
        if missing:
            raise GradWatchError(
                f"parameter(s) {', '.join(missing[:5])} are no longer in the model (layers replaced since "
                f"the watcher was created); create a new watcher with gradwatch.watch(model, ...)"
            )
        return [named[n] for n in self.names]

    def _live_params(self) -> list[torch.Tensor]:
        if self.params is None:
            raise GradWatchError("the watcher is not attached")
        return self.params


def _record_sinks(sinks: tuple[Sink, ...]) -> tuple[Sink, ...]:
    """The sinks that do something with a step record (the null board and the warning sink do not)."""
    return tuple(s for s in sinks if not isinstance(s, (NullSink, WarningSink)))


def _to_host(
    parts: list[torch.Tensor], singles: list[torch.Tensor | None]
) -> tuple[list[torch.Tensor], list[torch.Tensor | None], Any]:
    """Host copies of a step's device tensors: one ``cat`` on the device, one non-blocking copy.

    ``parts`` (float64 blocks) and ``singles`` (the loss, histogram rows; None where absent) are
    returned in the same structure, as views of one pinned host buffer, with the CUDA event recorded
    after the copy (None when nothing was on a CUDA device: CPU tensors are returned as they are).
    """
    wanted = [*parts, *(t for t in singles if t is not None)]
    on_device = [t for t in wanted if t.is_cuda]
    if not on_device:
        return parts, singles, None
    device = on_device[0].device
    flat = torch.cat([t.reshape(-1).to(device=device, dtype=torch.float64) for t in wanted])
    host = torch.empty(flat.shape, dtype=torch.float64, pin_memory=True)
    host.copy_(flat, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    views = iter(host.split([t.numel() for t in wanted]))
    out_parts = [next(views).view(t.shape) for t in parts]
    out_singles = [None if t is None else next(views).view(t.shape) for t in singles]
    return out_parts, out_singles, event
