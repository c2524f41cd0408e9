"""GPU check, about two minutes: is a watched CUDA step sync-free, and what does watching cost there?

1. Sync check: a watched loop (statistics every 10 steps) runs under
   ``torch.cuda.set_sync_debug_mode("error")`` on the steps that are not recorded; any host-device
   synchronisation there raises.
2. Overhead: median step time, unwatched vs statistics every step vs statistics + TensorBoard
   (histograms every 100 steps), interleaved step by step in one process in a fresh random order every
   round, on the CNN (~4 M parameters, batch 32, 32x32 RGB) and the transformer LM (~10 M parameters)
   of ``benchmarks/overhead.py``; the ratio is the median of the per-round paired ratios.

Usage: python benchmarks/gpu_overhead.py [--steps 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import gradwatch as gw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import loss_of, make


def sync_check(device: torch.device) -> dict:
    torch.manual_seed(0)
    model, batch = make("cnn", device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    unrecorded_ok = 0
    with gw.watch(model, opt, every=10, on_finding="ignore") as w:
        for k in range(40):
            x, y = batch(k)
            torch.cuda.set_sync_debug_mode("warn" if k % 10 == 0 else "error")
            try:
                opt.zero_grad()
                loss_of("cnn", model(x), y).backward()
                opt.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
            unrecorded_ok += k % 10 != 0
    return {"unrecorded_steps_without_sync": unrecorded_ok, "recorded": [r.step for r in w.history]}


def overhead(name: str, steps: int, device: torch.device, tmp: str) -> dict:
    base, batch = make(name, device)
    variants = ("unwatched", "stats", "stats+tb")
    runs = {}
    for v in variants:
        model = copy.deepcopy(base)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        w = None
        if v != "unwatched":
            w = gw.watch(model, opt, on_finding="ignore", logdir=f"{tmp}/{name}" if v == "stats+tb" else None)
        runs[v] = (model, opt, w, [])
    shuffler = random.Random(0)  # a fresh order every round, as in overhead.py
    for k in range(steps + 5):
        order = list(variants)
        shuffler.shuffle(order)
        for v in order:
            model, opt, w, times = runs[v]
            x, y = batch(k)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            opt.zero_grad()
            loss_of(name, model(x), y).backward()
            opt.step()
            if v == "stats+tb":
                w.flush()  # its writer threads' work is charged to it, not to the variant after it
            torch.cuda.synchronize()
            if k >= 5:
                times.append(time.perf_counter() - t0)
    base_times = runs["unwatched"][3]
    base_med = statistics.median(base_times)
    out = {}
    for v, (_, _, w, times) in runs.items():
        med = statistics.median(times)
        out[v] = {
            "median_ms": med * 1e3,
            "ratio": statistics.median(t / b for t, b in zip(times, base_times)),  # paired per round
            "ratio_of_medians": med / base_med,
        }
        if w is not None:
            w.close()
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run both checks and print them."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return {}
    device = torch.device("cuda")
    res = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "sync": sync_check(device)}
    print(f"{res['gpu']}: sync check {res['sync']}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("cnn", "transformer"):
            res[name] = overhead(name, args.steps, device, tmp)
            for v, r in res[name].items():
                print(f"  {name:12s} {v:10s} {r['median_ms']:8.2f} ms  ratio {r['ratio']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
