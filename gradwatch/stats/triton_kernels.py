"""Triton multi-tensor kernels for the gradient statistics (imported only when Triton is used).

Each kernel reads many tensors of one dtype in one launch: the tensors' addresses are passed as a table
of int64 (``Tensor.data_ptr()``), and a block table says which tensor and which offset each program
reads, as the multi-tensor kernels of PyTorch's foreach ops and NVIDIA's apex do. Importing this module
imports Triton; :mod:`gradwatch.stats.fused` imports it lazily, after checking that Triton is installed.
With ``TRITON_INTERPRET=1`` the kernels run on CPU tensors (Triton's interpreter), which is how the
test suite runs them on machines without a GPU.
"""

# (no ``from __future__ import annotations``: Triton 3.0 reads ``tl.constexpr`` annotations as objects)
import contextlib
import os

import triton
import triton.language as tl

__all__ = ["PARTIAL_COLUMNS", "grad_stats_partials", "histogram_counts"]

#: Columns of the per-block partial results of :func:`grad_stats_partials` (all float64): sum of
#: squares of the finite entries, sum of the finite entries, minimum and maximum of the finite entries
#: (+inf / -inf where there are none), number of nonzero entries among the sampled ones (every
#: ``stride``-th entry; NaN counts as nonzero), number of non-finite entries, number of NaN entries, and
#: the plain sum of every entry (NaN/Inf propagate, as ``Tensor.sum``).
PARTIAL_COLUMNS = ("sumsq", "sum", "min", "max", "nonzero", "nonfinite", "nan", "raw_sum")


@triton.jit
def _this_block(ptrs, numels, block_tensor, block_start, DTYPE: tl.constexpr):
    """The program's block: its tensor's index, first entry, entry count and address (typed ``DTYPE``)."""
    b = tl.program_id(0)
    t = tl.load(block_tensor + b)
    start = tl.load(block_start + b)
    n = tl.load(numels + t)
    base = tl.load(ptrs + t).to(tl.pointer_type(DTYPE))
    return t, start, n, base


@triton.jit
def _grad_stats_kernel(
    ptrs,
    numels,
    strides,
    block_tensor,
    block_start,
    out,
    DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
    ITERS: tl.constexpr,
):
    t, start, n, base = _this_block(ptrs, numels, block_tensor, block_start, DTYPE)
    s = tl.load(strides + t)
    sq = tl.zeros([BLOCK], dtype=tl.float64)
    total = tl.zeros([BLOCK], dtype=tl.float64)
    raw = tl.zeros([BLOCK], dtype=tl.float64)
    lo = tl.full([BLOCK], float("inf"), dtype=tl.float64)
    hi = tl.full([BLOCK], float("-inf"), dtype=tl.float64)
    nonzero = tl.zeros([BLOCK], dtype=tl.int32)
    nonfinite = tl.zeros([BLOCK], dtype=tl.int32)
    nan = tl.zeros([BLOCK], dtype=tl.int32)
    for k in range(ITERS):
        offs = start + k * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        x = tl.load(base + offs, mask=m, other=0.0).to(tl.float64)
        finite = (x - x) == 0.0  # False for NaN and +-Inf
        xf = tl.where(finite, x, 0.0)
        # float64 accumulation: squares of any float32 (1e-45 .. 3.4e38) are exact in range
        sq += xf * xf
        total += xf
        raw += x
        lo = tl.minimum(lo, tl.where(finite & m, x, float("inf")))
        hi = tl.maximum(hi, tl.where(finite & m, x, float("-inf")))
        nonzero += ((x != 0.0) & m & ((offs % s) == 0)).to(tl.int32)
        nonfinite += ((finite == 0) & m).to(tl.int32)
        nan += ((x != x) & m).to(tl.int32)
    row = out + tl.program_id(0) * 8
    tl.store(row + 0, tl.sum(sq, axis=0))
    tl.store(row + 1, tl.sum(total, axis=0))
    tl.store(row + 2, tl.min(lo, axis=0))
    tl.store(row + 3, tl.max(hi, axis=0))
    tl.store(row + 4, tl.sum(nonzero, axis=0).to(tl.float64))
    tl.store(row + 5, tl.sum(nonfinite, axis=0).to(tl.float64))
    tl.store(row + 6, tl.sum(nan, axis=0).to(tl.float64))
    tl.store(row + 7, tl.sum(raw, axis=0))


def grad_stats_partials(ptrs, numels, strides, block_tensor, block_start, out, dtype, block, iters) -> None:
    """Launch :data:`_grad_stats_kernel`: one program per block, partial columns into ``out`` [blocks, 8].

    All index arguments are int64 tensors on the tensors' device; ``dtype`` a torch floating dtype.
    """
    tl_dtype = _TL_DTYPES[dtype]
    grid = (block_tensor.numel(),)
    with _quiet():
        _grad_stats_kernel[grid](
            ptrs, numels, strides, block_tensor, block_start, out, DTYPE=tl_dtype, BLOCK=block, ITERS=iters
        )


@triton.jit
def _histogram_kernel(
    ptrs,
    numels,
    block_tensor,
    block_start,
    ranges,
    counts,
    DTYPE: tl.constexpr,
    CDTYPE: tl.constexpr,
    BINS: tl.constexpr,
    BLOCK: tl.constexpr,
    ITERS: tl.constexpr,
):
    t, start, n, base = _this_block(ptrs, numels, block_tensor, block_start, DTYPE)
    lo64 = tl.load(ranges + 2 * t)
    hi64 = tl.load(ranges + 2 * t + 1)
    lo = lo64.to(CDTYPE)
    hi = hi64.to(CDTYPE)
    width = hi - lo
    flat = width == 0.0
    # (max - min) * bins past the largest float32: histc's own arithmetic overflows; bin in float64
    wide = (hi64 - lo64) * BINS > 3.0e38
    for k in range(ITERS):
        offs = start + k * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        x = tl.load(base + offs, mask=m, other=0.0).to(CDTYPE)
        finite = (x - x) == 0.0
        # torch.histc's arithmetic in the tensor's (compute) dtype: trunc((x - lo) * bins / (hi - lo))
        scaled = tl.math.div_rn((x - lo) * BINS, tl.where(flat, 1.0, width))
        x64 = x.to(tl.float64)
        scaled64 = (x64 - lo64) * BINS / tl.where(flat, 1.0, hi64 - lo64)
        bucket = tl.where(wide, scaled64.to(tl.int32), scaled.to(tl.int32))
        bucket = tl.minimum(bucket, BINS - 1)  # the maximum goes into the last bucket
        bucket = tl.where(flat, BINS // 2, tl.maximum(bucket, 0))
        tl.atomic_add(counts + t * BINS + bucket, 1, mask=m & finite)


def histogram_counts(
    ptrs, numels, block_tensor, block_start, ranges, counts, dtype, bins, block, iters
) -> None:
    """Launch :data:`_histogram_kernel`: counts (int32 ``[tensors, bins]``, zeroed) of the finite entries.

    ``ranges``: float64 ``[tensors, 2]`` finite minimum and maximum per tensor (from the statistics).
    """
    compute = _TL_DTYPES[dtype] if dtype.itemsize >= 4 else tl.float32
    grid = (block_tensor.numel(),)
    with _quiet():
        _histogram_kernel[grid](
            ptrs,
            numels,
            block_tensor,
            block_start,
            ranges,
            counts,
            DTYPE=_TL_DTYPES[dtype],
            CDTYPE=compute,
            BINS=bins,
            BLOCK=block,
            ITERS=iters,
        )


def _quiet() -> "contextlib.AbstractContextManager[object]":
    """Silence numpy's floating-point warnings where Triton's interpreter runs the kernels on numpy.

    (``inf - inf`` is how the kernels test for non-finite entries; on a GPU it raises nothing.)
    """
    if os.environ.get("TRITON_INTERPRET") == "1":
        import numpy

        return numpy.errstate(all="ignore")
    return contextlib.nullcontext()


def _tl_dtypes() -> dict:
    import torch

    return {
        torch.float32: tl.float32,
        torch.float64: tl.float64,
        torch.float16: tl.float16,
        torch.bfloat16: tl.bfloat16,
    }


_TL_DTYPES = _tl_dtypes()
