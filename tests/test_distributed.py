"""DistributedDataParallel with gloo, 2 processes spawned by the test (CPU).

Marked ``distributed``: CI runs them; ``./dev.sh test -m "not distributed"`` skips them locally.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import gradwatch as gw

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"),
]

WORLD = 2
STEPS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(8, 6, generator=g)
    return x, x.sum(1, keepdim=True) * (1 + rank)


def _model() -> nn.Module:
    torch.manual_seed(0)  # the same initial weights on every rank
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))


def _worker(rank: int, port: int, out: str, scenario: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    calls = {"n": 0}
    for name in ("all_reduce", "broadcast", "all_gather", "barrier", "reduce", "all_gather_object"):
        real = getattr(dist, name)

        def counted(*a, _real=real, **k):  # Python-level collectives issued while training
            calls["n"] += 1
            return _real(*a, **k)

        setattr(dist, name, counted)
    model = _model()
    if scenario == "fsdp":
        _fsdp(rank, model, out)
        return
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    reference_model = _model()
    result: dict = {"reference": [], "raised": None}
    w = gw.watch(
        model, opt, logdir=os.path.join(out, "tb"), on_finding="raise" if scenario == "raise" else "ignore"
    )
    try:
        for step in range(STEPS):
            if scenario != "raise":
                opt.zero_grad()
            x, y = _batch(rank, step)
            nn.functional.mse_loss(ddp(x), y).backward()
            # reference, without DDP: the mean over ranks of each rank's own batch gradient
            reference_model.load_state_dict(model.state_dict())
            grads = []
            for r in range(WORLD):
                reference_model.zero_grad()
                xr, yr = _batch(r, step)
                nn.functional.mse_loss(reference_model(xr), yr).backward()
                grads.append({n: p.grad.clone() for n, p in reference_model.named_parameters()})
            result["reference"].append(
                {n: float(sum(g[n] for g in grads).double().div(WORLD).norm()) for n in grads[0]}
            )
            opt.step()
    except gw.GradientError as err:
        result["raised"] = err.finding.kind
    w.close()
    result["collectives"] = calls["n"]
    result["norms"] = [{n: s.grad_norm for n, s in r.params.items()} for r in w.history]
    result["findings"] = [(f.kind, f.step, list(f.params)) for f in w.findings]
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


def _fsdp(rank: int, model: nn.Module, out: str) -> None:
    """FSDP2 on this CPU: gradwatch refuses the sharded (DTensor) parameters at watch() with a clear error."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # older torch: the composable API's former home
        from torch.distributed._composable.fsdp import fully_shard
    fully_shard(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    try:
        gw.watch(model, opt)
        message = None
    except gw.GradWatchError as err:
        message = str(err)
    x, y = _batch(rank, 0)  # training goes on without gradwatch
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"error": message, "hooks": [p._post_accumulate_grad_hooks for p in model.parameters()]}, f)
    dist.destroy_process_group()


def _run(tmp_path: pathlib.Path, scenario: str, timeout: float = 120.0) -> list[dict]:
    ctx = mp.start_processes(
        _worker, args=(_free_port(), str(tmp_path), scenario), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:  # a hang: fail instead of waiting forever
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {WORLD} processes did not finish within {timeout:.0f} s (a hang)")
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]


def test_recorded_norms_are_the_all_reduced_gradients_on_every_rank(tmp_path: pathlib.Path) -> None:
    ranks = _run(tmp_path, "healthy")
    for res in ranks:
        assert len(res["norms"]) == STEPS
        for got, want in zip(res["norms"], res["reference"]):
            assert set(got) == set(want)
            for name in want:
                assert got[name] == pytest.approx(want[name], rel=1e-5), name
        assert res["findings"] == []
        assert res["collectives"] == 0  # gradwatch issues no collective of its own
    assert ranks[0]["norms"] == ranks[1]["norms"]  # global gradients: the same on every rank
    # only global rank 0 writes TensorBoard events
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1


def test_detectors_agree_across_ranks_and_raising_on_both_does_not_hang(tmp_path: pathlib.Path) -> None:
    ranks = _run(tmp_path, "raise")  # no zero_grad, on_finding="raise"
    assert [r["raised"] for r in ranks] == ["missing_zero_grad", "missing_zero_grad"]
    assert ranks[0]["findings"] == ranks[1]["findings"]
    assert ranks[0]["findings"][0][:2] == ["missing_zero_grad", 1]


def test_fsdp2_sharded_parameters_are_refused_with_a_clear_error(tmp_path: pathlib.Path) -> None:
    ranks = _run(tmp_path, "fsdp")
    for res in ranks:
        assert res["error"] is not None and "'0.weight' is a DTensor" in res["error"]
        assert "DistributedDataParallel" in res["error"]
        assert res["hooks"] == [None] * 4  # nothing was registered
