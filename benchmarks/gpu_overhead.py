"""GPU benchmark (issue 13): what watching costs on GPT-2 124M, ResNet-50 and a 1,000-tensor MLP.

Models (built here, no downloads; ``--scale`` shrinks them all, keeping their structure):
  gpt2      GPT-2 124M: 12 layers, d_model 768, 12 heads, vocabulary 50257, context 1024, learned
            positions, LayerNorm, GELU MLP, causal attention through ``F.scaled_dot_product_attention``,
            the output layer tied to the token embedding; batch 8 x 512 tokens
  resnet50  ResNet-50: bottleneck blocks [3, 4, 6, 3], BatchNorm, 1000 classes; batch 64 of 224x224 RGB
  mlp       500 Linear(256, 256) + ReLU between an input and an output layer: 1,004 parameter tensors;
            batch 64
On CUDA gpt2 and resnet50 train under ``torch.autocast("cuda", dtype=torch.bfloat16)`` and every model
with ``torch.optim.AdamW(fused=True)``; on the CPU in float32 with the default AdamW.

Variants (each trains its own deep copy of the same model and optimizer on the same batches; they take
turns step by step in one process, in a fresh random order every round, after a warm-up):
  unwatched            the loop alone (baseline)
  stats                gradwatch statistics every step, no TensorBoard (``histogram_every=None``)
  stats+tb             + TensorBoard scalars every step and histograms every 20 steps
  hist1                + TensorBoard histograms every step
  clip_grad_norm_      the loop + ``torch.nn.utils.clip_grad_norm_(params, 1e9)`` (norms, no clipping)
  lightning_grad_norm  the loop + the per-parameter norms of Lightning's ``grad_norm`` utility, stacked
                       into a total norm, left on the device (Lightning's own ``torch.tensor(list)`` of
                       them, and its logging, would also synchronise: this is its cheapest form)
  by_hand_hist         the loop + the hand-written recipe: a ``SummaryWriter``, ``add_histogram`` of every
                       gradient and ``add_scalar`` of every gradient norm every step (TensorBoard's own
                       Python checksums, as without gradwatch; ``--peer-checksum native`` for the C ones).
                       Tens of times slower per step: capped at ``--slow-steps`` (8) timed steps
Every variant that writes TensorBoard waits for its writer inside its timed step (``flush``), so it is
charged for its writer threads' work. Reported per variant: median step time, the ratio to the unwatched
loop as the median of per-round paired ratios (cancels slow drifts of the machine), the ratio of medians,
and the time added.

Further measurements (all into ``--json``, each guarded: an error is recorded as a string, the run goes on):
  syncs_per_step       host synchronisations per step (CUDA): a few extra steps of a watched copy
                       (statistics every 2nd step, so steps alternate recorded / not recorded) and of an
                       unwatched one under ``torch.cuda.set_sync_debug_mode("warn")``, counting its
                       warnings; null on the CPU
  launches             device work added by one recorded step for 10 vs 1,000 parameter tensors (MLPs of
                       5 and 500 Linear layers): CUDA kernels (``torch.profiler``) on CUDA, and aten ops
                       dispatched (a ``TorchDispatchMode``) everywhere; watched minus unwatched
  peak_memory          ``torch.cuda.max_memory_allocated`` over a few steps, watched minus unwatched, per
                       model; null on the CPU
  grad_norm_error      max relative error of each recorded gradient norm against ``p.grad.double().norm()``
                       (the gradient the optimizer used), per model, and for the MLP with a few layers'
                       gradients scaled to ~1e-28 (their float32 squares underflow)
  environment          device name, torch, CUDA, Triton and gradwatch versions

``--budget-s`` (default 480 s) bounds the wall-clock time: past it no more timed rounds are added (at least
one per model is kept) and the numbers so far are reported.

Usage:
  python benchmarks/gpu_overhead.py [--models gpt2,resnet50,mlp] [--variants stats,hist1,...]
      [--steps 32] [--warmup 5] [--slow-steps 8] [--scale 1|0.25|tiny] [--budget-s 480]
      [--device cuda|cpu] [--threads N] [--peer-checksum stock|native] [--json out.json]
The CPU test (tests/test_gpu_benchmark.py) runs ``--device cpu --threads 1 --scale tiny --steps 2``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import platform
import random
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import gradwatch as gw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import loss_of, make, peer_checksums

MODELS = ("gpt2", "resnet50", "mlp")
LEGACY_MODELS = ("digits", "cnn", "transformer")  # benchmarks/overhead.py's models, still accepted
VARIANTS = (
    "unwatched",
    "stats",
    "stats+tb",
    "hist1",
    "clip_grad_norm_",
    "lightning_grad_norm",
    "by_hand_hist",
)
SLOW_VARIANTS = ("by_hand_hist",)  # capped at --slow-steps timed steps
TB_HIST_EVERY = 20  # the stats+tb variant's histogram period
TINY_GRAD_SCALE = 1e-25  # gradients of ~1e-3 become ~1e-28: squares (~1e-56) underflow float32 (1e-45)


# ----------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class GPT2Config:
    layers: int = 12
    d_model: int = 768
    heads: int = 12
    vocab: int = 50257
    context: int = 1024
    batch: int = 8
    seq: int = 512


@dataclass(frozen=True)
class ResNetConfig:
    blocks: tuple[int, ...] = (3, 4, 6, 3)
    width: int = 64  # the stem's channels; stage i has width * 2**i, times 4 at its output
    classes: int = 1000
    image: int = 224
    batch: int = 64


@dataclass(frozen=True)
class MLPConfig:
    inputs: int = 256
    width: int = 256
    hidden: int = 500  # Linear(width, width) layers between the input and the output layer
    classes: int = 10
    batch: int = 64


@dataclass(frozen=True)
class LaunchConfig:
    """The two MLPs of the launch count: ``layers`` Linear(width, width) each, 2 tensors per layer."""

    layers: tuple[int, ...] = (5, 500)
    width: int = 64
    batch: int = 32


def parse_scale(text: str | float) -> float | str:
    """``"tiny"`` or a positive float (1 = the full models)."""
    if text == "tiny":
        return "tiny"
    value = float(text)
    if not value > 0:
        raise ValueError(f"--scale must be positive or 'tiny', got {text!r}")
    return value


def gpt2_config(scale: float | str) -> GPT2Config:
    if scale == "tiny":
        return GPT2Config(layers=2, d_model=64, heads=4, vocab=256, context=64, batch=2, seq=32)
    s = float(scale)
    heads = max(1, round(12 * s))  # head dimension 64, as GPT-2's
    context = max(32, round(1024 * s))
    return GPT2Config(
        layers=max(1, round(12 * s)),
        d_model=64 * heads,
        heads=heads,
        vocab=max(256, round(50257 * s)),
        context=context,
        seq=min(context, max(16, round(512 * s))),
    )


def resnet_config(scale: float | str) -> ResNetConfig:
    if scale == "tiny":
        return ResNetConfig(width=4, classes=10, image=32, batch=2)
    s = float(scale)
    return ResNetConfig(width=max(4, round(64 * s)), image=max(32, 32 * round(7 * s)))


def mlp_config(scale: float | str) -> MLPConfig:
    if scale == "tiny":
        return MLPConfig(inputs=32, width=32, hidden=10, batch=8)
    s = float(scale)
    return MLPConfig(
        inputs=max(8, round(256 * s)), width=max(8, round(256 * s)), hidden=max(5, round(500 * s))
    )


def launch_config(scale: float | str) -> LaunchConfig:
    if scale == "tiny":
        return LaunchConfig(width=8, batch=4)
    return LaunchConfig(width=max(8, round(64 * float(scale))))


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(d_model, 3 * d_model)
        self.c_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in self.c_attn(x).split(d, dim=2)
        )
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d))


class GPT2MLP(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(d_model, 4 * d_model)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, heads)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = GPT2MLP(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab, cfg.d_model)
        self.wpe = nn.Embedding(cfg.context, cfg.d_model)
        self.h = nn.ModuleList(GPT2Block(cfg.d_model, cfg.heads) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: one tensor, named wte.weight
        for name, p in self.named_parameters():  # GPT-2's initialisation
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * cfg.layers) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = 4 * width
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        w = cfg.width
        self.conv1 = nn.Conv2d(3, w, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages, cin = [], w
        for i, n in enumerate(cfg.blocks):
            width = w * 2**i
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = 4 * width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, cfg.classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def deep_mlp(inputs: int, width: int, hidden: int, outputs: int | None) -> nn.Sequential:
    """Linear(inputs, width), then ``hidden`` Linear(width, width), then Linear(width, outputs), ReLU between.

    ``outputs=None``: no output layer (and ``inputs == width``: no input layer either).
    """
    layers: list[nn.Module] = [] if inputs == width and outputs is None else [nn.Linear(inputs, width)]
    for _ in range(hidden):
        layers += [nn.ReLU(), nn.Linear(width, width)] if layers else [nn.Linear(width, width)]
    if outputs is not None:
        layers += [nn.ReLU(), nn.Linear(width, outputs)]
    model = nn.Sequential(*layers)
    for m in model:
        if isinstance(m, nn.Linear):  # He initialisation: activations keep their scale over 500 layers
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model


@dataclass
class Bench:
    """A model on its device, its optimizer, fixed synthetic batches, and how a step runs."""

    name: str
    model: nn.Module
    opt: torch.optim.Optimizer
    batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    amp: bool  # bf16 autocast around forward and loss
    config: dict[str, Any] = field(default_factory=dict)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def info(self) -> dict[str, Any]:
        params = list(self.model.parameters())
        return {
            "config": self.config,
            "params": sum(p.numel() for p in params),
            "tensors": len(params),
            "bf16_autocast": self.amp,
            "optimizer": f"AdamW(fused={bool(self.opt.defaults.get('fused'))})",
        }


def make_optimizer(model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, fused where the device supports it (CUDA), else the default implementation."""
    if device.type == "cuda":
        try:
            return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        except (RuntimeError, ValueError):
            pass
    return torch.optim.AdamW(model.parameters(), lr=1e-4)


def _fixed(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> Callable[[int], tuple]:
    x, y = x.to(device), y.to(device)
    return lambda k: (x, y)


def build(name: str, device: torch.device, scale: float | str = 1.0) -> Bench:
    """One of :data:`MODELS` (or overhead.py's digits, cnn, transformer) at ``scale``, seeded."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    amp = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if name in LEGACY_MODELS:
        model, batch = make(name, device)
        return Bench(name, model, make_optimizer(model, device), batch, amp=False)
    cfg: Any
    if name == "gpt2":
        cfg = gpt2_config(scale)
        with torch.device(device):  # initialised on the device: seconds less for 124 M parameters
            model = GPT2(cfg)
        data = torch.randint(0, cfg.vocab, (cfg.batch, cfg.seq + 1), generator=g)
        batch = _fixed(data[:, :-1], data[:, 1:], device)
    elif name == "resnet50":
        cfg = resnet_config(scale)
        with torch.device(device):
            model = ResNet(cfg)
        x = torch.randn(cfg.batch, 3, cfg.image, cfg.image, generator=g)
        batch = _fixed(x, torch.randint(0, cfg.classes, (cfg.batch,), generator=g), device)
    elif name == "mlp":
        cfg = mlp_config(scale)
        with torch.device(device):
            model = deep_mlp(cfg.inputs, cfg.width, cfg.hidden, cfg.classes)
        x = torch.randn(cfg.batch, cfg.inputs, generator=g)
        batch = _fixed(x, torch.randint(0, cfg.classes, (cfg.batch,), generator=g), device)
        amp = False  # float32: the MLP is the many-tensors case, and the one with underflowing gradients
    else:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS + LEGACY_MODELS)}")
    return Bench(name, model, make_optimizer(model, device), batch, amp=amp, config=asdict(cfg))


# --------------------------------------------------------------------------------------------- variants


def lightning_grad_norm(module: nn.Module, norm_type: float = 2.0) -> dict[str, torch.Tensor]:
    """Lightning's ``grad_norm`` utility, written out: per-parameter norms and their total, on the device."""
    norms = {
        f"grad_{norm_type}_norm/{name}": torch.linalg.vector_norm(p.grad, norm_type)
        for name, p in module.named_parameters()
        if p.grad is not None
    }
    if norms:
        total = torch.linalg.vector_norm(torch.stack(list(norms.values())), norm_type)
        norms[f"grad_{norm_type}_norm_total"] = total
    return norms


class Run:
    """One variant's own deep copy of the bench's model and optimizer, and what the variant adds to a step."""

    def __init__(
        self,
        variant: str,
        bench: Bench,
        tmp: str | Path,
        *,
        watch_options: dict[str, Any] | None = None,
        peer_checksum: str = "stock",
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        self.variant, self.bench = variant, bench
        # one deepcopy, one memo: the copied optimizer holds the copied model's parameters
        self.model, self.opt = copy.deepcopy((bench.model, bench.opt))
        self.watcher: gw.Watcher | None = None
        self.writer: Any = None
        self.kept: Any = None
        slug = variant.replace("+", "_")
        logdir = (
            str(Path(tmp) / bench.name) if variant == "stats+tb" else str(Path(tmp) / f"{bench.name}-{slug}")
        )
        options: dict[str, Any] = {
            "stats": {"histogram_every": None},
            "stats+tb": {"logdir": logdir, "histogram_every": TB_HIST_EVERY},
            "hist1": {"logdir": logdir, "histogram_every": 1},
        }.get(variant, {})
        if variant in ("stats", "stats+tb", "hist1"):
            self.watcher = gw.watch(
                self.model, self.opt, on_finding="ignore", **{**options, **(watch_options or {})}
            )
        elif variant == "by_hand_hist":
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(logdir)
            peer_checksums(self.writer, peer_checksum)

    def step(self, k: int) -> None:
        """One training step (no timing, no synchronisation beyond what the variant itself does)."""
        model, opt, v = self.model, self.opt, self.variant
        x, y = self.bench.batch(k)
        opt.zero_grad()
        with self.bench.autocast():
            loss = loss_of(self.bench.name, model(x), y)
        loss.backward()
        if v == "clip_grad_norm_":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)
        elif v == "lightning_grad_norm":
            self.kept = lightning_grad_norm(model)
        elif v == "by_hand_hist":
            for name, p in model.named_parameters():  # the classic hand-written loop
                if p.grad is not None:
                    self.writer.add_histogram(f"gradients/{name}", p.grad, k)
                    self.writer.add_scalar(f"grad_norm/{name}", p.grad.norm(), k)
        opt.step()
        # wait for the TensorBoard writer threads inside the step: each variant is charged for the
        # background work it makes instead of leaving it to slow whichever variant runs next
        if self.writer is not None:
            self.writer.flush()
        elif self.watcher is not None and v != "stats":
            self.watcher.flush()

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
        if self.writer is not None:
            self.writer.close()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _error(err: BaseException) -> str:
    traceback.print_exception(err, file=sys.stderr)
    return f"{type(err).__name__}: {err}"


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_overhead(
    bench: Bench,
    steps: int,
    tmp: str | Path,
    *,
    warmup: int = 5,
    variants: Sequence[str] = VARIANTS,
    slow_steps: int = 8,
    deadline: float | None = None,
    peer_checksum: str = "stock",
) -> tuple[dict[str, dict], dict[str, Any]]:
    """Time ``variants`` (unwatched always) interleaved on ``bench``: (per-variant numbers, run facts).

    A variant of :data:`SLOW_VARIANTS` takes part in the last warm-up round and the first ``slow_steps``
    timed rounds only. Past ``deadline`` (``time.perf_counter()``) no more rounds start, but at least one
    timed round runs. A variant whose step raises is dropped; its entry holds the error.
    """
    device = next(bench.model.parameters()).device
    chosen = ["unwatched", *(v for v in VARIANTS if v in variants and v != "unwatched")]
    runs: dict[str, Run] = {}
    out: dict[str, dict] = {}
    for v in chosen:
        try:
            runs[v] = Run(v, bench, tmp, peer_checksum=peer_checksum)
        except Exception as err:
            out[v] = {"error": _error(err)}
    if "unwatched" not in runs:
        for r in runs.values():
            r.close()
        return out, {"rounds": 0, "budget_hit": False}
    times: dict[str, dict[int, float]] = {v: {} for v in runs}

    def takes_part(v: str, k: int) -> bool:
        if v not in SLOW_VARIANTS:
            return True
        return warmup - min(warmup, 1) <= k < warmup + slow_steps

    shuffler = random.Random(0)  # a fresh order every round, seeded
    budget_hit = False
    for k in range(warmup + steps):
        if deadline is not None and k > warmup and time.perf_counter() > deadline:
            budget_hit = True
            break
        order = [v for v in runs if takes_part(v, k)]
        shuffler.shuffle(order)
        for v in order:
            try:
                _sync(device)
                t0 = time.perf_counter()
                runs[v].step(k)
                _sync(device)
                dt = time.perf_counter() - t0
            except Exception as err:
                out[v] = {"error": _error(err)}
                runs.pop(v).close()
                times.pop(v)
                if v == "unwatched":
                    for r in runs.values():
                        r.close()
                    return out, {"rounds": k, "budget_hit": budget_hit}
                continue
            if k >= warmup:
                times[v][k] = dt
    base = times["unwatched"]
    base_median = statistics.median(base.values()) if base else float("nan")
    for v, t in times.items():
        if not t:
            out[v] = {"error": "no timed step"}
            continue
        med = statistics.median(t.values())
        paired = [t[k] / base[k] for k in t if k in base]  # the same round: machine noise hits both
        ratio = statistics.median(paired) if paired else float("nan")
        out[v] = {
            "median_ms": med * 1e3,
            "ratio": ratio,
            "ratio_of_medians": med / base_median,
            "added_ms": (ratio - 1.0) * base_median * 1e3,
            "steps": len(t),
        }
        if v in SLOW_VARIANTS:
            out[v]["capped_at"] = slow_steps
    for r in runs.values():
        r.close()
    return out, {"rounds": len(base), "warmup": warmup, "budget_hit": budget_hit}


def overhead(
    name: str,
    steps: int,
    device: torch.device,
    tmp: str,
    *,
    warmup: int = 5,
    variants: Sequence[str] = ("unwatched", "stats", "stats+tb"),
    scale: float | str = 1.0,
    slow_steps: int = 8,
    deadline: float | None = None,
    peer_checksum: str = "stock",
) -> dict[str, dict]:
    """Build model ``name`` and time ``variants`` on it (see :func:`run_overhead`): {variant: numbers}.

    ``name``: one of :data:`MODELS`, or overhead.py's digits, cnn, transformer. The stats+tb variant
    writes under ``tmp/name``.
    """
    bench = build(name, device, scale)
    out, _ = run_overhead(
        bench,
        steps,
        tmp,
        warmup=warmup,
        variants=variants,
        slow_steps=slow_steps,
        deadline=deadline,
        peer_checksum=peer_checksum,
    )
    return out


# --------------------------------------------------------------------------------- further measurements


def _is_sync_warning(w: warnings.WarningMessage) -> bool:
    return "synchroniz" in str(w.message).lower()


def sync_counts(bench: Bench, tmp: str | Path, *, steps: int = 8, warmup: int = 4) -> dict[str, Any] | None:
    """Host synchronisations per step (CUDA): watched (statistics every 2nd step) and unwatched copies.

    Counted as the warnings of ``torch.cuda.set_sync_debug_mode("warn")`` over ``steps`` steps after
    ``warmup``; a watched step is "recorded" when the watcher's history has it. None on the CPU.
    """
    device = next(bench.model.parameters()).device
    if device.type != "cuda":
        return None
    out: dict[str, Any] = {}
    for variant, options in (("unwatched", None), ("stats", {"every": 2, "histogram_every": None})):
        run = Run(variant, bench, tmp, watch_options=options)
        per_step: list[int] = []
        try:
            for k in range(warmup + steps):
                _sync(device)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")
                    try:
                        run.step(k)
                    finally:
                        torch.cuda.set_sync_debug_mode("default")
                _sync(device)
                if k >= warmup:
                    per_step.append(sum(_is_sync_warning(w) for w in caught))
        finally:
            run.close()
        if run.watcher is None:
            out["unwatched"] = statistics.mean(per_step)
            continue
        recorded = {r.step for r in run.watcher.history}  # step k of a fresh watcher is loop step k
        rec = [n for k, n in zip(range(warmup, warmup + steps), per_step) if k in recorded]
        unrec = [n for k, n in zip(range(warmup, warmup + steps), per_step) if k not in recorded]
        out["recorded"] = statistics.mean(rec) if rec else None
        out["not_recorded"] = statistics.mean(unrec) if unrec else None
        out["watched_per_step"] = per_step
        out["recorded_steps"] = sorted(s for s in recorded if s >= warmup)
    out["steps"] = steps
    return out


def peak_memory(bench: Bench, tmp: str | Path, *, steps: int = 3) -> dict[str, Any] | None:
    """Peak CUDA memory of a few steps of each of unwatched, stats, hist1 (fresh copies); None on the CPU.

    Each copy's peak counts its model, optimizer state, gradients and activations, measured from the
    memory allocated before it was made; ``added_bytes`` is a watched peak minus the unwatched one.
    """
    device = next(bench.model.parameters()).device
    if device.type != "cuda":
        return None
    peaks: dict[str, int] = {}
    for v in ("unwatched", "stats", "hist1"):
        _free(device)
        _sync(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run = Run(v, bench, tmp)
        try:
            for k in range(steps):
                run.step(k)
            _sync(device)
        finally:
            run.close()
        peaks[v] = torch.cuda.max_memory_allocated(device) - start
        del run
    _free(device)
    base = peaks["unwatched"]
    return {
        "unwatched_peak_bytes": base,
        "added_bytes": {v: p - base for v, p in peaks.items() if v != "unwatched"},
        "added_fraction": {v: (p - base) / base for v, p in peaks.items() if v != "unwatched"},
        "steps": steps,
    }


def _tiny_grad_hooks(model: nn.Module, count: int = 3) -> tuple[list[str], list[Any]]:
    """Scale the gradients of ``count`` Linear layers (weight and bias) by :data:`TINY_GRAD_SCALE`."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    picks = sorted({round(i * (len(linears) - 1) / (count + 1)) for i in range(1, count + 1)})
    names, handles = [], []
    for i in picks:
        lname, layer = linears[i]
        for pname, p in layer.named_parameters():
            handles.append(p.register_hook(lambda g: g * TINY_GRAD_SCALE))
            names.append(f"{lname}.{pname}")
    return names, handles


def grad_norm_error(bench: Bench, *, steps: int = 2, tiny_grads: bool = False) -> dict[str, Any]:
    """Max relative error of the recorded gradient norms against ``p.grad.double().norm()``.

    A fresh watched copy (statistics every step, ``on_finding="ignore"``); after each step's
    ``optimizer.step()`` every gradient (the one the optimizer used) is read in float64 and compared with
    ``w.history[-1]``. ``tiny_grads``: three Linear layers' gradients are first scaled by
    :data:`TINY_GRAD_SCALE`, so that their squares underflow float32.
    """
    model, opt = copy.deepcopy((bench.model, bench.opt))
    tiny_names: list[str] = []
    handles: list[Any] = []
    if tiny_grads:
        tiny_names, handles = _tiny_grad_hooks(model)
    w = gw.watch(model, opt, on_finding="ignore", histogram_every=None)
    worst, worst_at, compared, mismatched = 0.0, None, 0, []
    min_ref = math.inf
    try:
        for k in range(steps):
            opt.zero_grad()
            x, y = bench.batch(k)
            with bench.autocast():
                loss = loss_of(bench.name, model(x), y)
            loss.backward()
            opt.step()
            refs = {
                n: p.grad.double().norm().item() for n, p in model.named_parameters() if p.grad is not None
            }
            record = w.history[-1]
            if record.step != k:
                mismatched.append((k, record.step))
                continue
            for n, ref in refs.items():
                got = record.params[n].grad_norm
                err = abs(got - ref) / ref if ref > 0 else abs(got)
                if not math.isfinite(err):  # a NaN or infinite recorded norm: the worst there is
                    err = math.inf
                if err > worst or worst_at is None:
                    worst, worst_at = err, f"{n} at step {k}"
                min_ref = min(min_ref, ref)
                compared += 1
    finally:
        w.close()
        for h in handles:
            h.remove()
    out: dict[str, Any] = {
        "max_rel_error": worst if math.isfinite(worst) else None,  # None: a recorded norm was NaN/Inf
        "worst": worst_at,
        "norms_compared": compared,
        "min_reference_norm": min_ref if compared else None,
    }
    if tiny_grads:
        out["tiny_grad_params"] = tiny_names
    if mismatched:
        out["record_step_mismatch"] = mismatched
    return out


class _OpCounter:
    """Counts the aten ops dispatched while active (a ``TorchDispatchMode``), by name."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = Counter[str]()

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                counter[str(func.overloadpacket.__name__)] += 1
                return func(*args, **(kwargs or {}))

        self.counter, self.mode = counter, Mode()

    def __enter__(self) -> _OpCounter:
        self.mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.mode.__exit__(*exc)


def _cuda_kernels(step: Callable[[], object], device: torch.device) -> dict[str, Any]:
    """CUDA events of one call of ``step`` (``torch.profiler``): kernels, memcpy, memset; kernels by name."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        _sync(device)
    counts, names = Counter[str](), Counter[str]()
    for evt in prof.events():
        if evt.device_type != DeviceType.CUDA:
            continue
        lowered = evt.name.lower()
        kind = "memcpy" if "memcpy" in lowered else "memset" if "memset" in lowered else "kernels"
        counts[kind] += 1
        if kind == "kernels":
            names[evt.name[:80]] += 1
    return {
        "kernels": counts["kernels"],
        "memcpy": counts["memcpy"],
        "memset": counts["memset"],
        "by_name": names,
    }


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def launch_counts(device: torch.device, tmp: str | Path, scale: float | str = 1.0) -> dict[str, Any]:
    """Device work of one recorded watched step minus one unwatched step, for 10 and 1,000 tensors.

    MLPs of 5 and 500 Linear(width, width) layers (float32, AdamW fused on CUDA); each copy warms up 3
    steps first. ``aten_ops``: aten ops dispatched (``TorchDispatchMode``), on every device;
    ``cuda_kernels``: CUDA kernel (and memcpy/memset) events of ``torch.profiler``, None on the CPU.
    """
    cfg = launch_config(scale)
    g = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {"aten_ops": {}, "cuda_kernels": {} if device.type == "cuda" else None}
    out["config"] = asdict(cfg)
    if device.type == "cuda":  # the profiler's first session starts CUPTI: not in a counted step
        _cuda_kernels(lambda: torch.ones(1, device=device).add_(1), device)
    for layers in cfg.layers:
        torch.manual_seed(0)
        with torch.device(device):
            model = deep_mlp(cfg.width, cfg.width, layers, None)
        x = torch.randn(cfg.batch, cfg.width, generator=g)
        y = torch.randint(0, cfg.width, (cfg.batch,), generator=g)
        bench = Bench(
            f"launch{layers}", model, make_optimizer(model, device), _fixed(x, y, device), amp=False
        )
        tensors = len(list(model.parameters()))
        ops, kernels = {}, {}
        for v in ("unwatched", "stats"):
            run = Run(v, bench, tmp)
            try:
                for k in range(3):
                    run.step(k)
                _sync(device)
                with _OpCounter() as counter:
                    run.step(3)
                    _sync(device)
                ops[v] = counter.counter
                if device.type == "cuda":
                    kernels[v] = _cuda_kernels(lambda run=run: run.step(4), device)
                if run.watcher is not None:
                    got = [r.step for r in run.watcher.history]
                    if 3 not in got or (device.type == "cuda" and 4 not in got):
                        raise RuntimeError(f"the counted steps were not recorded (history: {got})")
            finally:
                run.close()
        added = ops["stats"] - ops["unwatched"]
        out["aten_ops"][f"tensors_{tensors}"] = {
            "unwatched": sum(ops["unwatched"].values()),
            "watched": sum(ops["stats"].values()),
            "added": sum(ops["stats"].values()) - sum(ops["unwatched"].values()),
            "added_by_op": dict(added.most_common(12)),
        }
        if kernels:
            unw, wat = kernels["unwatched"], kernels["stats"]
            out["cuda_kernels"][f"tensors_{tensors}"] = {
                "unwatched": {k: unw[k] for k in ("kernels", "memcpy", "memset")},
                "watched": {k: wat[k] for k in ("kernels", "memcpy", "memset")},
                "added": wat["kernels"] - unw["kernels"],
                "added_memcpy": wat["memcpy"] - unw["memcpy"],
                "added_by_kernel": dict((wat["by_name"] - unw["by_name"]).most_common(12)),
            }
    return out


def environment(device: torch.device) -> dict[str, Any]:
    try:
        import triton

        triton_version: str | None = triton.__version__
    except Exception:
        triton_version = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "device": device.type,
        "device_name": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "gradwatch": gw.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
    }


# ------------------------------------------------------------------------------------------------- main


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def print_model(name: str, res: dict[str, Any]) -> None:
    if "error" in res:
        print(f"\n{name}: error {res['error']}")
        return
    print(
        f"\n{name}: {res['params'] / 1e6:.2f} M parameters in {res['tensors']} tensors, "
        f"bf16 autocast {res['bf16_autocast']}, {res['optimizer']}"
    )
    over = res.get("overhead", {})
    if "error" in over:
        print(f"  overhead: error {over['error']}")
    else:
        print(
            f"  {'variant':20s} {'median ms':>10s} {'ratio':>7s} {'ratio of medians':>17s} "
            f"{'added ms':>9s} steps"
        )
        for v, r in over.get("variants", {}).items():
            if "error" in r:
                print(f"  {v:20s} error {r['error']}")
                continue
            cap = " (capped)" if "capped_at" in r else ""
            print(
                f"  {v:20s} {r['median_ms']:10.2f} {r['ratio']:7.3f} {r['ratio_of_medians']:17.3f} "
                f"{r['added_ms']:9.2f} {r['steps']}{cap}"
            )
        if over.get("budget_hit"):
            print(f"  (--budget-s reached: {over['rounds']} timed rounds)")
    syncs = res.get("syncs_per_step")
    if isinstance(syncs, dict) and "error" not in syncs:
        print(
            f"  host syncs per step: unwatched {_fmt(syncs.get('unwatched'))}, recorded "
            f"{_fmt(syncs.get('recorded'))}, not recorded {_fmt(syncs.get('not_recorded'))}"
        )
    else:
        print(f"  host syncs per step: {_fmt(syncs)}")
    mem = res.get("peak_memory")
    if isinstance(mem, dict) and "error" not in mem:
        added = ", ".join(
            f"{v} {b / 2**20:+.1f} MiB ({mem['added_fraction'][v]:+.1%})"
            for v, b in mem["added_bytes"].items()
        )
        print(f"  peak memory added: {added}")
    else:
        print(f"  peak memory added: {_fmt(mem)}")
    for key in ("grad_norm_error", "grad_norm_error_tiny_grads"):
        if key in res:
            e = res[key]
            text = (
                f"{_fmt(e['max_rel_error'])} ({e['worst']})" if "max_rel_error" in e else _fmt(e.get("error"))
            )
            print(f"  {key}: max relative error {text}")


def print_launches(res: Any) -> None:
    if not isinstance(res, dict) or "error" in res:
        print(f"\nlaunches: {_fmt(res if not isinstance(res, dict) else res.get('error'))}")
        return
    print("\ndevice work added by one recorded step (watched minus unwatched):")
    for kind in ("cuda_kernels", "aten_ops"):
        counts = res.get(kind)
        if counts:
            print("  " + kind + ": " + ", ".join(f"{t} {c['added']:+d}" for t, c in counts.items()))
        elif counts is None:
            print(f"  {kind}: null")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every measurement, print a table per model and return (and optionally save) the numbers."""
    start = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}"
    )
    ap.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS[1:])} (unwatched is always run)",
    )
    ap.add_argument("--steps", type=int, default=32, help="timed rounds (each variant one step per round)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    ap.add_argument("--slow-steps", type=int, default=8, help="timed steps of by_hand_hist at most")
    ap.add_argument("--scale", type=parse_scale, default=1.0, help="shrink every model: a float, or 'tiny'")
    ap.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget; past it no more steps")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    ap.add_argument(
        "--peer-checksum",
        choices=("stock", "native"),
        default="stock",
        help="by_hand_hist's event checksums: TensorBoard's Python CRC (as without gradwatch) or the C one",
    )
    ap.add_argument(
        "--threads", type=int, default=None, help="CPU intra-op threads for the run (default: torch's own)"
    )
    ap.add_argument("--json", default=None, help="also write every number to this file")
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    variants = {"unwatched", *(v for v in args.variants.split(",") if v)}
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    unknown = sorted(variants - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return run_all(args, models, variants, start)
    finally:
        torch.set_num_threads(threads)


def run_all(args: argparse.Namespace, models: list[str], variants: set[str], start: float) -> dict[str, Any]:
    """Every measurement of every model in ``models`` (``args``: parsed by :func:`main`)."""
    device = torch.device(args.device)
    deadline = start + args.budget_s
    results: dict[str, Any] = {
        "environment": environment(device),
        "settings": {
            "models": models,
            "variants": [v for v in VARIANTS if v in variants],
            "steps": args.steps,
            "warmup": args.warmup,
            "slow_steps": args.slow_steps,
            "scale": args.scale,
            "budget_s": args.budget_s,
            "peer_checksum": args.peer_checksum,
        },
        "notes": {
            "by_hand_hist": f"capped at {args.slow_steps} timed steps (tens of times slower per step than "
            "the others); its ratio pairs each of its steps with the unwatched step of the same round",
            "stats+tb": f"histograms every {TB_HIST_EVERY} steps; flush() inside the timed step",
            "lightning_grad_norm": "per-parameter norms stacked into a total, left on the device",
            "launches": "aten_ops: TorchDispatchMode op count; cuda_kernels: torch.profiler CUDA events",
        },
        "models": {},
    }
    env = results["environment"]
    print(
        f"{env['device_name']} ({env['device']}), torch {env['torch']}, CUDA {env['cuda']}, "
        f"triton {env['triton']}"
    )

    def guarded(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as err:
            return {"error": _error(err)}

    with tempfile.TemporaryDirectory() as tmp, _quiet():
        results["launches"] = guarded(lambda: launch_counts(device, tmp, args.scale))
        print_launches(results["launches"])
        for i, name in enumerate(models):
            try:
                bench = build(name, device, args.scale)
            except Exception as err:
                results["models"][name] = {"error": _error(err)}
                continue
            res = results["models"][name] = bench.info()
            res["grad_norm_error"] = guarded(lambda bench=bench: grad_norm_error(bench))
            if name == "mlp":
                res["grad_norm_error_tiny_grads"] = guarded(
                    lambda bench=bench: grad_norm_error(bench, tiny_grads=True)
                )
            res["syncs_per_step"] = guarded(lambda bench=bench: sync_counts(bench, tmp))
            res["peak_memory"] = guarded(lambda bench=bench: peak_memory(bench, tmp))
            _free(device)
            # the time left, shared out among the models still to time
            model_deadline = time.perf_counter() + (deadline - time.perf_counter()) / (len(models) - i)

            def timed(bench: Bench = bench, model_deadline: float = model_deadline) -> dict[str, Any]:
                out, facts = run_overhead(
                    bench,
                    args.steps,
                    tmp,
                    warmup=args.warmup,
                    variants=tuple(variants),
                    slow_steps=args.slow_steps,
                    deadline=model_deadline,
                    peer_checksum=args.peer_checksum,
                )
                return {"variants": out, **facts}

            res["overhead"] = guarded(timed)
            del bench, timed
            _free(device)
            print_model(name, res)
    results["elapsed_s"] = time.perf_counter() - start
    print(f"\n{results['elapsed_s']:.1f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
