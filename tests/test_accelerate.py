"""gradwatch with a real accelerate ``Accelerator`` (CPU): prepared objects, ``accumulate()``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradwatch as gw

accelerate = pytest.importorskip("accelerate")


def _setup(accumulation: int):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 6, generator=g)
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8
    )
    accelerator = accelerate.Accelerator(gradient_accumulation_steps=accumulation, cpu=True)
    return accelerator, *accelerator.prepare(model, opt, data)


@pytest.mark.parametrize("accumulation", [1, 4])
def test_accumulate_steps_are_one_record_each_with_the_summed_gradient(accumulation: int) -> None:
    accelerator, model, opt, data = _setup(accumulation)
    assert type(opt).__name__ == "AcceleratedOptimizer"  # gradwatch unwraps it to the torch optimizer
    reference = []
    with gw.watch(model, opt) as w:
        for x, y in data:
            with accelerator.accumulate(model):
                loss = nn.functional.mse_loss(model(x), y)
                accelerator.backward(loss)
                if accelerator.sync_gradients:  # the gradients the optimizer is about to use
                    reference.append({n: float(p.grad.double().norm()) for n, p in model.named_parameters()})
                opt.step()  # (only steps on sync steps)
                opt.zero_grad()  # (only zeroes on sync steps)
    steps = len(data) // accumulation
    assert len(reference) == steps
    assert [r.step for r in w.history] == list(range(steps))
    for record, ref in zip(w.history, reference):
        for name, norm in ref.items():
            assert record.params[name].grad_norm == pytest.approx(norm, rel=1e-6)
        assert all(s.update_ratio is not None and s.update_ratio > 0 for s in record.params.values())
    assert w.findings == []


def test_zeroing_every_micro_batch_around_accumulate_is_found() -> None:
    # the bug: zero_grad on the unwrapped torch optimizer (or the model) inside the accumulation window
    accelerator, model, opt, data = _setup(4)
    with gw.watch(model, opt, on_finding="ignore") as w:
        for x, y in data:
            with accelerator.accumulate(model):
                model.zero_grad()  # bypasses the accumulation-aware wrapper
                accelerator.backward(nn.functional.mse_loss(model(x), y))
                opt.step()
    assert "discarded_grad" in {f.kind for f in w.findings}
