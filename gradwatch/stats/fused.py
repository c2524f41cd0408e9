"""Fused multi-tensor gradient statistics for accelerators: a fixed number of launches per (device, dtype).

The statistics of every gradient of one device and dtype are computed by one Triton kernel launch
(:mod:`gradwatch.stats.triton_kernels`) that reads each gradient byte once, followed by a fixed handful of
torch ops that fold the per-block partial results into per-tensor rows: the number of kernel launches
per recorded step does not grow with the number of tensors. Sums of squares and sums accumulate in
float64, so norms of float32 gradients anywhere in [1e-30, 1e30] (and beyond: every float32 square is
a normal float64) are right to float64 rounding, with no underflow to 0 and no overflow to inf.

Used when :func:`enabled` says so: Triton is installed and importable, and the tensors are on a CUDA
device (or on the CPU with ``TRITON_INTERPRET=1``, where Triton's interpreter runs the kernels: the
tests use this). Otherwise :mod:`gradwatch.stats` uses its ``_foreach`` path (CUDA without Triton) or its
CPU path. The per-tensor Python work is one ``data_ptr()`` per gradient and a cached plan (block table,
sizes, strides) keyed by the tensors' entry counts and sample strides; the table of addresses goes to
the device through pinned memory without blocking.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch

from gradwatch import compat

__all__ = ["FUSED_DTYPES", "Plan", "enabled", "grad_stats", "histogram_rows", "triton_available"]

#: dtypes the kernels read (others take the ``_foreach`` path).
FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

#: Entries per program lane block, and blocks per program: each program reads BLOCK * ITERS entries.
BLOCK = 1024
ITERS = 4
SPAN = BLOCK * ITERS

#: Plans kept (keyed by the group's sizes and strides); a training run has one or two.
_PLANS_KEPT = 16


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported (checked once; ``compat.refresh()`` checks again)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import gradwatch.stats.triton_kernels  # noqa: F401
    except Exception:  # an incompatible or broken Triton install: the torch path instead
        return False
    return True


compat._cleared_on_refresh.append(triton_available)

#: Tests set this to run the fused path on CPU tensors (with ``TRITON_INTERPRET=1``).
force_on_cpu = False


#: Set when a kernel failed (an incompatible Triton, an unsupported GPU): the torch paths from then on.
broken: str | None = None


def disable(err: BaseException) -> None:
    """Stop using the kernels in this process after ``err`` (logged once); the torch paths take over."""
    global broken
    if broken is None:
        broken = f"{type(err).__name__}: {err}"
        logging.getLogger("gradwatch").warning(
            "gradwatch: the Triton statistics kernels failed (%s); using the torch foreach path instead",
            broken,
        )


def enabled(device: torch.device) -> bool:
    """Whether the fused kernels handle tensors on ``device``."""
    if broken is not None:
        return False
    if device.type == "cuda":
        return triton_available()
    if device.type == "cpu":
        return force_on_cpu and os.environ.get("TRITON_INTERPRET") == "1" and triton_available()
    return False


class Plan:
    """The block table of one (device, dtype) group: which tensor and offset each program reads.

    Built once per distinct list of entry counts and sample strides, and reused across steps (the
    gradients' addresses change from step to step; their sizes do not).

    Args:
        numels: entries per tensor (all > 0).
        strides: sample strides (count nonzero entries among every ``stride``-th one).
        device: where the tables live.
    """

    __slots__ = ("block_start", "block_tensor", "n", "numel_t", "numels_f", "stride_t")

    def __init__(self, numels: Sequence[int], strides: Sequence[int], device: torch.device) -> None:
        tensor_of: list[int] = []
        starts: list[int] = []
        for i, k in enumerate(numels):
            blocks = -(-k // SPAN)
            tensor_of += [i] * blocks
            starts += range(0, blocks * SPAN, SPAN)
        self.n = len(numels)
        self.block_tensor = torch.tensor(tensor_of, dtype=torch.int64).to(device)
        self.block_start = torch.tensor(starts, dtype=torch.int64).to(device)
        self.numel_t = torch.tensor(list(numels), dtype=torch.int64).to(device)
        self.numels_f = self.numel_t.double()
        self.stride_t = torch.tensor(list(strides), dtype=torch.int64).to(device)


_plans: dict[tuple[Any, ...], Plan] = {}


def _plan(numels: tuple[int, ...], strides: tuple[int, ...], device: torch.device) -> Plan:
    key = (device, numels, strides)
    plan = _plans.get(key)
    if plan is None:
        if len(_plans) >= _PLANS_KEPT:
            _plans.pop(next(iter(_plans)))
        plan = _plans[key] = Plan(numels, strides, device)
    return plan


def _addresses(tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The tensors' addresses as an int64 tensor on ``device`` (through pinned memory, not blocking)."""
    host = torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64)
    if device.type == "cpu":
        return host
    return host.pin_memory().to(device, non_blocking=True)


def readable(t: torch.Tensor) -> torch.Tensor:
    """``t`` as the kernels read it: dense, real, entries one after another in memory (a copy if not)."""
    if t.is_sparse:
        t = t.to_dense()
    if t.is_complex():
        t = torch.view_as_real(t)
    if not t.is_contiguous():
        t = t.contiguous() if not _dense_non_overlapping(t) else t
    return t


def _dense_non_overlapping(t: torch.Tensor) -> bool:
    """Whether ``t``'s entries fill one contiguous span of memory in some order (e.g. channels-last)."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda p: p[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def grad_stats(tensors: Sequence[torch.Tensor], strides: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Statistics of tensors of one device and dtype (in :data:`FUSED_DTYPES`), in one kernel launch.

    Args:
        tensors: non-empty tensors read by :func:`readable` (dense, real; any dense memory layout).
        strides: aligned with ``tensors``: count nonzero entries among every ``stride``-th entry.

    Returns:
        ``(raw, extra)``: ``raw`` is ``[n, 7]`` float64 on the tensors' device in the columns of
        :data:`gradwatch.stats.RAW_FIELDS` (norm, max |g|, sum, nonzero, nonfinite, NaN, centred norm
        ``||g - mean||``, all NaN/Inf-propagating as ``Tensor.sum`` and ``_foreach_norm`` do); ``extra``
        is ``[n, 4]`` float64: the finite minimum and maximum (+inf/-inf when there is no finite entry),
        the sum and the sum of squares of the finite entries (what a histogram's head needs).
    """
    from gradwatch.stats import triton_kernels

    device = tensors[0].device
    plan = _plan(tuple(t.numel() for t in tensors), tuple(strides), device)
    ptrs = _addresses(tensors, device)
    blocks = plan.block_tensor.numel()
    partial = torch.empty(blocks, 8, dtype=torch.float64, device=device)
    triton_kernels.grad_stats_partials(
        ptrs,
        plan.numel_t,
        plan.stride_t,
        plan.block_tensor,
        plan.block_start,
        partial,
        tensors[0].dtype,
        BLOCK,
        ITERS,
    )
    return _fold(partial, plan)


def _fold(partial: torch.Tensor, plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block partials -> per-tensor rows (a fixed number of ops whatever the tensor count)."""
    n = plan.n
    sums = partial.new_zeros(n, 8).index_add_(0, plan.block_tensor, partial)
    lo = partial.new_full((n,), float("inf")).scatter_reduce_(0, plan.block_tensor, partial[:, 2], "amin")
    hi = partial.new_full((n,), float("-inf")).scatter_reduce_(0, plan.block_tensor, partial[:, 3], "amax")
    sq, fsum, nonzero, nonfinite, nan, raw_sum = sums[:, [0, 1, 4, 5, 6, 7]].unbind(1)
    bad = torch.where(nan > 0, float("nan"), float("inf"))
    has_bad = nonfinite > 0
    norm = torch.where(has_bad, bad, sq.sqrt())
    max_abs = torch.where(has_bad, bad, torch.maximum(hi, -lo).clamp_min(0.0))
    # ||g - mean||^2 = sum g^2 - (sum g)^2 / n, in float64 (relative error about 1e-16 (mean/std)^2)
    centered = torch.where(has_bad, float("nan"), (sq - fsum * fsum / plan.numels_f).clamp_min(0.0).sqrt())
    raw = torch.stack([norm, max_abs, raw_sum, nonzero, nonfinite, nan, centered], dim=1)
    extra = torch.stack([lo, hi, fsum, sq], dim=1)
    return raw, extra


def histogram_rows(
    tensors: Sequence[torch.Tensor], extra: torch.Tensor, nonfinite: torch.Tensor, bins: int
) -> torch.Tensor:
    """Histograms of tensors of one device and dtype, binned in one kernel launch, without a host read.

    Args:
        tensors: as for :func:`grad_stats`.
        extra: the ``extra`` rows :func:`grad_stats` returned for them (finite min, max, sum, sum of squares).
        nonfinite: ``[n]`` float64 count of non-finite entries per tensor (left out of every bucket).
        bins: buckets per histogram.

    Returns:
        ``[n, 5 + 2 * bins]`` float64 rows on the device, as :func:`gradwatch.stats.histograms`: min, max,
        num, sum, sum of squares (finite entries), ``bins`` right edges, ``bins`` counts; the rule and
        arithmetic of ``torch.histc`` in the tensor's dtype (bf16/fp16 in float32); a constant tensor gets
        numpy's range ``[v - 0.5, v + 0.5]`` with every entry in bucket ``bins // 2``; a tensor with no
        finite entry gets zeros and the edges of ``[-0.5, 0.5]``.
    """
    from gradwatch.stats import triton_kernels

    device = tensors[0].device
    plan = _plan(tuple(t.numel() for t in tensors), tuple(1 for _ in tensors), device)
    ptrs = _addresses(tensors, device)
    lo, hi, fsum, sq = extra.unbind(1)
    empty = lo > hi  # no finite entry
    lo = torch.where(empty, 0.0, lo)
    hi = torch.where(empty, 0.0, hi)
    counts = torch.zeros(plan.n, bins, dtype=torch.int32, device=device)
    ranges = torch.stack([lo, hi], dim=1).contiguous()
    triton_kernels.histogram_counts(
        ptrs,
        plan.numel_t,
        plan.block_tensor,
        plan.block_start,
        ranges,
        counts,
        tensors[0].dtype,
        bins,
        BLOCK,
        ITERS,
    )
    flat = (lo == hi).double()[:, None]
    r = torch.stack([lo, hi], dim=1) + flat * torch.tensor([-0.5, 0.5], dtype=torch.float64, device=device)
    frac = torch.arange(1, bins + 1, dtype=torch.float64, device=device) / bins
    edges = r[:, :1] + (r[:, 1:] - r[:, :1]) * frac
    num = plan.numels_f - nonfinite
    head = torch.stack([lo, hi, num, fsum, sq], dim=1)
    return torch.cat([head, edges, counts.double()], dim=1)
