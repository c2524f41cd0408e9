"""How gradwatch's cost grows with the number of parameter tensors and with their total size.

Two families of models, trained with SGD on synthetic data (CPU or CUDA):
  * many tensors: a deep MLP of ``depth`` Linear(w, w) layers (2 tensors each; w = 64 by default, 4 k
    entries per layer), batch 64;
  * large tensors: one Linear(width, width) (``width**2`` entries in 2 tensors), up to 100 M entries.
For each: the time ``gradwatch.watch()`` takes to attach, and the median step time unwatched and watched
(statistics every step, every detector), interleaved step by step in one process; the added time per
step is what gradwatch costs. Dividing it by the tensors (first family) or by the entries (second family)
gives the per-tensor and per-entry costs.

Usage:
  python benchmarks/scale.py [--steps 15] [--mlp-width 64] [--json benchmarks/results/scale.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import gradwatch as gw


def measure(make, batch: int, d_in: int, steps: int, device: torch.device, warmup: int = 3) -> dict:
    torch.manual_seed(0)
    models = {v: make().to(device) for v in ("unwatched", "watched")}
    models["watched"].load_state_dict(models["unwatched"].state_dict())
    opts = {v: torch.optim.SGD(m.parameters(), lr=1e-4) for v, m in models.items()}
    t0 = time.perf_counter()
    w = gw.watch(models["watched"], opts["watched"], on_finding="ignore")
    attach_s = time.perf_counter() - t0
    x = torch.randn(batch, d_in, device=device)
    times: dict[str, list[float]] = {v: [] for v in models}
    for k in range(warmup + steps):
        for v in ("unwatched", "watched") if k % 2 else ("watched", "unwatched"):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            opts[v].zero_grad()
            models[v](x).square().mean().backward()
            opts[v].step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if k >= warmup:
                times[v].append(time.perf_counter() - t)
    w.close()
    base, watched = statistics.median(times["unwatched"]), statistics.median(times["watched"])
    paired = statistics.median(w / u for w, u in zip(times["watched"], times["unwatched"]))
    params = models["watched"]
    return {
        "tensors": len(list(params.parameters())),
        "entries": sum(p.numel() for p in params.parameters()),
        "attach_s": attach_s,
        "unwatched_ms": base * 1e3,
        "watched_ms": watched * 1e3,
        "ratio": paired,  # median over rounds of watched / unwatched in the same round
        "added_ms": (paired - 1.0) * base * 1e3,
    }


def main(argv: list[str] | None = None) -> dict:
    """Run both families; print a table and return (and optionally save) the numbers."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=15, help="timed rounds (5 or fewer: noisy)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    ap.add_argument("--depths", default="50,250,500")
    ap.add_argument("--mlp-width", type=int, default=64, help="width of the deep MLP's layers")
    ap.add_argument("--widths", default="1000,3163,10000")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for depth in map(int, args.depths.split(",")):
        width = args.mlp_width
        make = lambda depth=depth, width=width: nn.Sequential(  # noqa: E731
            *[nn.Linear(width, width) for _ in range(depth)]
        )
        rows.append({"family": "many tensors", **measure(make, 64, width, args.steps, device, args.warmup)})
    for width in map(int, args.widths.split(",")):
        make = lambda width=width: nn.Linear(width, width)  # noqa: E731
        rows.append({"family": "large tensors", **measure(make, 8, width, args.steps, device, args.warmup)})
    print(
        f"{'family':14s} {'tensors':>8s} {'entries':>12s} {'attach s':>9s} {'unwatched ms':>13s} "
        f"{'ratio':>6s} {'added ms':>9s} {'per tensor us':>14s} {'per entry ns':>13s}"
    )
    for r in rows:
        print(
            f"{r['family']:14s} {r['tensors']:8d} {r['entries']:12d} {r['attach_s']:9.3f} "
            f"{r['unwatched_ms']:13.2f} {r['ratio']:6.3f} {r['added_ms']:9.2f} "
            # per tensor for the family that varies the number of tensors, per entry for the other
            + (
                f"{r['added_ms'] * 1e3 / r['tensors']:14.1f} {'-':>13s}"
                if r["family"] == "many tensors"
                else f"{'-':>14s} {r['added_ms'] * 1e6 / r['entries']:13.3f}"
            )
        )
    out = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
