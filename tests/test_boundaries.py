"""The step boundary state machine on its own: a fake owner records the event sequence it is sent.

The tracker is host-only; here no tensor and no autograd engine is involved. A backward pass is
simulated by the hooks' calls (``incoming`` before a leaf's accumulation, ``grad`` after it) under a
graph task id, and its end by running the callback the tracker queued.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gradwatch import compat
from gradwatch.boundaries import StepTracker


class FakeOwner:
    """Implements BoundaryCallbacks by recording every call."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.queued: list[Callable[[], None]] = []
        self.changed = False  # what parameters_changed() answers

    def seal(self, step: int) -> None:
        self.events.append(("seal", step))

    def backward_started(self, inside_optimizer: bool) -> None:
        self.events.append(("backward_started", inside_optimizer))

    def backward_ended(self, step: int) -> None:
        self.events.append(("backward_ended", step))

    def backward_aborted(self) -> None:
        self.events.append(("backward_aborted",))

    def optimizer_pre(self, optimizer: object, step: int) -> None:
        self.events.append(("optimizer_pre", optimizer, step))

    def optimizer_post(self, optimizer: object, step: int, backward_inside: bool) -> None:
        self.events.append(("optimizer_post", optimizer, step, backward_inside))

    def parameters_changed(self) -> bool:
        return self.changed

    def queue_end_of_backward(self, callback: Callable[[], None]) -> bool:
        self.queued.append(callback)
        return True


class Engine:
    """Simulates backward passes: a graph task id while one runs, -1 otherwise."""

    def __init__(self, tracker: StepTracker, owner: FakeOwner, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tracker, self.owner, self.task, self.next_task = tracker, owner, -1, 1
        monkeypatch.setattr(compat, "current_graph_task_id", lambda: self.task)

    def backward(self, leaves: int = 2, finish: bool = True) -> None:
        self.task, self.next_task = self.next_task, self.next_task + 1
        for _ in range(leaves):
            self.tracker.incoming()
            self.tracker.grad()
        if finish:
            self.end()

    def end(self) -> None:
        self.task = -1
        while self.owner.queued:
            self.owner.queued.pop(0)()


@pytest.fixture
def make(monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[StepTracker, FakeOwner, Engine]]:
    def build(has_optimizers: bool = True, start_step: int = 0) -> tuple[StepTracker, FakeOwner, Engine]:
        owner = FakeOwner()
        tracker = StepTracker(owner, start_step, has_optimizers)
        return tracker, owner, Engine(tracker, owner, monkeypatch)

    return build


def test_gradient_accumulation_is_one_step_sealed_at_the_next_backward(make) -> None:
    tracker, owner, engine = make()
    for _ in range(2):  # two steps of 3 micro-batches each
        for _ in range(3):
            engine.backward()
        tracker.optimizer_pre("opt")
        tracker.optimizer_post("opt")
    engine.backward()  # the first gradient of step 2 seals step 1
    micro = [("backward_started", False), ("backward_ended", 0)] * 3
    step1 = [(e[0], 1) if e[0] == "backward_ended" else e for e in micro]
    assert owner.events == [
        *micro,
        ("optimizer_pre", "opt", 0),
        ("optimizer_post", "opt", 0, False),
        ("seal", 0),
        *step1,
        ("optimizer_pre", "opt", 1),
        ("optimizer_post", "opt", 1, False),
        ("seal", 1),
        ("backward_started", False),
        ("backward_ended", 2),
    ]
    assert tracker.step == 2


def test_two_optimizers_after_one_backward_share_one_step(make) -> None:
    tracker, owner, engine = make()
    engine.backward()
    tracker.optimizer_pre("a")
    tracker.optimizer_post("a")
    tracker.optimizer_pre("b")  # no backward in between: still step 0
    tracker.optimizer_post("b")
    tracker.flush(final=False)
    assert [e for e in owner.events if e[0] != "backward_started"] == [
        ("backward_ended", 0),
        ("optimizer_pre", "a", 0),
        ("optimizer_post", "a", 0, False),
        ("optimizer_pre", "b", 0),
        ("optimizer_post", "b", 0, False),
        ("seal", 0),
    ]


def test_a_gan_iteration_marked_by_the_user_is_one_step(make) -> None:
    tracker, owner, engine = make()
    for _ in range(2):
        tracker.begin_user_step()
        engine.backward()  # discriminator
        tracker.optimizer_pre("D")
        tracker.optimizer_post("D")
        engine.backward()  # generator
        tracker.optimizer_pre("G")
        tracker.optimizer_post("G")
        tracker.end_user_step(completed=True)
    seals = [e for e in owner.events if e[0] == "seal"]
    assert seals == [("seal", 0), ("seal", 1)]
    # the generator's backward after D's step stays in the step: no seal between them
    first = owner.events[: owner.events.index(("seal", 0)) + 1]
    assert [e[0] for e in first].count("optimizer_post") == 2 and first[-1] == ("seal", 0)
    assert tracker.marked_mode


def test_a_train_step_that_raises_ends_no_step(make) -> None:
    tracker, owner, engine = make()
    tracker.begin_user_step()
    engine.backward()
    tracker.end_user_step(completed=False)
    assert ("seal", 0) not in owner.events and tracker.step == 0
    tracker.begin_user_step()
    tracker.optimizer_pre("opt")
    tracker.optimizer_post("opt")
    tracker.end_user_step(completed=True)
    assert owner.events[-1] == ("seal", 0)


def test_lbfgs_closure_backward_inside_the_optimizer_step(make) -> None:
    tracker, owner, engine = make()
    for _ in range(2):
        tracker.optimizer_pre("lbfgs")
        engine.backward()  # the closure, several times
        engine.backward()
        tracker.optimizer_post("lbfgs")
    tracker.flush(final=True)
    assert owner.events[:6] == [
        ("optimizer_pre", "lbfgs", 0),
        ("backward_started", True),
        ("backward_ended", 0),
        ("backward_started", True),
        ("backward_ended", 0),
        ("optimizer_post", "lbfgs", 0, True),
    ]
    assert [e for e in owner.events if e[0] == "seal"] == [("seal", 0), ("seal", 1)]


def test_in_place_updates_without_an_optimizer_end_steps(make) -> None:
    tracker, owner, engine = make(has_optimizers=False)
    engine.backward()
    engine.backward()  # nothing changed in place: accumulation, same step
    owner.changed = True  # w -= lr * w.grad
    engine.backward()
    assert [e for e in owner.events if e[0] == "seal"] == [("seal", 0)]
    owner.changed = False
    tracker.flush(final=True)  # close: the pending backward is a step of its own
    assert owner.events[-1] == ("seal", 1)


def test_a_backward_pass_that_died_is_reported_aborted_once(make) -> None:
    _, owner, engine = make()
    engine.backward(finish=False)  # raised half-way: its queued end never runs
    owner.queued.clear()
    engine.backward()
    assert owner.events == [
        ("backward_started", False),
        ("backward_aborted",),
        ("backward_ended", 0),
        ("backward_started", False),
        ("backward_ended", 0),
    ]


def test_steps_count_from_start_step(make) -> None:
    tracker, owner, engine = make(start_step=100)
    engine.backward()
    tracker.optimizer_pre("opt")
    tracker.optimizer_post("opt")
    tracker.flush(final=False)
    assert owner.events[-1] == ("seal", 100) and tracker.step == 101
