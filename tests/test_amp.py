"""Mixed precision: autocast (bf16, fp16 on the CPU) and torch.amp.GradScaler, against norms by hand."""

from __future__ import annotations

import pytest
import torch
from conftest import half_dtypes, needs_amp_gradscaler
from torch import nn

import gradwatch as gw

pytestmark = needs_amp_gradscaler


def _setup(hidden: int = 32, lr: float = 0.01):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 1))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 8, generator=g), torch.randn(16, 1, generator=g)) for _ in range(4)]
    return model, opt, batches


@pytest.mark.parametrize("dtype", half_dtypes(torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("explicit_unscale", [True, False], ids=["unscale_-then-step", "step-unscales"])
def test_recorded_gradients_are_the_unscaled_ones(dtype: torch.dtype, explicit_unscale: bool) -> None:
    model, opt, batches = _setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    reference = []
    with gw.watch(model, opt) as w:
        for x, y in batches:
            opt.zero_grad()
            with torch.autocast("cpu", dtype=dtype):
                loss = nn.functional.mse_loss(model(x).float(), y)
            scaler.scale(loss).backward()
            scale = scaler.get_scale()
            # the reference: the scaled gradients divided by the scale by hand, in float64
            reference.append({n: float(p.grad.double().norm() / scale) for n, p in model.named_parameters()})
            if explicit_unscale:
                scaler.unscale_(opt)
            scaler.step(opt)  # unscales first when unscale_ was not called
            scaler.update()
    assert [r.step for r in w.history] == [0, 1, 2, 3]
    for record, ref in zip(w.history, reference):
        for name, norm in ref.items():
            # unscale_ multiplies by 1/scale in float32: one rounding per entry
            assert record.params[name].grad_norm == pytest.approx(norm, rel=1e-6), name
    assert w.findings == [] and w.skipped_steps == []


# 32: the small-model path (every gradient in one deferred flag); 9000: tensors of 72000 entries, above
# the small-tensor limit (their flag is deferred too where the compiled pass reads them). set_to_none=False
# zeroes the gradients in place before the flag could be read late: it is read at unscale_.
@pytest.mark.parametrize("hidden", [32, 9000])
@pytest.mark.parametrize("set_to_none", [True, False])
def test_steps_the_scaler_skips_are_marked_skipped_not_reported(hidden: int, set_to_none: bool) -> None:
    model, opt, batches = _setup(hidden, lr=0.01 * 32 / hidden)  # (the same update size)
    # a scale near float32's largest value: the scaled backward overflows, the scaler skips
    # optimizer.step() and backs its scale off to about 270, where the gradients fit
    scaler = torch.amp.GradScaler("cpu", init_scale=3.4e38, backoff_factor=2.0**-120)
    before = [p.detach().clone() for p in model.parameters()]
    with gw.watch(model, opt) as w:
        stepped = []
        for x, y in batches:
            opt.zero_grad(set_to_none=set_to_none)
            loss = nn.functional.mse_loss(
                model(x), 100 * y
            )  # gradients above 1: their scaled values overflow
            scaler.scale(loss).backward()
            scale = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            stepped.append(scaler.get_scale() >= scale)  # the scale only drops on a skipped step
    skipped = stepped.count(False)
    assert skipped >= 1 and stepped[-1]  # some skipped, the last one stepped
    assert len(w.skipped_steps) == skipped
    assert w.findings == []  # an AMP skip is not a discarded gradient
    assert "skipped because the gradients were not finite" in w.report()
    assert len(w.history) == stepped.count(True)  # a skipped iteration merges into the next step
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def _amp_loop(order: str, steps: int = 3, enabled: bool = True, micro: int = 1) -> gw.Watcher:
    """Train with a GradScaler; ``order`` says what happens between backward() and scaler.step()."""
    model, opt, batches = _setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, enabled=enabled)
    with gw.watch(model, opt) as w:
        for x, y in batches[:steps]:
            opt.zero_grad()
            for k in range(micro):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = nn.functional.mse_loss(model(x[k::micro]).float(), y[k::micro]) / micro
                scaler.scale(loss).backward()
            if order == "unscale_-clip":  # PyTorch's recipe
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            elif order == "clip-step":  # step() unscales after the clip
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            elif order == "clip-unscale_":
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.unscale_(opt)
            elif order == "clip_value-step":
                nn.utils.clip_grad_value_(model[0].parameters(), 0.5)
            scaler.step(opt)
            scaler.update()
    return w


@pytest.mark.parametrize("order", ["clip-step", "clip-unscale_", "clip_value-step"])
def test_clipping_before_unscale_is_reported_once_naming_the_clipped_parameters(order: str) -> None:
    w = _amp_loop(order)
    assert [(f.kind, f.step) for f in w.findings] == [("clip_before_unscale", 0)]
    want = (
        ("0.weight", "0.bias") if order == "clip_value-step" else ("0.weight", "0.bias", "2.weight", "2.bias")
    )
    assert w.findings[0].params == want
    assert "scaler.unscale_(optimizer); clip_grad_norm_" in w.findings[0].message


@pytest.mark.parametrize(
    ("order", "enabled", "micro"),
    [("unscale_-clip", True, 1), ("none", True, 1), ("unscale_-clip", True, 2), ("clip-step", False, 1)],
    ids=["recipe", "no-clip", "recipe-accumulating", "scaler-disabled"],
)
def test_unscale_then_clip_and_a_disabled_scaler_are_silent(order: str, enabled: bool, micro: int) -> None:
    w = _amp_loop(order, enabled=enabled, micro=micro)
    assert w.findings == []
    assert len(w.history) == 3


def test_the_scaler_class_is_restored_at_close() -> None:
    original = torch.amp.GradScaler.__dict__["unscale_"]
    model, opt, _ = _setup()
    w = gw.watch(model, opt)
    w2 = gw.watch(model, opt, on_finding="ignore")
    assert torch.amp.GradScaler.__dict__["unscale_"] is not original  # wrapped while watched
    w.close()
    assert torch.amp.GradScaler.__dict__["unscale_"] is not original  # the second watcher still asks
    w2.close()
    assert torch.amp.GradScaler.__dict__["unscale_"] is original
    assert "unscale_" not in vars(torch.amp.GradScaler("cpu"))  # nothing stored on instances
