"""Overhead of watching, against the unwatched loop and the tools people use today.

For each model (the digits MLP, a CNN of about 4 M parameters on 32x32 RGB images, a small transformer
language model of about 10 M parameters) every variant below trains its own copy (same initial weights,
same batches) and the variants take turns step by step, in a fresh random order every round, in one
process, after a warm-up, so machine noise hits them all alike. (A fixed rotation made the variant that
always ran after the hand-written every-step histograms inherit the work its TensorBoard writer thread
left behind: the peer's every-100-steps variant, which writes nothing on the timed steps, measured
1.04-1.07.) Reported: the median step time of each variant; its ratio to the unwatched loop as the
median over rounds of (variant time / unwatched time in the same round), which cancels the machine's
slow drifts, with its 95 % bootstrap interval (how far that median could move on the machine's noise: a
target is met with confidence only when the whole interval is below it); the time that ratio adds to
the unwatched median; the plain ratio of medians; and the ratio of mean step times, which also counts
work done every few steps (gradwatch judges four records at a time) that a median can hide.

Variants:
  unwatched         the loop alone (baseline)
  stats             gradwatch, statistics every step, every detector, no TensorBoard
  stats+hist100     gradwatch + TensorBoard scalars every step, histograms every 100 steps
  stats+hist1       gradwatch + TensorBoard histograms of gradients and parameters every step
  peer-hist1        the hand-written loop from the PyTorch docs: SummaryWriter.add_histogram of every
                    gradient and parameter every step
  peer-hist100      the same every 100 steps
  anomaly           torch.autograd.detect_anomaly() around forward and backward

The peer's writer checksums its events with TensorBoard's own pure-Python CRC-32C, as every
``SummaryWriter`` does (``--peer-checksum stock``, the default). gradwatch's TensorBoard sink switches
only the writer it creates to google-crc32c's C code
(``gradwatch.sinks.tensorboard.native_event_checksums(writer)``); ``--peer-checksum native`` switches
the peer's writer too. Every step of a variant that writes
to TensorBoard ends by waiting for its writer threads (``flush``), so each variant is charged for the
background work it makes instead of leaving it to slow whichever variant runs next.

Usage:
  python benchmarks/overhead.py [--models digits,cnn,transformer] [--steps 30] [--warmup 3]
                                [--json benchmarks/results/overhead.json] [--memory-steps 20]
                                [--variants stats,stats+hist1,peer-hist1] [--peer-checksum stock|native]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import random
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import gradwatch as gw

VARIANTS = ("unwatched", "stats", "stats+hist100", "stats+hist1", "peer-hist1", "peer-hist100", "anomaly")


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 8000, dim: int = 384, layers: int = 4, seq: int = 64) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(seq, dim))
        block = nn.TransformerEncoderLayer(
            dim, nhead=6, dim_feedforward=4 * dim, dropout=0.0, batch_first=True
        )
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.emb.weight  # weight tying
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.emb(tokens) + self.pos[: tokens.shape[1]]
        return self.out(self.norm(self.blocks(h, mask=self.mask, is_causal=True)))


def make(name: str, device: torch.device) -> tuple[nn.Module, Callable[[int], tuple]]:
    """A model and a function step -> (inputs, targets) of fixed synthetic data."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if name == "digits":
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
        x, y = torch.randn(512, 64, generator=g), torch.randint(0, 10, (512,), generator=g)
        return model.to(device), lambda k: (
            x[(k * 64) % 512 :][:64].to(device),
            y[(k * 64) % 512 :][:64].to(device),
        )
    if name == "cnn":

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        model = nn.Sequential(
            *block(3, 64),
            *block(64, 128),
            nn.MaxPool2d(2),
            *block(128, 256),
            *block(256, 256),
            nn.MaxPool2d(2),
            *block(256, 512),
            *block(512, 512),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(512, 10),
        )
        x, y = torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)
        return model.to(device), lambda k: (x.to(device), y.to(device))
    if name == "transformer":
        model = TinyLM()
        data = torch.randint(0, 8000, (8, 65), generator=g)
        return model.to(device), lambda k: (data[:, :-1].to(device), data[:, 1:].to(device))
    raise ValueError(f"unknown model {name!r}")


def loss_of(name: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def bootstrap_ci(values: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the median of ``values`` (resampled with replacement).

    How far the reported median ratio could move on this machine's noise: a target is met with
    confidence only when the whole interval is below it.
    """
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def peer_checksums(writer: object, mode: str) -> None:
    """Leave the peer's ``SummaryWriter`` with the Python checksums (``"stock"``), or switch it to C.

    Raises ``RuntimeError`` when ``"native"`` cannot be had (google-crc32c or its C extension missing,
    ``GRADWATCH_NATIVE_CRC`` set to off, or an unknown TensorBoard writer layout).
    """
    if mode == "native":
        from gradwatch.sinks.tensorboard import native_event_checksums

        if not native_event_checksums(writer):
            raise RuntimeError(
                "--peer-checksum native: the writer could not be switched to the C checksum (install "
                "google-crc32c with its C extension, and unset GRADWATCH_NATIVE_CRC)"
            )


def run_model(
    name: str,
    steps: int,
    warmup: int,
    device: torch.device,
    tmp: Path,
    variants: tuple[str, ...] = VARIANTS,
    peer_checksum: str = "stock",
) -> dict:
    from torch.utils.tensorboard import SummaryWriter

    base, batch = make(name, device)
    n_params = sum(p.numel() for p in base.parameters())
    n_tensors = len(list(base.parameters()))
    runs = {}
    for v in variants:
        model = copy.deepcopy(base)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        watcher = writer = None
        if v.startswith("stats"):
            logdir = None if v == "stats" else str(tmp / name / v)
            watcher = gw.watch(
                model,
                opt,
                on_finding="ignore",
                logdir=logdir,
                histogram_every=100 if v == "stats+hist100" else 1,
            )
        elif v.startswith("peer"):
            writer = SummaryWriter(str(tmp / name / v))
            peer_checksums(writer, peer_checksum)
        runs[v] = {"model": model, "opt": opt, "watcher": watcher, "writer": writer, "times": []}

    def step(v: str, k: int) -> float:
        r = runs[v]
        model, opt = r["model"], r["opt"]
        x, y = batch(k)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad()
        ctx = torch.autograd.detect_anomaly(check_nan=True) if v == "anomaly" else contextlib.nullcontext()
        with ctx:
            loss_of(name, model(x), y).backward()
        if v.startswith("peer") and (v == "peer-hist1" or k % 100 == 0):
            for pname, p in model.named_parameters():  # the PyTorch docs' recipe
                r["writer"].add_histogram(f"gradients/{pname}", p.grad, k)
                r["writer"].add_histogram(f"parameters/{pname}", p, k)
        opt.step()
        # wait for the TensorBoard writer threads (gradwatch's and TensorBoard's own): each variant is
        # charged for the background work it makes, instead of leaving it to slow whichever runs next
        if r["writer"] is not None:
            r["writer"].flush()
        elif r["watcher"] is not None and v != "stats":
            r["watcher"].flush()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    # a fresh random order every round (seeded): should a variant leave work behind after all (the
    # allocator, the caches), no variant always follows the same other
    shuffler = random.Random(0)
    for k in range(warmup + steps):
        order = list(variants)
        shuffler.shuffle(order)
        for v in order:
            dt = step(v, k)
            if k >= warmup:
                runs[v]["times"].append(dt)
    out = {"params": n_params, "tensors": n_tensors, "steps": steps, "variants": {}}
    base = runs["unwatched"]["times"]
    base_median = statistics.median(base)
    for v, r in runs.items():
        med = statistics.median(r["times"])
        # paired: each round runs every variant once, back to back, so a slow spell of the machine
        # hits a round's variants alike; the median of the per-round ratios cancels it
        ratios = [t / b for t, b in zip(r["times"], base)]
        paired = statistics.median(ratios)
        out["variants"][v] = {
            "median_ms": med * 1e3,
            "ratio": paired,
            "ratio_ci95": bootstrap_ci(ratios),
            "ratio_of_medians": med / base_median,
            # (work done every few steps, such as a batch of records judged together, hides below a median)
            "ratio_of_means": statistics.fmean(r["times"]) / statistics.fmean(base),
            "added_ms": (paired - 1.0) * base_median * 1e3,
        }
        if r["watcher"] is not None:
            r["watcher"].close()
        if r["writer"] is not None:
            r["writer"].close()
    if "peer-hist1" in runs and "stats+hist1" in runs:
        peer, ours = out["variants"]["peer-hist1"]["added_ms"], out["variants"]["stats+hist1"]["added_ms"]
        out["peer_hist1_added_over_ours"] = peer / ours if ours > 0 else None  # None: ours within noise
    return out


def _peak_rss(name: str, variant: str, steps: int, logdir: str) -> int:
    """Peak resident memory (bytes) of a fresh process that trains ``steps`` steps of one variant."""
    import resource

    from torch.utils.tensorboard import SummaryWriter

    model, batch = make(name, torch.device("cpu"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    watcher = writer = None
    if variant.startswith("stats"):
        every = {"stats": None, "stats+hist100": 100, "stats+hist1": 1}[variant]
        extra = {} if every is None else {"logdir": logdir, "histogram_every": every}
        watcher = gw.watch(model, opt, on_finding="ignore", **extra)
    elif variant == "peer-hist1":
        writer = SummaryWriter(logdir)
    for k in range(steps):
        x, y = batch(k)
        opt.zero_grad()
        loss_of(name, model(x), y).backward()
        if writer is not None:
            for pname, p in model.named_parameters():
                writer.add_histogram(f"gradients/{pname}", p.grad, k)
                writer.add_histogram(f"parameters/{pname}", p, k)
        opt.step()
    if watcher is not None:
        watcher.close()
    if writer is not None:
        writer.close()
    # VmHWM: this address space's peak resident size (ru_maxrss would include the parent's, inherited
    # across the fork that starts the process)
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes, outside Linux


def peak_memory(name: str, steps: int, tmp: Path) -> dict:
    """Peak memory added by each variant over the unwatched loop, in bytes per parameter (CPU, peak RSS).

    Each variant runs alone in a fresh process (``multiprocessing`` spawn), so peaks do not mix.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    variants = ("unwatched", "stats", "stats+hist100", "stats+hist1", "peer-hist1")
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        peaks = {
            v: pool.apply(_peak_rss, (name, v, steps, str(tmp / f"mem-{name}-{v.replace('+', '_')}")))
            for v in variants
        }
    n_params = sum(p.numel() for p in make(name, torch.device("cpu"))[0].parameters())
    return {v: (peaks[v] - peaks["unwatched"]) / n_params for v in variants if v != "unwatched"}


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print a table per model and return (and optionally save) the numbers."""
    warnings.filterwarnings("ignore", message="Anomaly Detection has been enabled")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--models", default="digits,cnn,transformer", help="comma-separated subset of digits,cnn,transformer"
    )
    ap.add_argument("--steps", type=int, default=30, help="timed rounds (each variant one step per round)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    ap.add_argument("--json", default=None, help="also write every number to this file")
    ap.add_argument(
        "--memory-steps",
        type=int,
        default=0,
        help="also measure peak memory added (bytes per parameter; CPU RSS, one process per variant)",
    )
    ap.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS[1:])} (unwatched is always run)",
    )
    ap.add_argument(
        "--peer-checksum",
        choices=("stock", "native"),
        default="stock",
        help="the peer's event checksums: TensorBoard's Python CRC (every SummaryWriter's), or the C one "
        "gradwatch gives its own writer (needs google-crc32c with its C extension)",
    )
    args = ap.parse_args(argv)
    bad = set(args.models.split(",")) - {"digits", "cnn", "transformer"}
    if bad:
        ap.error(f"unknown model(s) {', '.join(sorted(bad))}; choose from digits, cnn, transformer")
    device = torch.device(args.device)
    results = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "peer_checksum": args.peer_checksum,
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            chosen = {"unwatched", *args.variants.split(",")}
            unknown = chosen - set(VARIANTS)
            if unknown:
                ap.error(
                    f"unknown variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}"
                )
            variants = tuple(v for v in VARIANTS if v in chosen)
            res = run_model(name, args.steps, args.warmup, device, Path(tmp), variants, args.peer_checksum)
            results["models"][name] = res
            print(
                f"\n{name}: {res['params'] / 1e6:.2f} M parameters in {res['tensors']} tensors, "
                f"{res['steps']} steps per variant"
            )
            print(
                f"  {'variant':15s} {'median ms':>10s} {'ratio':>7s} {'95% interval':>15s} {'added ms':>9s} "
                f"{'ratio of medians':>17s} {'of means':>9s}"
            )
            for v, r in res["variants"].items():
                lo, hi = r["ratio_ci95"]
                print(
                    f"  {v:15s} {r['median_ms']:10.2f} {r['ratio']:7.3f} {f'{lo:.3f}-{hi:.3f}':>15s} "
                    f"{r['added_ms']:9.2f} {r['ratio_of_medians']:17.3f} {r['ratio_of_means']:9.3f}"
                )
            if args.memory_steps and device.type == "cpu":
                res["peak_bytes_per_param"] = peak_memory(name, args.memory_steps, Path(tmp))
                added = ", ".join(f"{v} {b:+.2f}" for v, b in res["peak_bytes_per_param"].items())
                print(f"  peak memory added, bytes per parameter: {added}")
            if "peer_hist1_added_over_ours" in res and res["peer_hist1_added_over_ours"] is None:
                print("  every-step histograms added no measurable time in this run (noise); no ratio")
            elif "peer_hist1_added_over_ours" in res:
                print(
                    f"  hand-written add_histogram every step ({args.peer_checksum} checksums) adds "
                    f"{res['peer_hist1_added_over_ours']:.1f}x the time gradwatch's every-step histograms add"
                )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
