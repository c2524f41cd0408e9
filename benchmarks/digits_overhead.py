"""Overhead of watching the digits MLP: median step time watched / unwatched, interleaved in one process.

Two identical models train side by side on scikit-learn's bundled digits; each iteration times one step
of the unwatched model and one of the watched model, alternating which goes first, after a warm-up. The
ratio of the medians is the overhead. Variants:

* ``stats``: statistics every step, no TensorBoard;
* ``stats+tb``: statistics every step, scalars to TensorBoard, histograms every 100 steps (the default).

Usage: python benchmarks/digits_overhead.py [--steps 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time

import torch
from torch import nn

import gradwatch as gw


def data():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return x, torch.tensor(d.target)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    x, y = data()
    base = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    results = {}
    for variant in ("stats", "stats+tb"):
        models = [copy.deepcopy(base), copy.deepcopy(base)]
        opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in models]
        tmp = tempfile.mkdtemp()
        w = gw.watch(
            models[1],
            opts[1],
            logdir=tmp if variant == "stats+tb" else None,
            histogram_every=100,
            on_finding="ignore",
        )
        times: list[list[float]] = [[], []]
        g = torch.Generator().manual_seed(1)
        for i in range(args.warmup + args.steps):
            idx = torch.randint(0, len(x), (args.batch,), generator=g)
            xb, yb = x[idx], y[idx]
            order = (0, 1) if i % 2 == 0 else (1, 0)
            for k in order:
                t0 = time.perf_counter()
                opts[k].zero_grad()
                nn.functional.cross_entropy(models[k](xb), yb).backward()
                opts[k].step()
                dt = time.perf_counter() - t0
                if i >= args.warmup:
                    times[k].append(dt)
        w.close()
        m0, m1 = statistics.median(times[0]), statistics.median(times[1])
        results[variant] = {
            "unwatched_ms": m0 * 1e3,
            "watched_ms": m1 * 1e3,
            "ratio": m1 / m0,
            "steps": args.steps,
        }
        print(f"{variant:10s} unwatched {m0 * 1e3:.3f} ms  watched {m1 * 1e3:.3f} ms  ratio {m1 / m0:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
