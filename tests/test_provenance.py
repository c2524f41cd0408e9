"""Provenance on its own: who wrote each ``.grad`` and when, from version counters, with no autograd.

A backward pass is simulated as AccumulateGrad does it: a new ``.grad`` tensor when it is ``None``,
else an in-place ``add_`` (one version increment), framed by the two hooks' calls.
"""

from __future__ import annotations

import torch

from gradwatch.provenance import Provenance


class Loop:
    """One parameter (or a few) and the calls the recorder makes into a Provenance."""

    def __init__(self, n: int = 1) -> None:
        self.params = [torch.zeros(3, requires_grad=True) for _ in range(n)]
        self.prov = Provenance(n)
        self.step = 0

    def backward(self, value: float = 1.0, which: list[int] | None = None) -> int:
        self.prov.new_pass(inside_optimizer=False)
        for i in which if which is not None else range(len(self.params)):
            p = self.params[i]
            self.prov.before_accumulate(i, p)
            g = torch.full((3,), value)
            with torch.no_grad():
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.add_(g)
            self.prov.accumulated(i, p)
        return self.prov.pass_id

    def optimizer_step(self) -> list[int]:
        """What the recorder does around optimizer.step(); returns the stale parameters it judged."""
        idx = list(range(len(self.params)))
        for i in idx:
            self.prov.check(i, self.params[i])
        stale = self.prov.stale(idx)
        for i in idx:
            self.prov.use(i, self.params[i], self.step, "SGD", observe=True)
        self.step += 1
        return stale

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()


def test_a_healthy_loop_is_never_stale_and_discards_nothing() -> None:
    for set_to_none in (True, False):
        loop = Loop()
        for _ in range(4):
            loop.zero_grad(set_to_none)
            loop.backward()
            assert loop.optimizer_step() == []
        assert loop.prov.discarded_passes() == {}


def test_a_missing_zero_grad_carries_the_used_gradient_into_the_next_step() -> None:
    loop = Loop()
    loop.backward()
    assert loop.optimizer_step() == []
    loop.backward()  # accumulated in place into the gradient step 0 already used
    assert loop.prov.holds_used[0] and loop.prov.fresh[0]
    assert loop.optimizer_step() == [0]
    assert loop.prov.used_at[0] == 1 and loop.prov.used_by[0] == "SGD"


def test_stepping_twice_on_one_gradient_is_a_restep() -> None:
    loop = Loop()
    loop.backward()
    loop.optimizer_step()
    loop.prov.check(0, loop.params[0])  # no backward in between
    assert loop.prov.restep[0] and not loop.prov.fresh[0]
    assert loop.prov.stale([0]) == [0]


def test_gradient_accumulation_before_one_use_is_not_stale() -> None:
    loop = Loop()
    for _ in range(4):
        loop.zero_grad()
        for _ in range(3):
            loop.backward()
        assert loop.optimizer_step() == []
    assert loop.prov.discarded_passes() == {}


def test_zeroing_between_backward_and_step_discards_that_pass() -> None:
    loop = Loop(2)
    first = loop.backward()
    loop.zero_grad()  # wiped before any optimizer used it
    second = loop.backward()
    loop.optimizer_step()
    assert loop.prov.discarded_passes() == {first: {0, 1}}
    assert second in loop.prov.used_passes
    assert loop.prov.discarded_passes() == {}  # each discarded pass is returned once


def test_a_partly_reset_pass_is_not_discarded_while_some_of_it_is_held() -> None:
    loop = Loop(2)
    first = loop.backward()
    loop.params[0].grad = None  # only one of its two gradients reset
    loop.backward(which=[0])
    assert loop.prov.discarded_passes() == {}  # the other half may still be used
    loop.optimizer_step()
    assert first in loop.prov.used_passes and loop.prov.discarded_passes() == {}


def test_a_non_finite_pass_reset_unused_is_an_amp_skip_not_a_discard() -> None:
    loop = Loop()
    bad = loop.backward(float("inf"))
    loop.prov.pass_finite[bad] = [torch.tensor(False)]  # the recorder's end-of-backward flag
    loop.zero_grad()  # GradScaler skipped optimizer.step(); the loop zeroes as usual
    loop.backward()
    loop.optimizer_step()
    assert loop.prov.discarded_passes() == {}
    assert loop.prov.skipped == 1


def test_a_reset_behind_the_version_counter_is_seen_from_the_values() -> None:
    loop = Loop()
    loop.backward()
    loop.optimizer_step()
    loop.params[0].grad.data.zero_()  # the old idiom: no version increment on the .grad seen by autograd
    loop.backward()
    assert loop.optimizer_step() == []  # all zeros when the next gradient arrived: nothing carried over


def test_a_pass_whose_parameters_were_all_moved_by_hand_was_used() -> None:
    # SAM's ascent step: the weights move in place between the pass's gradient and its reset
    loop = Loop()
    first = loop.backward()
    with torch.no_grad():
        loop.params[0].add_(0.1)
    loop.zero_grad()
    loop.backward()
    loop.optimizer_step()
    assert loop.prov.discarded_passes() == {}
    assert first in loop.prov.used_passes


def test_memory_is_bounded_by_the_horizon() -> None:
    from gradwatch.provenance import HORIZON

    loop = Loop()
    for _ in range(5 * HORIZON):
        loop.zero_grad()
        loop.backward()
        loop.optimizer_step()
        loop.prov.discarded_passes()
    prov = loop.prov
    for table in (prov.touched, prov.pass_finite, prov.reset_unused, prov.co_reset, prov.moved_reset):
        assert len(table) <= HORIZON
    assert len(prov.used_passes) <= 2 * HORIZON + 1
