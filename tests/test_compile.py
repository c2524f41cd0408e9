"""torch.compile (CPU inductor): a compiled model and a compiled train step, asserted as in eager mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradwatch as gw

dynamo = pytest.importorskip("torch._dynamo")


@pytest.fixture(autouse=True)
def fresh_compiler():
    dynamo.reset()
    yield
    dynamo.reset()


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g)) for _ in range(5)]
    return model, opt, batches


def _grad_norms(model: nn.Module) -> dict[str, float]:
    return {n: float(p.grad.double().norm()) for n, p in model.named_parameters()}


def test_a_compiled_model_is_recorded_as_in_eager_mode() -> None:
    model, opt, batches = _setup()
    compiled = torch.compile(model)
    reference = []
    with gw.watch(model, opt) as w:
        for x, y in batches:
            opt.zero_grad()
            nn.functional.mse_loss(compiled(x), y).backward()
            reference.append(_grad_norms(model))  # plain autograd, read before the update
            opt.step()
    assert [r.step for r in w.history] == list(range(len(batches)))
    for record, ref in zip(w.history, reference):
        for name, norm in ref.items():
            assert record.params[name].grad_norm == pytest.approx(norm, rel=1e-6)
        assert all(s.update_ratio is not None and s.update_ratio > 0 for s in record.params.values())
    assert w.findings == []


def _train_step(model, opt, zero_grad: bool = True):
    def step(x, y):
        if zero_grad:
            opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def test_a_compiled_train_step_is_recorded_as_in_eager_mode() -> None:
    model, opt, batches = _setup()
    step = torch.compile(_train_step(model, opt))
    reference = []
    with gw.watch(model, opt) as w:
        for x, y in batches:
            step(x, y)
            reference.append(_grad_norms(model))  # the gradients the optimizer just used
    assert [r.step for r in w.history] == list(range(len(batches)))
    for record, ref in zip(w.history, reference):
        for name, norm in ref.items():
            assert record.params[name].grad_norm == pytest.approx(norm, rel=1e-6)
    assert w.findings == []


def test_a_compiled_train_step_without_zero_grad_is_found() -> None:
    model, opt, batches = _setup()
    step = torch.compile(_train_step(model, opt, zero_grad=False))
    with gw.watch(model, opt, on_finding="ignore") as w:
        for x, y in batches:
            step(x, y)
    assert [f.kind for f in w.findings] == ["missing_zero_grad"]
    assert w.findings[0].step == 1


def test_watching_adds_no_graph_break_to_a_compiled_train_step() -> None:
    model, opt, batches = _setup()
    x, y = batches[0]
    plain = dynamo.explain(_train_step(model, opt))(x, y)
    dynamo.reset()
    with gw.watch(model, opt, on_finding="ignore"):
        watched = dynamo.explain(_train_step(model, opt))(x, y)
        dynamo.reset()
        watched_model = dynamo.explain(model)(x)
    assert watched.graph_break_count == plain.graph_break_count  # (backward() itself is one)
    assert [str(b.reason).splitlines()[0] for b in watched.break_reasons] == [
        str(b.reason).splitlines()[0] for b in plain.break_reasons
    ]
    assert watched_model.graph_break_count == 0


def test_watching_without_an_optimizer_or_compile_does_not_import_the_compiler() -> None:
    import subprocess
    import sys

    probe = (
        "import sys, torch, gradwatch as gw\n"
        "w = gw.watch({'w': torch.zeros(3, requires_grad=True)})\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "False"  # importing it costs about a second at attach
