"""Bad input gets a clear TypeError/ValueError at the API boundary; every accepted target works."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradwatch as gw


def test_mapping_iterable_and_module_names() -> None:
    w_, b_ = torch.zeros(2, requires_grad=True), torch.zeros(1, requires_grad=True)
    assert gw.Watcher({"w": w_, "b": b_}).names == ("w", "b")
    assert gw.Watcher([w_, b_]).names == ("0", "1")
    assert gw.Watcher(iter([w_, w_, b_])).names == ("0", "2")  # the same tensor twice is watched once
    m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    assert gw.Watcher(m).names == tuple(n for n, _ in m.named_parameters())
    assert gw.Watcher(m.parameters()).names == ("0", "1", "2", "3")


def test_frozen_module_parameters_are_not_watched() -> None:
    m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    m[0].requires_grad_(False)
    w = gw.Watcher(m)
    assert w.names == ("1.weight", "1.bias") and w.frozen == ("0.weight", "0.bias")


@pytest.mark.parametrize(
    ("target", "exc", "match"),
    [
        (
            nn.Linear,
            TypeError,
            r"class torch\.nn\.modules\.linear\.Linear, not an instance.*Linear\(\.\.\.\)",
        ),
        (
            {"w": torch.zeros(2, requires_grad=True) * 2},
            TypeError,
            r"'w' is not a leaf tensor.*grad_fn=MulBackward0",
        ),
        ({"w": torch.zeros(2)}, ValueError, r"'w' does not require grad.*requires_grad=True"),
        ({"w": [1.0, 2.0]}, TypeError, r"'w' is list .*not a torch.Tensor"),
        ({1: torch.zeros(1, requires_grad=True)}, TypeError, r"mapping keys must be parameter names"),
        ({}, ValueError, r"mapping is empty"),
        ([], ValueError, r"iterable is empty"),
        (nn.ReLU(), ValueError, r"ReLU has no parameters"),
        (
            nn.Linear(2, 2).requires_grad_(False),
            ValueError,
            r"every parameter of Linear has requires_grad=False",
        ),
        (torch.zeros(2, requires_grad=True), TypeError, r"single tensor.*\{'w': w\}"),
        ("model", TypeError, r"got the string 'model'"),
        (42, TypeError, r"cannot watch int 42"),
        (
            torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1),
            TypeError,
            r"optimizer SGD as its target.*watch\(model, optimizer\)",
        ),
        ({"w": torch.zeros(2, dtype=torch.long)}, ValueError, r"dtype torch.int64.*only floating-point"),
    ],
    ids=[
        "class",
        "non-leaf",
        "no-requires-grad",
        "not-a-tensor",
        "non-str-key",
        "empty-dict",
        "empty-list",
        "no-params",
        "all-frozen",
        "bare-tensor",
        "string",
        "int",
        "optimizer-first",
        "int-tensor",
    ],
)
def test_bad_targets(target, exc, match) -> None:
    with pytest.raises(exc, match=match):
        gw.watch(target)


@pytest.mark.parametrize(
    ("optimizer", "match"),
    [
        (torch.optim.SGD, r"optimizer is the class SGD, not an instance"),
        ("adam", r"optimizer must be a torch.optim.Optimizer.*got str"),
        ([object()], r"optimizer\[0\] must be a torch.optim.Optimizer"),
    ],
    ids=["class", "string", "list-of-object"],
)
def test_bad_optimizers(optimizer, match) -> None:
    with pytest.raises(TypeError, match=match):
        gw.watch(nn.Linear(2, 1), optimizer)


def test_scheduler_instead_of_optimizer() -> None:
    m = nn.Linear(2, 1)
    sched = torch.optim.lr_scheduler.StepLR(torch.optim.SGD(m.parameters(), lr=0.1), 1)
    with pytest.raises(TypeError, match=r"StepLR, which wraps an optimizer.*sched.optimizer"):
        gw.watch(m, sched)


@pytest.mark.parametrize(
    ("options", "exc", "match"),
    [
        ({"evry": 2}, TypeError, r"unknown option\(s\) 'evry' \(did you mean 'every'\?\)"),
        ({"every": -1}, ValueError, r"every must be an int >= 1"),
        ({"every": "often"}, TypeError, r"every must be an int step period"),
        ({"histogram_every": True}, TypeError, r"histogram_every=True is ambiguous"),
        ({"max_history": 0}, ValueError, r"max_history must be >= 1"),
        ({"on_finding": "explode"}, ValueError, r"on_finding must be 'warn', 'raise' or 'ignore'"),
        ({"keep_grads": 3}, TypeError, r"keep_grads must be True/False or a list"),
        ({"logdir": "runs/x", "writer": object()}, ValueError, r"either logdir= or writer="),
        ({"writer": object()}, TypeError, r"writer must be a torch.utils.tensorboard.SummaryWriter"),
        ({"logdir": 5}, TypeError, r"logdir must be a path"),
        ({"keep_grads": ["wieght"]}, ValueError, r"keep_grads names 'wieght'.*did you mean 'weight'"),
    ],
    ids=[
        "unknown",
        "negative-every",
        "str-every",
        "bool-hist",
        "zero-history",
        "bad-policy",
        "bad-keep",
        "logdir-and-writer",
        "bad-writer",
        "bad-logdir",
        "keep-unknown-name",
    ],
)
def test_bad_options(options, exc, match) -> None:
    with pytest.raises(exc, match=match):
        gw.Watcher(nn.Linear(2, 1), **options)


def test_schedules() -> None:
    assert [k for k in range(10) if gw.every(4)(k)] == [0, 4, 8]
    assert [k for k in range(10) if gw.every(4, offset=1)(k)] == [1, 5, 9]
    assert [k for k in range(10) if gw.at_steps(2, 3)(k)] == [2, 3]
    assert not any(gw.never(k) for k in range(10))
    with pytest.raises(ValueError, match="n must be >= 1"):
        gw.every(0)


def test_record_loss_validation() -> None:
    w = gw.Watcher(nn.Linear(2, 1))
    with pytest.raises(TypeError, match=r"scalar loss, got a tensor of shape \(2,\)"):
        w.record_loss(torch.ones(2))
    with pytest.raises(TypeError, match="scalar tensor or a number, got str"):
        w.record_loss("0.5")


def test_named_parameters_generator_keeps_names() -> None:
    m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    assert gw.Watcher(m.named_parameters()).names == ("0.weight", "0.bias", "1.weight", "1.bias")


def test_at_steps_accepts_a_list_and_record_loss_numpy_scalars() -> None:
    import numpy as np

    assert gw.at_steps([1, 2], 5).steps == frozenset({1, 2, 5})
    w = gw.Watcher(nn.Linear(2, 1))
    w.record_loss(np.float32(0.5))
    with pytest.raises(IndexError, match="history is empty"):
        w.history[-1]


def test_optimizer_wrappers_that_step_an_inner_optimizer_are_unwrapped() -> None:
    from gradwatch.targets import resolve_optimizers

    model = torch.nn.Linear(2, 1)
    inner = torch.optim.SGD(model.parameters(), lr=0.1)

    class Wrapper(torch.optim.Optimizer):  # as accelerate's AcceleratedOptimizer: no super().__init__
        def __init__(self, optimizer: torch.optim.Optimizer) -> None:
            self.optimizer = optimizer

        def step(self, closure=None):  # type: ignore[override]
            return self.optimizer.step(closure)

    assert resolve_optimizers(Wrapper(Wrapper(inner))) == [inner]
    assert resolve_optimizers([Wrapper(inner), inner]) == [inner]
    with gw.watch(model, Wrapper(inner)) as w:
        for _ in range(2):
            inner.zero_grad()
            model(torch.ones(3, 2)).sum().backward()
            Wrapper(inner).step()
    assert [r.step for r in w.history] == [0, 1]


def test_parameters_on_the_meta_device_are_not_watched() -> None:
    # a torch.func ensemble keeps its template module on the meta device: shapes without data
    model = nn.ModuleDict({"net": nn.Linear(3, 2), "template": nn.Linear(3, 2).to("meta")})
    opt = torch.optim.SGD(model["net"].parameters(), lr=0.1)
    with gw.watch(model, opt, on_finding="ignore") as w:
        for _ in range(3):
            opt.zero_grad()
            model["net"](torch.randn(4, 3)).sum().backward()
            opt.step()
    assert list(w.history[0].params) == ["net.weight", "net.bias"]
    assert len(w.history) == 3 and w.findings == [] and not w._recorder.failed
