"""Shared test helpers: small models and an independent reference for gradient statistics."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

# Without a GPU, Triton's interpreter runs gradwatch's Triton kernels on CPU tensors (tests/test_fused.py);
# it must be set before Triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parent.parent
SHARED_CASES = REPO.parent / "shared" / "cases"


def reference_stats(grad: torch.Tensor | None, before: torch.Tensor, after: torch.Tensor | None) -> dict:
    """Gradient statistics computed independently in float64 with plain torch reductions."""
    p0 = before.detach().double()
    out = {"param_norm": p0.norm().item()}
    if after is not None:
        delta = (after.detach().double() - p0).norm().item()
        out["update_ratio"] = delta / p0.norm().item() if p0.norm().item() > 0 else float("inf")
    if grad is None:
        out.update(
            grad_norm=0.0,
            grad_max_abs=0.0,
            grad_mean=0.0,
            grad_std=0.0,
            zero_fraction=1.0,
            nan_count=0,
            inf_count=0,
        )
        return out
    g = grad.detach().double().reshape(-1)
    out.update(
        grad_norm=g.norm().item(),
        grad_max_abs=g.abs().max().item(),
        grad_mean=g.mean().item(),
        grad_std=g.std(correction=0).item(),
        zero_fraction=(g == 0).double().mean().item(),
        nan_count=int(torch.isnan(g).sum()),
        inf_count=int(torch.isinf(g).sum()),
    )
    return out


def assert_stats_close(got, ref: dict, rtol: float, what: str = "") -> None:
    """Compare a ParamStats with a reference dict; means are compared relative to the gradient's scale."""
    scale = max(ref["grad_max_abs"], 1e-30) if math.isfinite(ref["grad_max_abs"]) else 1.0
    for key, want in ref.items():
        have = getattr(got, key)
        if key in ("nan_count", "inf_count"):
            assert have == want, f"{what} {key}: {have} != {want}"
        elif key in ("grad_mean", "grad_std"):
            assert have == pytest.approx(want, rel=rtol, abs=rtol * scale), f"{what} {key}"
        elif key == "zero_fraction":
            assert have == pytest.approx(want, abs=1e-12), f"{what} {key}"
        else:
            assert have == pytest.approx(want, rel=rtol, abs=1e-30), f"{what} {key}: {have} vs {want}"


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResCNN(nn.Module):
    """A CNN with in-place ReLU and a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1)
        )
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu_(self.stem(x))
        h = h + self.block(h)
        return self.head(h.mean(dim=(2, 3)))


class TiedLM(nn.Module):
    """Embedding and output projection share one weight (weight tying)."""

    def __init__(self, vocab: int = 20, dim: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.mix(self.emb(x))))
