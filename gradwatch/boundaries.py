"""Step tracking: where one training step ends and the next begins.

A step is the gradient work between two boundaries (DESIGN section 3). The :class:`StepTracker` is a
small host-only state machine fed by the hooks; it never touches tensor values. Boundaries come from,
in order of precedence:

1. *Marks*: a call of a ``@Watcher.train_step``-decorated function returning, or ``Watcher.step()``.
   Once the user marks steps, optimizer steps inside them no longer end steps, so a GAN iteration that
   steps two optimizers is one step.
2. *Optimizer steps*: ``optimizer.step()`` of a watched optimizer that follows new backward passes ends
   the step; further optimizer steps before the next backward belong to the same step (several
   optimizers stepping after one ``backward()``). A closure optimizer such as LBFGS whose backward runs
   inside ``step()`` is one step.
3. *In-place updates* (no optimizer, no marks): a backward pass that starts after any watched parameter
   was modified in place (``w -= lr * w.grad`` under ``torch.no_grad()``, detected through the tensors'
   version counters) ends the step of the previous backward passes; so does ``close()``.

Backward passes with no boundary between them (gradient accumulation) belong to one step. A step is
*closed* when its boundary was seen and *sealed* (recorded and handed to the sinks) when the next step's
first gradient arrives, at the next mark, or when the watcher is flushed: sealing late is what lets
several optimizers share one step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from gradwatch import compat

__all__ = ["BoundaryCallbacks", "StepTracker"]


class BoundaryCallbacks(Protocol):
    """What the tracker asks of its owner (the watcher)."""

    def seal(self, step: int) -> None:
        """Record step ``step`` and hand it to the sinks."""

    def backward_started(self, inside_optimizer: bool) -> None:
        """A backward pass accumulated its first watched gradient (after any seal it caused)."""

    def backward_ended(self, step: int) -> None:
        """A backward pass that accumulated into watched gradients has finished."""

    def backward_aborted(self) -> None:
        """The backward pass in progress raised or was interrupted before its end."""

    def optimizer_pre(self, optimizer: object, step: int) -> None:
        """``optimizer.step()`` is about to run within step ``step``."""

    def optimizer_post(self, optimizer: object, step: int, backward_inside: bool) -> None:
        """``optimizer.step()`` has run; ``backward_inside`` if a closure ran backward inside it."""

    def parameters_changed(self) -> bool:
        """Whether a watched parameter was modified in place since the last backward pass ended."""

    def queue_end_of_backward(self, callback: Callable[[], None]) -> bool:
        """Arrange for ``callback()`` at the end of the backward pass now running; False if it cannot."""


class StepTracker:
    """Host-only state machine that numbers steps and decides when to seal them.

    Args:
        owner: receives the callbacks.
        start_step: number of the first step.
        has_optimizers: whether optimizer hooks feed this tracker (disables in-place update detection).
    """

    def __init__(self, owner: BoundaryCallbacks, start_step: int, has_optimizers: bool) -> None:
        self.owner = owner
        self.step = start_step
        self.has_optimizers = has_optimizers
        self.backward_seen = False  # a gradient was accumulated since this step began
        self.closed = False  # an optimizer stepped over this step's gradients (unmarked mode)
        self.in_backward = False
        self.task = -1  # graph task id of the backward pass in progress
        self.end_queued = True  # its end callback is queued (else: ended at the next boundary)
        self.opt_depth = 0
        self.backward_in_opt = False
        self.user_marks = False  # the user marks steps (decorator or step())
        self.user_depth = 0  # inside a decorated train step

    @property
    def marked_mode(self) -> bool:
        """Whether the user's marks, not optimizer steps, end steps."""
        return self.user_marks or self.user_depth > 0

    def _settle(self) -> None:
        """Close a backward pass whose end callback never ran (it raised, or was interrupted)."""
        if self.in_backward and (not self.end_queued or compat.current_graph_task_id() == -1):
            if self.end_queued:  # the queued end never ran: the pass died
                self.owner.backward_aborted()
            self.backward_end()

    def incoming(self) -> None:
        """A gradient is about to reach a watched leaf (tensor hook, before accumulation).

        Ends the previous step first if its boundary was already seen, so that whatever the new
        gradient finds in ``.grad`` is judged against the right step. Also runs for
        ``torch.autograd.grad`` calls, which is harmless: such a boundary was already seen.
        """
        if self.in_backward and compat.outer_graph_task_id() == self.task:
            return
        if self.closed or (
            self.backward_seen
            and not self.in_backward
            and not self.has_optimizers
            and not self.marked_mode
            and self.owner.parameters_changed()
        ):
            self._seal()

    def grad(self) -> None:
        """A gradient was accumulated into a watched ``.grad`` (post-accumulate hook)."""
        task = compat.outer_graph_task_id()
        if self.in_backward and task != self.task:
            if self.end_queued:
                self.owner.backward_aborted()  # the previous pass died before its end callback
            self.backward_end()
        if not self.in_backward:
            self.in_backward = True
            self.task = task
            self.end_queued = self.owner.queue_end_of_backward(self.backward_end)
            if self.closed or (
                self.backward_seen
                and not self.has_optimizers
                and not self.marked_mode
                and self.owner.parameters_changed()
            ):
                self._seal()
            self.backward_seen = True
            self.owner.backward_started(self.opt_depth > 0)
        if self.opt_depth:
            self.backward_in_opt = True

    def backward_end(self) -> None:
        """The backward pass finished (queued engine callback, or the next boundary without one)."""
        self.in_backward = False
        compat.backward_seen_ended()
        self.owner.backward_ended(self.step)

    def optimizer_pre(self, optimizer: object) -> None:
        """A watched optimizer's ``step()`` starts (``step()`` calls do not nest)."""
        self._settle()
        self.opt_depth = 1
        self.backward_in_opt = False
        self.owner.optimizer_pre(optimizer, self.step)

    def optimizer_post(self, optimizer: object) -> None:
        """A watched optimizer's ``step()`` returned."""
        self._settle()
        self.opt_depth = 0
        self.owner.optimizer_post(optimizer, self.step, self.backward_in_opt)
        if not self.marked_mode and self.backward_seen:
            self.closed = True

    def begin_user_step(self) -> None:
        """A decorated train step was entered."""
        self.user_depth += 1

    def end_user_step(self, completed: bool) -> None:
        """A decorated train step returned (``completed``) or raised."""
        self.user_depth = max(0, self.user_depth - 1)
        if completed and self.user_depth == 0:
            self.mark()

    def mark(self) -> None:
        """An explicit boundary (``Watcher.step()`` or a decorated call returning)."""
        self.user_marks = True
        self._settle()
        if self.backward_seen or self.closed:
            self._seal()

    def boundary_seen(self) -> bool:
        """Whether the current step has ended (it will be sealed at the next gradient or mark).

        An optimizer stepped over its gradients (unmarked mode), or, with no optimizer and no marks, a
        watched parameter was changed in place since its backward passes.
        """
        if self.closed:
            return True
        return (
            self.backward_seen
            and not self.in_backward
            and not self.has_optimizers
            and not self.marked_mode
            and self.owner.parameters_changed()
        )

    def flush(self, final: bool) -> None:
        """Seal a step whose boundary was already seen; with ``final`` (close), any pending backward."""
        self._settle()
        if self.closed or (
            self.backward_seen
            and not self.in_backward
            and not self.has_optimizers
            and (final or (not self.marked_mode and self.owner.parameters_changed()))
        ):
            self._seal()

    def _seal(self) -> None:
        step = self.step
        self.step += 1
        self.backward_seen = False
        self.closed = False
        self.owner.seal(step)
