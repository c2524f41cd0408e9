"""Plain reference definitions of every statistic the engines compute: one tensor at a time, float64.

Written to be read, not to be fast: each function states a column's meaning with the plainest PyTorch
calls. The three engines (:mod:`.host` for small CPU tensors, :mod:`.batched` for the rest without
Triton, :mod:`.fused` with Triton) are tested against these functions (``tests/test_engines.py``);
gradwatch itself never calls them on the training path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from gradwatch.stats.host import memory_order

__all__ = ["grad_stats", "histogram", "raw_stats", "sample_entries"]


def _entries(t: torch.Tensor) -> torch.Tensor:
    """Every entry of ``t`` in memory order, as float64 (complex: real and imaginary parts as entries)."""
    if t.is_sparse:
        t = t.to_dense()
    if t.is_complex():
        t = torch.view_as_real(t)
    return memory_order(t.detach()).reshape(-1).double()


def sample_entries(t: torch.Tensor, stride: int) -> torch.Tensor:
    """The sampled entries of ``t`` as float64: every ``stride``-th entry in memory order, from the first."""
    return _entries(t)[::stride]


def raw_stats(t: torch.Tensor, stride: int = 1) -> list[float]:
    """The columns of :data:`gradwatch.stats.RAW_FIELDS` for one tensor, in float64.

    ``norm`` (L2), ``max_abs``, ``sum``, ``nonzero`` (among the sampled entries; NaN counts as nonzero),
    ``nonfinite`` (NaN or +-Inf), ``nan``, and ``centered`` = ``||x - mean(x)||``. With a NaN or an Inf
    present, ``norm``, ``max_abs`` and ``sum`` are NaN or Inf as float64 arithmetic makes them and
    ``centered`` is NaN. An empty tensor gives zeros.
    """
    x = _entries(t)
    if x.numel() == 0:
        return [0.0] * 7
    finite = torch.isfinite(x)
    nonfinite = float((~finite).sum())
    nan = float(torch.isnan(x).sum())
    nonzero = float((x[::stride] != 0).sum())
    centered = math.nan if nonfinite else float(torch.linalg.vector_norm(x - x.mean()))
    return [
        float(torch.linalg.vector_norm(x)),
        float(x.abs().max()),
        float(x.sum()),
        nonzero,
        nonfinite,
        nan,
        centered,
    ]


def grad_stats(tensors: Sequence[torch.Tensor], strides: Sequence[int] = ()) -> torch.Tensor:
    """:func:`raw_stats` of each tensor: a ``[len(tensors), 7]`` float64 CPU tensor."""
    steps = list(strides) or [1] * len(tensors)
    return torch.tensor([raw_stats(t, s) for t, s in zip(tensors, steps)], dtype=torch.float64)


def histogram(t: torch.Tensor, bins: int) -> torch.Tensor:
    """One row of :func:`gradwatch.stats.histograms` for ``t``: ``[5 + 2 * bins]`` float64, on the CPU.

    ``min, max, num, sum, sum_squares`` of the finite entries (float64), then ``bins`` right bucket
    edges of ``bins`` equal-width buckets over ``[min, max]``, then the counts of ``torch.histc`` on
    those entries in the tensor's dtype (bf16/fp16 upcast to float32; float64 where ``(max - min) *
    bins`` overflows that dtype). A constant tensor: the range ``[v - 0.5, v + 0.5]``, every entry in
    bucket ``bins // 2`` (numpy's rule). No finite entry: zeros, and the edges of ``[-0.5, 0.5]``.
    """
    x = t.detach().reshape(-1)
    x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    x = x[torch.isfinite(x)]
    frac = torch.arange(1, bins + 1, dtype=torch.float64) / bins
    if x.numel() == 0:
        return torch.cat(
            [torch.zeros(5, dtype=torch.float64), frac - 0.5, torch.zeros(bins, dtype=torch.float64)]
        )
    wide = x.double()
    lo, hi = float(wide.min()), float(wide.max())
    head = torch.tensor(
        [lo, hi, x.numel(), float(wide.sum()), float(wide.square().sum())], dtype=torch.float64
    )
    if lo == hi:
        counts = torch.zeros(bins, dtype=torch.float64)
        counts[bins // 2] = x.numel()
        return torch.cat([head, (lo - 0.5) + frac, counts])
    if not math.isfinite((hi - lo) * bins) or (hi - lo) * bins > torch.finfo(x.dtype).max:
        x = wide
    counts = torch.histc(x, bins, lo, hi).double()
    return torch.cat([head, lo + (hi - lo) * frac, counts])
