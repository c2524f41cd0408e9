"""Loops that break things: clipping, interrupted backward/step, precision, swap-mode .to(), slow writers."""

from __future__ import annotations

import contextlib
import logging
import time
import warnings

import numpy as np
import pytest
import torch
from conftest import needs_swap_module_params
from torch import nn

import gradwatch as gw


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


X, Y = torch.randn(16, 4, generator=torch.Generator().manual_seed(1)), torch.randn(16, 1)


def _kinds(w):
    return {f.kind for f in w.findings}


@pytest.mark.parametrize(
    "touch",
    [
        lambda m: nn.utils.clip_grad_norm_(m.parameters(), 1.0),
        lambda m: nn.utils.clip_grad_norm_(m.parameters(), 1e9, foreach=False),
        lambda m: nn.utils.clip_grad_value_(m.parameters(), 0.1),
        lambda m: [p.grad.div_(2) for p in m.parameters()],
    ],
    ids=["clip-norm", "clip-norm-noop-loop", "clip-value", "div"],
)
@pytest.mark.parametrize("zero", [True, False], ids=["zeroed", "not-zeroed"])
def test_grad_writes_between_backward_and_step(touch, zero: bool) -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gw.watch(model, opt, on_finding="ignore") as w:
        for _ in range(4):
            if zero:
                opt.zero_grad()
            nn.functional.mse_loss(model(X), Y).backward()
            touch(model)
            opt.step()
    assert _kinds(w) == (set() if zero else {"missing_zero_grad"})


def test_interrupted_backward_does_not_stop_recording() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    armed = {"on": False}

    def interrupt(grad):
        if armed["on"]:
            armed["on"] = False
            raise KeyboardInterrupt  # Ctrl-C in the middle of backward(), as in a notebook
        return grad

    model[0].weight.register_hook(interrupt)
    with gw.watch(model, opt) as w:
        for k in range(8):
            opt.zero_grad()
            armed["on"] = k == 3
            try:
                nn.functional.mse_loss(model(X), Y).backward()
            except KeyboardInterrupt:
                continue  # the user goes on with the next batch
            opt.step()
    assert [r.step for r in w.history] == list(range(7))  # 7 optimizer steps, each its own step
    assert w.findings == []


def test_exception_inside_optimizer_step_does_not_hide_later_bugs() -> None:
    model = _mlp()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=2)
    calls = {"n": 0}

    def closure():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("closure failed")
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(X), Y)
        loss.backward()
        return loss

    with gw.watch(model, opt, on_finding="ignore") as w:
        with pytest.raises(RuntimeError, match="closure failed"):
            opt.step(closure)
        for _ in range(3):
            opt.step(closure)
        # now a wasted backward outside the optimizer: it must be seen as discarded, not "inside step()"
        nn.functional.mse_loss(model(X), Y).backward()
        opt.step(closure)
    assert _kinds(w) == {"discarded_grad"}


def test_raise_policy_does_not_report_its_own_aborted_step_again() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gw.watch(model, opt, on_finding="raise") as w:
        for k in range(4):
            if k != 1:
                opt.zero_grad()  # forgotten once: step 1 raises
            nn.functional.mse_loss(model(X), Y).backward()
            with contextlib.suppress(gw.GradientError):
                opt.step()
    assert [f.kind for f in w.findings] == ["missing_zero_grad"]


@pytest.mark.parametrize(
    ("n", "mean", "std"), [(100, 1.0, 1e-4), (10_000, 5.0, 1e-3), (1_000_000, 1e3, 1e-2)]
)
def test_mean_and_std_hold_when_the_mean_dominates(n: int, mean: float, std: float) -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.zeros(n, requires_grad=True)
    grad = mean + std * torch.randn(n, generator=g)
    with gw.watch({"p": p}) as w:
        p.backward(grad)
        w.step()
    s = w.history[0].params["p"]
    ref = grad.double().numpy()
    # float32 reductions (as torch's own): relative precision ~1e-7 on the mean and the norm, and the
    # standard deviation is measured as ||g - mean|| / sqrt(n), so it does not cancel
    assert s.grad_mean == pytest.approx(ref.mean(), rel=1e-6)
    assert s.grad_norm == pytest.approx(np.linalg.norm(ref), rel=1e-6)
    assert s.grad_std == pytest.approx(ref.std(), rel=1e-3)


def test_huge_finite_gradients_have_finite_norms() -> None:
    p = torch.zeros(4, requires_grad=True)
    with gw.watch({"p": p}, on_finding="ignore") as w:
        p.backward(torch.full((4,), 1e30))
        w.step()
    s = w.history[0].params["p"]
    assert s.grad_norm == pytest.approx(2e30, rel=1e-6) and s.inf_count == 0 and s.nan_count == 0


@needs_swap_module_params
@pytest.mark.parametrize("state", ["constructed", "attached", "closed"])
def test_module_to_in_swap_mode(state: str) -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    w = gw.Watcher(model, opt)
    if state != "constructed":
        w.attach()
        opt.zero_grad()
        nn.functional.mse_loss(model(X), Y).backward()
        opt.step()
    if state == "closed":
        w.close()
    old = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        model.to(torch.float64)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(old)
    assert model[0].weight.dtype == torch.float64
    w.close()


def test_a_slow_writer_thins_histograms_and_never_drops_a_scalar(monkeypatch, tmp_path, caplog) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gradwatch.sinks import tensorboard as tb

    monkeypatch.setattr(tb, "MAX_PENDING", 3)
    real = tb.TensorBoardSink._write_step

    def slow(self, *args):  # a slow (network) disk: 20 ms per step written
        time.sleep(0.02)
        real(self, *args)

    monkeypatch.setattr(tb.TensorBoardSink, "_write_step", slow)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with caplog.at_level(logging.WARNING, logger="gradwatch"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w = gw.watch(model, opt, logdir=str(tmp_path), histogram_every=1)
        for _ in range(30):
            opt.zero_grad()
            nn.functional.mse_loss(model(X), Y).backward()
            opt.step()
        w.close()
    board = w._recorder.board
    assert board.thinned > 0 and board.waited >= board.thinned
    assert sum("steps behind" in str(c.message) for c in caught) == 1  # one warning
    closing = f"{board.thinned} step(s) were written without their histograms"
    assert any(closing in r.getMessage() for r in caplog.records)
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0}).Reload()
    assert [e.step for e in events.Scalars("grad_norm/total")] == list(range(30))  # every scalar kept
    assert len(events.Histograms("gradients/0.weight")) == 30 - board.thinned


def test_lbfgs_closure_that_forgets_zero_grad() -> None:
    model = _mlp()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=3)

    def closure():
        loss = nn.functional.mse_loss(model(X), Y)  # BUG: no opt.zero_grad()
        loss.backward()
        return loss

    with gw.watch(model, opt, on_finding="ignore") as w:
        for _ in range(3):
            opt.step(closure)
    assert _kinds(w) == {"missing_zero_grad"}
