"""DistributedDataParallel and FSDP2 (fully_shard) with gloo, 2 processes spawned by the test (CPU).

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
    if scenario.startswith("fsdp"):
        _fsdp(rank, out, scenario)
        return
    if scenario == "mesh_2d":
        _mesh_2d(rank, out)
        return
    if scenario.startswith("amp"):
        _amp(rank, out, scenario)
        return
    model = _model()
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    reference_model = _model()
    result: dict = {"reference": [], "raised": None}
    w = gw.watch(
        model, opt, logdir=os.path.join(out, "tb"), on_finding="raise" if scenario == "raise" else "ignore"
    )
    import signal

    from gradwatch import watcher

    result["sigterm_ours"] = signal.getsignal(signal.SIGTERM) is watcher._on_sigterm
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


def _fsdp_model() -> nn.Module:
    torch.manual_seed(0)
    # 41 rows: uneven shards (21 + 20); 41 x 47 = 1927 entries: sampled (stride > 1); ReLU: zero gradients
    return nn.Sequential(nn.Linear(6, 47), nn.ReLU(), nn.Linear(47, 41), nn.Tanh(), nn.Linear(41, 1))


def _sample(t: torch.Tensor, stride: int) -> torch.Tensor:
    """The entries each rank's shard samples (dim-0 chunks, ``flat[::stride]`` of each), together."""
    return torch.cat([c.reshape(-1)[::stride] for c in torch.chunk(t.detach().double(), WORLD, 0)])


def _fsdp(rank: int, out: str, scenario: str) -> None:
    """FSDP2 (fully_shard on a 1-D gloo mesh): whole-tensor statistics on every rank, one gather a step."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # older torch: the composable API's former home
        from torch.distributed._composable.fsdp import fully_shard
    gathers = {"n": 0}
    real = dist.all_gather

    def counted(*a, **k):
        gathers["n"] += 1
        return real(*a, **k)

    dist.all_gather = counted
    model = _fsdp_model()
    fully_shard(model[2])
    fully_shard(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    reference = _fsdp_model()
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)
    if scenario == "fsdp_nan":  # every other step, TensorBoard, clipping, a NaN from rank 1's batch
        w = gw.watch(model, opt, on_finding="ignore", every=2, logdir=os.path.join(out, "tb"))
        for step in range(STEPS):
            opt.zero_grad()
            x, y = _batch(rank, step)
            if step == 2 and rank == 1:
                x[0, 0] = float("nan")
            nn.functional.mse_loss(model(x), y).backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        w.close()
        result = {
            "steps": [r.step for r in w.history],
            "findings": [(f.kind, f.step, list(f.params)) for f in w.findings],
            "gathers": gathers["n"],
        }
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
        dist.destroy_process_group()
        return
    w = gw.watch(model, opt, on_finding="ignore")
    stride = gw.stats.sample_stride((41, 47))
    expected: list[dict] = []
    for step in range(STEPS):
        if scenario == "fsdp":
            opt.zero_grad()
            ref_opt.zero_grad()
        elif scenario == "fsdp_zeroed":
            opt.zero_grad(set_to_none=False)
            ref_opt.zero_grad(set_to_none=False)
        x, y = _batch(rank, step)
        nn.functional.mse_loss(model(x), y).backward()
        # reference, unsharded: the same update from the mean over ranks of each rank's batch gradient
        for r in range(WORLD):
            xr, yr = _batch(r, step)
            (nn.functional.mse_loss(reference(xr), yr) / WORLD).backward()
        row = {}
        before = {n: p.detach().double().clone() for n, p in reference.named_parameters()}
        for n, p in reference.named_parameters():
            g = p.grad.double()
            sampled = p.numel() > gw.stats.SAMPLE_SIZE
            gs = _sample(g, stride) if sampled else g.reshape(-1)
            ws = _sample(p, stride) if sampled else p.detach().double().reshape(-1)
            row[n] = {
                "grad_norm": float(g.norm()),
                "grad_max_abs": float(g.abs().max()),
                "grad_mean": float(g.mean()),
                "grad_std": float(g.std(correction=0)),
                "zero_fraction": float((gs == 0).double().mean()),
                "param_norm": float(ws.norm() * (p.numel() / ws.numel()) ** 0.5),
                "_stride": stride if sampled else 1,
            }
        opt.step()
        ref_opt.step()
        for n, p in reference.named_parameters():
            st = row[n].pop("_stride")
            delta = p.detach().double() - before[n]
            ds = _sample(delta, st) if st > 1 else delta.reshape(-1)
            ws = _sample(before[n], st) if st > 1 else before[n].reshape(-1)
            row[n]["update_ratio"] = float(ds.norm() / ws.norm())
        expected.append(row)
    w.close()
    fields = list(expected[0]["0.weight"])
    result = {
        "expected": expected,
        "got": [{n: {f: getattr(s, f) for f in fields} for n, s in r.params.items()} for r in w.history],
        "findings": [(f.kind, f.step, list(f.params)) for f in w.findings],
        "gathers": gathers["n"],
        "hooks": [p._post_accumulate_grad_hooks for p in model.parameters()],
    }
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


def _amp(rank: int, out: str, scenario: str) -> None:
    """DDP with a GradScaler: DDP writes the reduced gradients at the end of backward(), then a clip."""
    model = _model()
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    w = gw.watch(model, opt, on_finding="ignore")
    for step in range(STEPS):
        opt.zero_grad()
        x, y = _batch(rank, step)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.mse_loss(ddp(x).float(), y)
        scaler.scale(loss).backward()
        if scenario == "amp_recipe":
            scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        scaler.step(opt)
        scaler.update()
    w.close()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"findings": [(f.kind, f.step, list(f.params)) for f in w.findings]}, f)
    dist.destroy_process_group()


def _mesh_2d(rank: int, out: str) -> None:
    """A parameter sharded on a 2-D mesh (HSDP-like): refused at watch() with a clear error."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (1, WORLD))
    model = _model()
    model[0].weight = nn.Parameter(distribute_tensor(model[0].weight.detach(), mesh, [Replicate(), Shard(0)]))
    try:
        gw.watch(model)
        message = None
    except gw.GradWatchError as err:
        message = str(err)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"error": message, "hooks": [p._post_accumulate_grad_hooks for p in model.parameters()]}, f)
    dist.destroy_process_group()


def _run(tmp_path: pathlib.Path, scenario: str, timeout: float = 120.0) -> list[dict]:
    ctx = mp.start_processes(
        _worker, args=(_free_port(), str(tmp_path), scenario), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout
    files = [tmp_path / f"rank{r}.json" for r in range(WORLD)]
    try:
        while not ctx.join(timeout=1.0, grace_period=20.0):
            if time.monotonic() > deadline:  # a hang: fail instead of waiting forever
                for p in ctx.processes:
                    p.kill()
                pytest.fail(f"the {WORLD} processes did not finish within {timeout:.0f} s (a hang)")
    except mp.ProcessExitedException as err:
        # A known PyTorch/gloo teardown crash, not gradwatch's: in a 2-process gloo FSDP2 job, any
        # collective beyond FSDP's own (gradwatch's all_gather, or a plain dist.all_gather in the loop
        # with gradwatch not imported) makes a process abort at interpreter exit now and then, after
        # destroy_process_group ("terminate called without an active exception"; 1 run in 16 to 30
        # here). Tolerated only when every rank finished its work and wrote its results.
        if err.signal_name != "SIGABRT" or not all(f.exists() for f in files):
            raise
    return [json.loads(f.read_text()) for f in files]


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
        assert res["sigterm_ours"] is False  # the launcher owns SIGTERM in a torch.distributed process
    assert ranks[0]["norms"] == ranks[1]["norms"]  # global gradients: the same on every rank
    # only global rank 0 writes TensorBoard events
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1


def test_detectors_agree_across_ranks_and_raising_on_both_does_not_hang(tmp_path: pathlib.Path) -> None:
    ranks = _run(tmp_path, "raise")  # no zero_grad, on_finding="raise"
    assert [r["raised"] for r in ranks] == ["missing_zero_grad", "missing_zero_grad"]
    assert ranks[0]["findings"] == ranks[1]["findings"]
    assert ranks[0]["findings"][0][:2] == ["missing_zero_grad", 1]


@pytest.mark.parametrize("scenario", ["fsdp", "fsdp_zeroed"])
def test_fsdp2_statistics_are_those_of_the_whole_tensors_on_every_rank(
    tmp_path: pathlib.Path, scenario: str
) -> None:
    ranks = _run(tmp_path, scenario)
    for res in ranks:
        assert len(res["got"]) == STEPS
        for step, (got, want) in enumerate(zip(res["got"], res["expected"])):
            assert set(got) == set(want)
            for name in want:
                for field, value in want[name].items():
                    tol = 1e-9 if field == "zero_fraction" else 1e-5
                    assert got[name][field] == pytest.approx(value, rel=tol, abs=1e-12), (step, name, field)
        assert res["findings"] == []
        assert res["gathers"] == STEPS  # gradwatch's one collective per recorded step
        assert res["hooks"] == [None] * 6  # every hook removed at close
    assert ranks[0]["got"] == ranks[1]["got"]


def test_fsdp2_missing_zero_grad_is_found_on_every_rank(tmp_path: pathlib.Path) -> None:
    ranks = _run(tmp_path, "fsdp_no_zero_grad")
    for res in ranks:
        assert res["findings"][0][:2] == ["missing_zero_grad", 1]
    assert ranks[0]["findings"] == ranks[1]["findings"]


def test_fsdp2_nan_every_other_step_and_tensorboard_on_rank_zero(tmp_path: pathlib.Path) -> None:
    ranks = _run(tmp_path, "fsdp_nan")
    for res in ranks:
        assert res["steps"] == [0, 2]
        assert res["gathers"] == 2  # none on the steps not recorded
        assert res["findings"] and res["findings"][0][:2] == ["nonfinite_grad", 2]
    assert ranks[0]["findings"] == ranks[1]["findings"]
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1


def test_dtensor_on_a_2d_mesh_is_refused_with_a_clear_error(tmp_path: pathlib.Path) -> None:
    for res in _run(tmp_path, "mesh_2d"):
        assert res["error"] is not None and "'0.weight' is a DTensor" in res["error"]
        assert "2-D" in res["error"] and "fully_shard" in res["error"]
        assert res["hooks"] == [None] * 4  # nothing was registered


@pytest.mark.skipif(not hasattr(torch.amp, "GradScaler"), reason="torch.amp.GradScaler is 2.3+")
@pytest.mark.parametrize("scenario", ["amp_recipe", "amp_clip_first"])
def test_ddp_with_a_grad_scaler_clipping_before_unscale_is_found_and_the_recipe_is_not(
    tmp_path: pathlib.Path, scenario: str
) -> None:
    ranks = _run(tmp_path, scenario)
    for res in ranks:
        if scenario == "amp_recipe":
            assert res["findings"] == []
        else:
            assert [f[:2] for f in res["findings"]] == [["clip_before_unscale", 0]]
