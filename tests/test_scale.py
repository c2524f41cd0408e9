"""Scale: many parameter tensors and a 100 M-parameter model attach quickly; CUDA steps stay sync-free."""

from __future__ import annotations

import sys
import time

import pytest
import torch
from conftest import REPO
from torch import nn

import gradwatch as gw


def _timed_attach(model, opt):
    t0 = time.perf_counter()
    w = gw.watch(model, opt, on_finding="ignore")
    return w, time.perf_counter() - t0


def test_thousand_tensors_attach_fast_and_record() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(8, 8) for _ in range(500)])  # 1000 parameter tensors
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    w, seconds = _timed_attach(model, opt)
    assert len(w.names) == 1000
    assert seconds < 1.0, f"attach took {seconds:.2f} s"
    x = torch.randn(4, 8)
    for _ in range(2):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    w.close()
    assert len(w.history) == 2 and len(w.history[-1].params) == 1000


def test_hundred_million_parameters_attach_fast() -> None:
    model = nn.Linear(10_000, 10_000)  # 100 M float32 parameters (400 MB)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    w, seconds = _timed_attach(model, opt)
    w.close()
    assert seconds < 1.0, f"attach took {seconds:.2f} s"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_steps_that_are_not_written_out_never_synchronise() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(128, 64, device="cuda")
    y = torch.randint(0, 10, (128,), device="cuda")
    with gw.watch(model, opt, every=10, on_finding="ignore") as w:
        for k in range(30):
            recorded = k % 10 == 0
            torch.cuda.set_sync_debug_mode("warn" if recorded else "error")
            try:
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
    assert [r.step for r in w.history] == [0, 10, 20]


def test_overhead_benchmark_runs(tmp_path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import overhead
    finally:
        sys.path.pop(0)
    out = overhead.main(
        ["--models", "digits", "--steps", "2", "--warmup", "1", "--json", str(tmp_path / "o.json")]
    )
    variants = out["models"]["digits"]["variants"]
    assert set(variants) == set(overhead.VARIANTS)
    assert variants["unwatched"]["ratio"] == 1.0
    assert (tmp_path / "o.json").exists()
