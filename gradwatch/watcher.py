"""The :class:`Watcher`: the public face of gradwatch (watch, attach/detach, decorator, report, close).

All the work happens in :class:`gradwatch.recorder.Recorder` (hooks, step boundaries, capture, seal),
:mod:`gradwatch.stats` (the statistics engine), :class:`gradwatch.detectors.suite.DetectorSuite` and
:mod:`gradwatch.sinks`; the Watcher validates what the user passes and hands it on.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import difflib
import functools
import logging
import numbers
import os
import signal
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

from gradwatch.config import Config, check_kinds
from gradwatch.errors import GradWatchError
from gradwatch.findings import Finding, render_report
from gradwatch.recorder import Recorder
from gradwatch.sinks import History
from gradwatch.targets import resolve_optimizers, resolve_target

__all__ = ["Watcher", "watch"]

log = logging.getLogger("gradwatch")

F = TypeVar("F", bound=Callable[..., Any])

_LIVE: weakref.WeakSet[Watcher] = weakref.WeakSet()


def _disabled_by_env() -> bool:
    return os.environ.get("GRADWATCH_DISABLE", "").strip().lower() in ("1", "true", "yes", "on")


@atexit.register
def _close_all_at_exit() -> None:  # pragma: no cover - runs at interpreter exit
    for w in list(_LIVE):
        try:
            w.close()
        except Exception:
            log.exception("gradwatch: closing a watcher at exit failed")


#: The SIGTERM handler that was installed before gradwatch's, while gradwatch's is installed.
_sigterm_before: list[Any] = []


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM (how clusters pre-empt jobs): write what the watchers hold, then do what was there before.

    Without a handler of the user's (the default action terminates the process), every live watcher is
    closed, which records the last step and flushes the event files, and the signal is delivered again
    with the default action, so the process ends as it would have (killed by SIGTERM). With a handler of
    the user's, the watchers are only flushed (training may go on) and that handler is called. An
    ignored SIGTERM stays ignored.
    """
    previous = _sigterm_before[0] if _sigterm_before else signal.SIG_DFL
    terminating = not callable(previous) and previous != signal.SIG_IGN
    for w in list(_LIVE):
        try:
            w.close() if terminating else w.flush()
        except Exception:
            log.exception("gradwatch: writing a watcher's events on SIGTERM failed")
    if callable(previous):
        previous(signum, frame)
    elif terminating:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _install_sigterm() -> None:
    """Put :func:`_on_sigterm` in front of the current SIGTERM handler (main thread only; once).

    Not in a ``torch.distributed`` process: there the launcher (torchrun, Lightning, accelerate) owns
    SIGTERM and decides how the ranks stop together; their events are flushed at exit as usual.
    """
    if _sigterm_before or threading.current_thread() is not threading.main_thread():
        return
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    try:
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError, AttributeError):  # no SIGTERM here, or not allowed: events flush at exit
        return
    _sigterm_before.append(previous)


def _release_sigterm() -> None:
    """Put the previous SIGTERM handler back once no watcher is live (unless another replaced ours)."""
    if not _sigterm_before or _LIVE or threading.current_thread() is not threading.main_thread():
        return
    previous = _sigterm_before.pop()
    with contextlib.suppress(ValueError, OSError):
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


class Watcher:
    """Watches the gradients of a model (or of leaf tensors) through training.

    Attach with ``with gradwatch.watch(...) as w``, with :meth:`attach`/:meth:`detach`, or by calling a
    function decorated with :meth:`train_step`. At every recorded step it computes, for every watched
    parameter, the statistics of :class:`~gradwatch.ParamStats` batched on the gradients' device (one
    Triton kernel per group on CUDA, ``_foreach`` kernels without Triton, numpy segment reductions over
    one copy for small CPU tensors; see :mod:`gradwatch.stats`), copies them to the host once, keeps a
    bounded :attr:`history`, judges them with every detector, and writes TensorBoard scalars and
    histograms from a background thread.

    Args:
        target: an ``nn.Module`` instance, a ``Mapping[str, Tensor]`` of leaf tensors, or an iterable of
            leaf tensors (see :mod:`gradwatch.targets`). Parameter names are ``named_parameters()``
            names or the mapping's keys.
        optimizer: a ``torch.optim.Optimizer``, a sequence of them, or ``None``. Their ``step()`` calls
            are the step boundaries unless steps are marked (see :mod:`gradwatch.boundaries`).
        **options: keyword-only options, each declared, documented (default, unit, source) and
            validated once, as a field of :class:`gradwatch.config.Config`: ``logdir``, ``writer``,
            ``every``, ``histogram_every``, ``histogram_bins``, ``max_history``, ``on_finding``,
            ``keep_grads``, ``update_ratio``, ``start_step``, ``suppress`` and the detectors' windows
            and thresholds.

    Attributes:
        config: the validated options.
        names: the watched parameters' names, in ``named_parameters()`` (or mapping, or iteration) order.
        frozen: names of module parameters skipped because they had ``requires_grad=False``.
        disabled: ``GRADWATCH_DISABLE`` was set: the watcher validates its arguments and then does
            nothing at all (no hooks, no files, an empty history).

    Raises:
        TypeError: a bad target or optimizer (see :func:`~gradwatch.targets.resolve_target`), an unknown
            option, an option of the wrong type, or a ``writer`` without the ``SummaryWriter`` methods.
        ValueError: an empty target, a tensor that does not require grad, a bad option value, both
            ``logdir`` and ``writer``, ``keep_grads`` naming a parameter that is not watched, or a bad
            ``GRADWATCH_ON_FINDING``.

    Environment: ``GRADWATCH_ON_FINDING=raise`` (or ``warn``, ``ignore``) replaces the ``on_finding``
    option, to stop a run at its first finding without editing the script
    (``GRADWATCH_ON_FINDING=raise python train.py``); ``GRADWATCH_DISABLE=1`` makes the watcher do
    nothing at all.
    """

    def __init__(self, target: Any, optimizer: Any = None, **options: Any) -> None:
        self.config = Config.from_options(options)
        policy = os.environ.get("GRADWATCH_ON_FINDING", "").strip().lower()
        if policy:  # set outside the script, it wins over the script's own on_finding
            if policy not in ("warn", "raise", "ignore"):
                raise ValueError(
                    f"the environment variable GRADWATCH_ON_FINDING={policy!r} must be 'warn', 'raise' or "
                    f"'ignore' (or unset)"
                )
            self.config = dataclasses.replace(self.config, on_finding=policy)  # type: ignore[arg-type]
        targets = resolve_target(target)
        optimizers = resolve_optimizers(optimizer)
        self.names: tuple[str, ...] = tuple(targets.names)
        self.frozen: tuple[str, ...] = tuple(targets.frozen)
        if isinstance(self.config.keep_grads, frozenset):
            for name in sorted(self.config.keep_grads - set(self.names)):
                close = difflib.get_close_matches(name, self.names, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValueError(
                    f"keep_grads names {name!r}, which is not a watched parameter; {hint}"
                    f"watched: {', '.join(self.names[:8])}{' ...' if len(self.names) > 8 else ''}"
                )
        self.disabled = _disabled_by_env()
        self._recorder = Recorder(targets, optimizers, self.config)
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    def attach(self) -> Watcher:
        """Register the hooks (idempotent: attaching twice adds nothing) and open the TensorBoard writer.

        Returns:
            ``self``.

        Raises:
            GradWatchError: the watcher was closed, or the watched model no longer exists; or
                ``logdir`` was given and TensorBoard is not installed (install ``gradwatch[tensorboard]``),
                or ``logdir`` cannot hold event files (a file in the way, a parent that is a file, no
                permission, a read-only file system): the message names the path and what to do. No hook
                is left registered.
        """
        if self.disabled or self._recorder.attached:
            return self
        if self._closed:
            raise GradWatchError("this Watcher is closed; create a new one with gradwatch.watch(...)")
        findings = self._recorder.attach()
        _LIVE.add(self)
        _install_sigterm()
        self._recorder.emit(findings)
        return self

    def detach(self) -> None:
        """Remove every hook; the model, its parameters and the optimizers are left exactly as found.

        A step whose boundary was already seen is recorded first. Idempotent.
        """
        self._recorder.detach()

    def close(self) -> None:
        """Record the last step, detach, and flush (and close, if gradwatch opened it) the writer.

        Idempotent; runs automatically when a ``with`` block exits (also by an exception) and at
        interpreter exit.
        """
        if self._closed:
            return
        self._closed = True
        _LIVE.discard(self)
        try:
            self._recorder.close()
        finally:
            _release_sigterm()

    def flush(self) -> None:
        """Record a step whose boundary was seen and wait until the writer has written everything."""
        self._recorder.flush()

    def __enter__(self) -> Watcher:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def attached(self) -> bool:
        """Whether the hooks are registered."""
        return self._recorder.attached

    # ------------------------------------------------------------------ during training
    def train_step(self, fn: F) -> F:
        """Decorate a training-step function: one call is one step.

        The first call attaches the watcher if needed. When the call returns, the step ends (even if it
        stepped several optimizers); a returned scalar tensor or number (or the first element of a
        returned tuple or list) is recorded as the loss. A call that raises ends no step.
        """

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self.disabled or self._closed:
                return fn(*args, **kwargs)
            if not self._recorder.attached:
                self.attach()
            self._recorder.begin_user_step()
            done = False
            try:
                out = fn(*args, **kwargs)
                done = True
            finally:
                if done:
                    value = out[0] if isinstance(out, (tuple, list)) and out else out
                    scalar = (
                        isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point()
                    )
                    if scalar or isinstance(value, float):
                        self.record_loss(value)
                self._recorder.end_user_step(done)
            return out

        return wrapper  # type: ignore[return-value]

    def step(self) -> None:
        """Mark a step boundary explicitly (for loops with no optimizer, or to group several)."""
        if self._recorder.attached:
            self._recorder.mark()

    def record_loss(self, loss: torch.Tensor | float) -> None:
        """Record the loss of the current step (a scalar tensor or a number); read without a host sync.

        The first loss recorded while attached is also walked back through its autograd graph once
        (host only, O(graph size)): a loss that reaches no watched parameter, or that depends on leaves
        outside the watched module, is reported.

        Raises:
            TypeError: ``loss`` is not a number or a one-element tensor.
        """
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise TypeError(
                    f"record_loss() needs a scalar loss, got a tensor of shape {tuple(loss.shape)}"
                )
            self._recorder.set_loss(loss)
        elif isinstance(loss, numbers.Real) and not isinstance(loss, bool):  # int, float, numpy scalars
            self._recorder.set_loss(float(loss))
        else:
            raise TypeError(f"record_loss() needs a scalar tensor or a number, got {type(loss).__name__}")

    @contextlib.contextmanager
    def suppress(self, kind: str, *params: str) -> Iterator[None]:
        """Silence findings of ``kind`` made inside the ``with`` block.

        Args:
            kind: a finding kind.
            *params: parameter-name patterns (``fnmatch`` style); none means every parameter.

        Raises:
            ValueError: ``kind`` is not a known finding kind.
        """
        check_kinds([kind])
        entry = (kind, params or ("*",))
        entries = self._recorder.suppressions.entries
        entries.append(entry)
        try:
            yield
        finally:
            entries.remove(entry)

    # ------------------------------------------------------------------ results
    @property
    def current_step(self) -> int:
        """The number of the step now accumulating (the next one to be recorded)."""
        return self._recorder.tracker.step

    @property
    def history(self) -> History:
        """Recorded steps, oldest first, at most ``max_history`` of them (a read-only sequence)."""
        self._recorder.sync()
        return self._recorder.memory.history

    @property
    def findings(self) -> list[Finding]:
        """Findings so far, oldest first (a copy)."""
        self._recorder.sync()
        return list(self._recorder.memory.findings)

    @property
    def skipped_steps(self) -> list[int]:
        """Steps where gradients holding NaN/Inf were dropped without an optimizer step.

        That is what an AMP ``GradScaler`` does when it skips ``step()``: not a bug, so not a finding;
        shown by :meth:`report`. One entry per skipped gradient content (all the passes accumulated
        into it), so a step number repeats when two contents were dropped before the step ended. Only
        known when an optimizer is watched (the last 1000).
        """
        self._recorder.sync()
        return self._recorder.suite.skipped_steps

    def report(self) -> str:
        """A readable summary of the run, for ``print()``.

        Findings first (most severe first, each with its fix), then a per-parameter table of the last
        recorded step: name, shape, grad norm, max |g|, mean, update ratio, non-finite count.
        """
        if self.disabled:
            return "gradwatch is disabled (GRADWATCH_DISABLE is set): nothing was recorded."
        self._recorder.sync()
        history = self._recorder.memory.history
        return render_report(
            self._recorder.memory.findings,
            self._recorder.suite.skipped_steps,
            history[-1] if history else None,
            self._recorder.sampler.shapes,
        )

    def __repr__(self) -> str:
        state = (
            "disabled"
            if self.disabled
            else "closed"
            if self._closed
            else "attached"
            if self.attached
            else "detached"
        )
        optimizers = len(self._recorder.optimizers)
        return (
            f"Watcher({len(self.names)} params, {optimizers} optimizer(s), {state}, step {self.current_step})"
        )


def watch(target: Any, optimizer: Any = None, **options: Any) -> Watcher:
    """Create a :class:`Watcher` and attach it; use it as a context manager to detach and flush on exit.

    Example:
        >>> import torch, gradwatch
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> with gradwatch.watch(model, opt) as w:
        ...     for _ in range(3):
        ...         opt.zero_grad()
        ...         model(torch.ones(4, 3)).pow(2).mean().backward()
        ...         opt.step()
        >>> [r.step for r in w.history]
        [0, 1, 2]
        >>> sorted(w.history[-1].params)
        ['bias', 'weight']

    Args and raises: as :class:`Watcher`.
    """
    return Watcher(target, optimizer, **options).attach()
