"""The accelerator statistics engine (Triton multi-tensor kernels), run on CPU tensors by Triton's
interpreter.

``TRITON_INTERPRET=1`` (set in conftest.py on machines without CUDA) makes Triton run the same kernels
on CPU tensors; ``fused.force_on_cpu`` sends CPU tensors down the accelerator paths. Values are compared
with float64 references (plain torch) and with ``torch.histc``; the CPU proxies check that a recorded step
on that path dispatches the same number of torch ops for 10 and 1,000 parameter tensors, and never reads
a tensor value on the host inside the step.
"""

from __future__ import annotations

import collections
import os
import sys
import threading

import pytest
import torch
from conftest import TRITON_INTERPRETER
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import gradwatch as gw
from gradwatch import stats
from gradwatch.stats import fused, reference

pytestmark = pytest.mark.skipif(
    not fused.triton_available() or os.environ.get("TRITON_INTERPRET") != "1" or not TRITON_INTERPRETER,
    reason="needs Triton 3+ (the dev extra installs it), TRITON_INTERPRET=1 (conftest sets it without CUDA)",
)


@pytest.fixture
def on_device_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused, "force_on_cpu", True)


def _tensors() -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [
        torch.randn(5000) * 1e-30,  # squares underflow float32
        torch.randn(3, 7) * 1e30,  # squares overflow float32
        torch.tensor([1.0, float("nan"), 0.0, float("inf")]),
        torch.tensor([-float("inf"), 2.0, float("inf")]),
        torch.zeros(10),
        torch.full((33,), 2.5),
        torch.randn(100, 100) + 40.0,  # mean dominates the spread
        torch.randn(2, 3, 5, 4).to(memory_format=torch.channels_last),
        torch.randn(9000),  # several blocks
    ]


def _ref(t: torch.Tensor, stride: int) -> list[float]:
    """The reference columns, then the finite minimum and maximum (the kernel's extra columns)."""
    g = t.double().reshape(-1)
    fin = g[torch.isfinite(g)]
    lo = fin.min().item() if fin.numel() else float("inf")
    hi = fin.max().item() if fin.numel() else float("-inf")
    return [*reference.raw_stats(t, stride), lo, hi]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_grad_stats_match_float64_reference(dtype: torch.dtype) -> None:
    tensors = [t.to(dtype) for t in _tensors()]
    strides = [1, 1, 1, 1, 1, 1, 7, 3, 11]
    ts = [fused.readable(t) for t in tensors]
    raw, extra = fused.grad_stats(ts, strides)
    for k, (t, s) in enumerate(zip(tensors, strides)):
        want = _ref(t, s)
        got = raw[k].tolist() + extra[k, :2].tolist()
        for field, (a, b) in enumerate(zip(got, want)):
            if b != b:
                assert a != a, (k, field)
            elif field == 6:  # centred norm: float64 cancellation, (mean/std)^2 * 1e-16
                assert a == pytest.approx(b, rel=1e-9, abs=1e-300), (k, field)
            else:
                assert a == pytest.approx(b, rel=1e-12, abs=0), (k, field, a, b)


def test_histograms_match_histc(on_device_path: None) -> None:
    tensors = _tensors()
    got = stats.histograms(tensors, 30)
    for t, row in zip(tensors, got):
        x = t[torch.isfinite(t)]
        counts = row[-30:]
        assert row[2].item() == x.numel()
        if x.numel() == 0:
            continue
        lo, hi = x.min().item(), x.max().item()
        if lo == hi:
            assert counts[15].item() == x.numel()
            continue
        assert row[0].item() == lo and row[1].item() == hi
        torch.testing.assert_close(counts, torch.histc(x, 30, lo, hi).double(), rtol=0, atol=0)
        assert row[3].item() == pytest.approx(x.double().sum().item(), rel=1e-9, abs=1e-300)


def _mlp(layers: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(16, 16) for _ in range(layers)])
    return model, torch.optim.SGD(model.parameters(), lr=0.01)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, **kw) -> tuple[gw.Watcher, list[dict]]:
    grads = []
    with gw.watch(model, opt, on_finding="ignore", **kw) as w:
        for k in range(steps):
            torch.manual_seed(100 + k)
            opt.zero_grad()
            model(torch.randn(4, 16)).pow(2).mean().backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
            opt.step()
    return w, grads


def test_watcher_on_the_device_path_matches_the_cpu_path(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    cpu, _ = _train(*_mlp(6), 4, logdir=str(tmp_path / "cpu"), histogram_every=2)
    monkeypatch.setattr(fused, "force_on_cpu", True)
    dev, grads = _train(*_mlp(6), 4, logdir=str(tmp_path / "dev"), histogram_every=2)
    for a, b, g in zip(cpu.history, dev.history, grads):
        for name in a.params:
            ref = g[name].double()
            assert b.params[name].grad_norm == pytest.approx(ref.norm().item(), rel=1e-12)
            # float64 sums: the mean and spread are right to float64 rounding (the CPU path's float32
            # cascade sum is within 1e-5 of it)
            scale = ref.abs().max().item()
            assert b.params[name].grad_mean == pytest.approx(ref.mean().item(), rel=1e-9, abs=1e-12 * scale)
            assert b.params[name].grad_std == pytest.approx(ref.std(correction=0).item(), rel=1e-9)
            for field in (
                "grad_norm",
                "grad_max_abs",
                "zero_fraction",
                "update_ratio",
            ):
                assert getattr(b.params[name], field) == pytest.approx(
                    getattr(a.params[name], field), rel=1e-6, abs=1e-12
                ), (name, field)


class _Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def _ops_of_a_recorded_step(layers: int, watched: bool, monkeypatch: pytest.MonkeyPatch, tmp_path) -> tuple:
    model, opt = _mlp(layers)
    host_reads: list[str] = []
    me = threading.get_ident()
    for method in ("tolist", "item", "cpu", "__float__", "__bool__", "numpy"):
        real = getattr(torch.Tensor, method)

        def spy(self, *a, _real=real, _name=method, **k):
            # (Triton's interpreter itself copies kernel arguments to the host on Triton 3.0: not ours)
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if threading.get_ident() == me and counting[0] and not caller.startswith("triton"):
                host_reads.append(_name)
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, method, spy)
    counting = [False]
    # judging a record reads its host copy: on CUDA only once its copy has arrived (Event.query(), tested
    # in test_scale.py on a GPU); here every copy is "arrived", so judging waits for close
    from gradwatch.detectors.suite import DetectorSuite

    real_judge = DetectorSuite.judge
    monkeypatch.setattr(DetectorSuite, "judge", lambda self, final: real_judge(self, True) if final else [])
    w = (
        gw.watch(model, opt, on_finding="ignore", logdir=str(tmp_path / f"{layers}"), histogram_every=1)
        if watched
        else None
    )
    x = torch.randn(4, 16)

    def step() -> None:
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()

    for _ in range(2):  # plans and layouts are built at the first recorded steps
        step()
    counting[0] = True
    with _Ops() as mode:
        step()
        step()  # the second step seals the first
    counting[0] = False
    if w is not None:
        w.close()
        assert len(w.history) == 4
    return mode.ops, host_reads


@pytest.mark.slow  # about 3 minutes: Triton's interpreter runs the kernels of 1,000 tensors on the CPU
def test_a_recorded_step_dispatches_the_same_ops_for_10_and_1000_tensors(
    on_device_path, monkeypatch, tmp_path
):
    counts = {}
    for layers in (5, 500):
        watched, reads = _ops_of_a_recorded_step(layers, True, monkeypatch, tmp_path)
        plain, _ = _ops_of_a_recorded_step(layers, False, monkeypatch, tmp_path)
        counts[layers] = watched - plain
        assert not reads, f"values read on the host inside a step ({layers * 2} tensors): {reads}"
        assert not {op for op in counts[layers] if "_local_scalar_dense" in op}
    assert counts[5] == counts[500], (sum(counts[5].values()), sum(counts[500].values()))
    assert sum(counts[5].values()) > 0  # the statistics did dispatch work


def test_import_gradwatch_does_not_import_triton() -> None:
    import subprocess
    import sys

    code = "import sys, gradwatch; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_failing_kernel_falls_back_to_the_torch_path(on_device_path, monkeypatch) -> None:
    from gradwatch.stats import triton_kernels

    def fails(*args, **kwargs):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(triton_kernels, "grad_stats_partials", fails)
    monkeypatch.setattr(fused, "broken", None)
    _, grads = _train(*_mlp(3), 2)
    w, grads = _train(*_mlp(3), 2)
    assert fused.broken is not None and "no kernel image" in fused.broken
    for record, g in zip(w.history, grads):
        for name, grad in g.items():
            assert record.params[name].grad_norm == pytest.approx(grad.double().norm().item(), rel=1e-6)
