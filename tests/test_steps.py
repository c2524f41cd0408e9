"""Step boundaries from every source: optimizer steps, accumulation, GAN, LBFGS, manual updates, marks."""

from __future__ import annotations

import pytest
import torch
from conftest import needs_amp_gradscaler
from torch import nn

import gradwatch as gw


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _data(n: int = 16):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)


def _loss(model, x, y):
    return ((model(x) - y) ** 2).mean()


@pytest.mark.parametrize("where", ["before_backward", "after_step"])
def test_plain_loop_one_step_per_optimizer_step(where: str) -> None:
    model, (x, y) = _mlp(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    norms = []
    with gw.watch(model, opt) as w:
        for _ in range(7):
            if where == "before_backward":
                opt.zero_grad()
            _loss(model, x, y).backward()
            norms.append(model[0].weight.grad.norm().item())
            opt.step()
            if where == "after_step":
                opt.zero_grad()
    assert [r.step for r in w.history] == list(range(7))
    assert [r.params["0.weight"].grad_norm for r in w.history] == pytest.approx(norms, rel=1e-6)


def test_accumulation_over_four_micro_batches_is_one_step() -> None:
    model, (x, y) = _mlp(), _data(32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = []
    with gw.watch(model, opt) as w:
        for _ in range(3):
            opt.zero_grad()
            for xb, yb in zip(x.chunk(4), y.chunk(4)):
                (_loss(model, xb, yb) / 4).backward()
            expected.append(model[2].weight.grad.norm().item())
            opt.step()
    assert len(w.history) == 3
    assert [r.params["2.weight"].grad_norm for r in w.history] == pytest.approx(expected, rel=1e-6)


def test_two_optimizers_after_one_backward_are_one_step() -> None:
    model, (x, y) = _mlp(), _data()
    opt_a = torch.optim.SGD(model[0].parameters(), lr=0.1)
    opt_b = torch.optim.Adam(model[2].parameters(), lr=0.01)
    with gw.watch(model, [opt_a, opt_b]) as w:
        for _ in range(4):
            opt_a.zero_grad()
            opt_b.zero_grad()
            _loss(model, x, y).backward()
            opt_a.step()
            opt_b.step()
    assert [r.step for r in w.history] == [0, 1, 2, 3]
    for r in w.history:  # both optimizers' updates are measured in the one step
        assert all(r.params[n].update_ratio and r.params[n].update_ratio > 0 for n in r.params)


def _gan(seed: int = 0):
    torch.manual_seed(seed)
    gan = nn.ModuleDict(
        {
            "G": nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2)),
            "D": nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1)),
        }
    )
    return gan, torch.optim.Adam(gan["G"].parameters(), 1e-3), torch.optim.Adam(gan["D"].parameters(), 1e-3)


def _gan_iteration(gan, opt_g, opt_d, real):
    fake = gan["G"](torch.randn(8, 2))
    opt_d.zero_grad()
    d_loss = gan["D"](real).mean() - gan["D"](fake.detach()).mean()
    d_loss.backward()
    d_grad = gan["D"][0].weight.grad.clone()
    opt_d.step()
    opt_g.zero_grad()
    g_loss = -gan["D"](fake).mean()
    g_loss.backward()
    g_grad = gan["G"][0].weight.grad.clone()
    opt_g.step()
    return g_loss, d_grad, g_grad


def test_gan_without_marks_counts_each_optimizer_step() -> None:
    gan, opt_g, opt_d = _gan()
    real = torch.randn(8, 2)
    with gw.watch(gan, [opt_g, opt_d]) as w:
        for _ in range(3):
            _gan_iteration(gan, opt_g, opt_d, real)
    assert len(w.history) == 6  # D step and G step follow separate backward passes


def test_gan_with_decorator_is_one_step_per_iteration() -> None:
    gan, opt_g, opt_d = _gan()
    real = torch.randn(8, 2)
    w = gw.Watcher(gan, [opt_g, opt_d])
    seen = []

    @w.train_step
    def train_step():
        loss, d_grad, g_grad = _gan_iteration(gan, opt_g, opt_d, real)
        seen.append((d_grad, g_grad, loss.item()))
        return loss

    for _ in range(3):
        train_step()
    w.close()
    assert [r.step for r in w.history] == [0, 1, 2]
    for r, (d_grad, g_grad, loss) in zip(w.history, seen):
        # each network's gradient is the one its own optimizer used
        assert r.params["D.0.weight"].grad_norm == pytest.approx(d_grad.norm().item(), rel=1e-6)
        assert r.params["G.0.weight"].grad_norm == pytest.approx(g_grad.norm().item(), rel=1e-6)
        assert r.loss == pytest.approx(loss)


def test_explicit_step_marks_boundaries() -> None:
    gan, opt_g, opt_d = _gan()
    real = torch.randn(8, 2)
    with gw.watch(gan, [opt_g, opt_d]) as w:
        for _ in range(4):
            _gan_iteration(gan, opt_g, opt_d, real)
            w.step()
    # the first iteration is counted per optimizer until the first mark is seen, then one per mark
    assert [r.step for r in w.history] == [0, 1, 2, 3, 4]


def test_explicit_step_without_optimizer() -> None:
    model, (x, y) = _mlp(), _data()
    with gw.watch(model) as w:
        for _ in range(3):
            model.zero_grad()
            _loss(model, x, y).backward()
            w.step()
        w.step()  # a mark with no backward since the last one is not a step
    assert [r.step for r in w.history] == [0, 1, 2]


def test_lbfgs_closure_is_one_step_per_call() -> None:
    model, (x, y) = _mlp(), _data()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)
    last_grad = {}

    def closure():
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        last_grad["g"] = model[0].weight.grad.clone()
        return loss

    with gw.watch(model, opt) as w:
        for _ in range(3):
            opt.step(closure)
            last_grad[len(last_grad)] = last_grad["g"]
    assert [r.step for r in w.history] == [0, 1, 2]
    for k, r in enumerate(w.history):  # the gradient of the last closure evaluation inside step()
        assert r.params["0.weight"].grad_norm == pytest.approx(last_grad[k + 1].norm().item(), rel=1e-6)


def test_autograd_grad_calls_are_not_steps() -> None:
    model, (x, y) = _mlp(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt) as w:
        for _ in range(3):
            opt.zero_grad()
            xr = x.clone().requires_grad_(True)
            loss = _loss(model, xr, y)
            (gx,) = torch.autograd.grad(loss, xr, create_graph=True)  # gradient penalty
            penalty = gx.pow(2).sum()
            torch.autograd.grad(penalty, list(model.parameters()), retain_graph=True)
            (loss + 0.1 * penalty).backward()
            opt.step()
    assert len(w.history) == 3


def test_manual_updates_without_optimizer_are_steps() -> None:
    torch.manual_seed(0)
    a = torch.randn(3, requires_grad=True)
    with gw.watch([a]) as w:
        for _ in range(4):
            (a * a).sum().backward()
            with torch.no_grad():
                a -= 0.1 * a.grad
            a.grad = None
    assert [r.step for r in w.history] == [0, 1, 2, 3]
    assert w.names == ("0",)
    assert all(r.params["0"].update_ratio == pytest.approx(0.2, rel=1e-5) for r in w.history)


def test_manual_accumulation_without_optimizer_is_one_step() -> None:
    torch.manual_seed(0)
    a = torch.randn(3, requires_grad=True)
    with gw.watch({"a": a}) as w:
        for _ in range(2):
            for _ in range(3):
                (a * a).sum().backward()  # three backward passes, no update between
            g = a.grad.clone()
            with torch.no_grad():
                a -= 0.01 * a.grad
            a.grad.zero_()
    assert len(w.history) == 2
    assert w.history[-1].params["a"].grad_norm == pytest.approx(g.norm().item(), rel=1e-6)


def test_every_schedule_and_start_step() -> None:
    model, (x, y) = _mlp(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt, every=3, start_step=10) as w:
        for _ in range(8):
            opt.zero_grad()
            _loss(model, x, y).backward()
            opt.step()
    # schedules see absolute step numbers, so a resumed run keeps its cadence
    assert [r.step for r in w.history] == [12, 15]
    assert w.current_step == 18


def test_max_history_bounds_the_history() -> None:
    model, (x, y) = _mlp(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gw.watch(model, opt, max_history=5) as w:
        for _ in range(12):
            opt.zero_grad()
            _loss(model, x, y).backward()
            opt.step()
    assert [r.step for r in w.history] == [7, 8, 9, 10, 11]
    with pytest.raises(KeyError, match="step 2 is not in the history"):
        w.history.by_step(2)


def test_has_grad_false_for_unused_branch() -> None:
    torch.manual_seed(0)
    model = nn.ModuleDict({"a": nn.Linear(2, 1), "b": nn.Linear(2, 1)})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt) as w:
        for k in range(4):
            opt.zero_grad(set_to_none=True)
            branch = model["a"] if k % 2 == 0 else model["b"]
            branch(torch.randn(3, 2)).sum().backward()
            opt.step()
    got = [(r.params["a.weight"].has_grad, r.params["b.weight"].has_grad) for r in w.history]
    assert got == [(True, False), (False, True), (True, False), (False, True)]
    assert w.history[0].params["b.weight"].grad_norm == 0.0
    assert w.history[0].params["b.weight"].zero_fraction == 1.0


@needs_amp_gradscaler
def test_amp_gradscaler_steps_are_read_unscaled() -> None:
    model, (x, y) = _mlp(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    with gw.watch(model, opt) as w:
        for _ in range(3):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = _loss(model, x, y)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            g = model[0].weight.grad.norm().item()
            scaler.step(opt)
            scaler.update()
    assert len(w.history) == 3
    assert w.history[-1].params["0.weight"].grad_norm == pytest.approx(g, rel=1e-6)


@pytest.mark.parametrize("mode", ["optimizer", "in-place update", "w.step()"])
def test_a_loss_recorded_before_backward_belongs_to_that_step(mode: str) -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    losses = []
    with gw.watch(model, opt if mode == "optimizer" else None) as w:
        for _ in range(4):
            model.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            w.record_loss(loss)  # before backward(): the common place
            losses.append(float(loss))
            loss.backward()
            if mode == "optimizer":
                opt.step()
            else:
                with torch.no_grad():
                    for p in model.parameters():
                        p -= 0.1 * p.grad
                if mode == "w.step()":
                    w.step()
    assert [r.step for r in w.history] == [0, 1, 2, 3]
    assert [r.loss for r in w.history] == pytest.approx(losses, rel=1e-6)
