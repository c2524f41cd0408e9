"""Shared test helpers: small models and an independent reference for gradient statistics."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

# a developer's shell settings must not change what the tests expect (tests that need them set them)
for _name in ("GRADWATCH_ON_FINDING", "GRADWATCH_DISABLE", "GRADWATCH_NATIVE_CRC"):
    os.environ.pop(_name, None)

# Without a GPU, Triton's interpreter runs gradwatch's Triton kernels on CPU tensors (tests/test_fused.py);
# it must be set before Triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _runs(fn) -> bool:
    try:
        fn()
    except (RuntimeError, AttributeError, TypeError, NotImplementedError):
        return False
    return True


def _half_precision_cpu_training() -> None:
    for dtype in (torch.float16, torch.bfloat16):
        lin = nn.Linear(4, 3).to(dtype)
        conv = nn.Conv2d(2, 2, 3).to(dtype)
        x = torch.randn(5, 4, dtype=dtype)
        loss = nn.functional.mse_loss(lin(x), torch.zeros(5, 3, dtype=dtype))
        loss = loss + conv(torch.randn(1, 2, 5, 5, dtype=dtype)).sum()
        loss.backward()


def _triton_interpreter() -> None:
    import triton

    if int(triton.__version__.split(".")[0]) < 3:  # Triton 2 has no interpreter for CPU tensors
        raise RuntimeError(f"Triton {triton.__version__}")


# What the installed PyTorch can do (the declared minimum is 2.1): tests that use a newer feature
# themselves are skipped where it is missing, the rest run everywhere.
#: fp16/bf16 Linear, Conv2d and mse_loss forward and backward on the CPU (2.5+ for all of them)
CPU_HALF = _runs(_half_precision_cpu_training)
#: ``torch.amp.GradScaler("cpu")`` (2.3+)
AMP_GRADSCALER = hasattr(torch.amp, "GradScaler")
#: ``torch.__future__.set_swap_module_params_on_conversion`` (2.3+)
SWAP_MODULE_PARAMS = hasattr(torch.__future__, "get_swap_module_params_on_conversion")
#: Triton 3+, whose interpreter runs the kernels on CPU tensors
TRITON_INTERPRETER = _runs(_triton_interpreter) if not torch.cuda.is_available() else _runs(lambda: None)

needs_cpu_half = pytest.mark.skipif(not CPU_HALF, reason="this PyTorch lacks fp16/bf16 CPU kernels")
needs_amp_gradscaler = pytest.mark.skipif(not AMP_GRADSCALER, reason="torch.amp.GradScaler is 2.3+")
needs_swap_module_params = pytest.mark.skipif(not SWAP_MODULE_PARAMS, reason="swap-mode Module.to is 2.3+")


def half_dtypes(*dtypes: torch.dtype) -> list:
    """``dtypes`` as pytest params, fp16/bf16 ones skipped where this PyTorch cannot train in them on CPU."""
    return [
        pytest.param(d, marks=needs_cpu_half) if d in (torch.float16, torch.bfloat16) else d for d in dtypes
    ]


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


#: The CPU statistics paths: ``host`` (stats/host.py's compiled pass, the default where it is built),
#: ``numpy`` (host.py's numpy calls) and ``torch`` (PyTorch's reductions, host.py switched off).
CPU_PATHS = ["host", "numpy", "torch"]


def use_cpu_path(path: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Switch the CPU statistics to ``path`` (one of :data:`CPU_PATHS`) for one test.

    Returns ``"host"`` for both host.py paths (tests that branch on the path treat them alike), and skips
    ``host`` where the extension was not built.
    """
    from gradwatch.stats import host

    if path == "host" and not host.NATIVE:
        pytest.skip("gradwatch.stats._native was not built: 'numpy' is the host path here")
    monkeypatch.setattr(host, "ENABLED", path != "torch")
    monkeypatch.setattr(host, "NATIVE", path == "host")
    return "host" if path == "numpy" else path
