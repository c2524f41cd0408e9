"""The pure-torch statistics engine: batched PyTorch reductions, no Triton, no numpy.

Used for tensors the other paths do not take: on an accelerator without Triton (``torch._foreach_*``
kernels, one launch per statistic per chunk: :func:`_device_chunk`), and for CPU tensors above
``host.MAX_TENSOR`` entries (vectorised, multi-threaded reductions, one memory pass per statistic; small
ones row-wise over a stacked copy per shape when the numpy path is off: :func:`_cpu_chunk`). The plain
definition of every column these functions compute is :mod:`gradwatch.stats.reference`, and the tests
compare them with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from gradwatch import compat
from gradwatch.stats import fused
from gradwatch.stats.host import memory_order as _flat

#: Upper bound on the entries processed by one batched call; bounds the transient memory of
#: :func:`grad_stats` to about two float32 copies of this many entries (128 MiB).
CHUNK_ELEMENTS = 1 << 24

#: A block of results: positions in the caller's list, and a ``[len(positions), k]`` tensor.
Block = tuple[list[int], torch.Tensor]


def _host(device: torch.device) -> bool:
    """Whether tensors on ``device`` take the CPU paths (where reading a value costs no device sync).

    The tests set ``fused.force_on_cpu`` to run the accelerator paths on CPU tensors.
    """
    return device.type == "cpu" and not fused.force_on_cpu


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _groups(tensors: Sequence[torch.Tensor | None]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        if t is None or t.numel() == 0:
            continue
        groups.setdefault((t.device, t.dtype), []).append(i)
    return groups


def _chunks(idx: list[int], tensors: Sequence[torch.Tensor | None]) -> list[list[int]]:
    out: list[list[int]] = [[]]
    size = 0
    for i in idx:
        n = tensors[i].numel()  # type: ignore[union-attr]
        if out[-1] and size + n > CHUNK_ELEMENTS:
            out.append([])
            size = 0
        out[-1].append(i)
        size += n
    return out


def _prepare(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if t.requires_grad:
        t = t.detach()
    if t.is_sparse:
        t = t.to_dense()
    if t.is_complex():
        t = torch.view_as_real(t)
    return t if t.dtype == dtype else t.to(dtype)


def _blocks(
    tensors: Sequence[torch.Tensor | None], reduce: Callable[[list[torch.Tensor]], torch.Tensor]
) -> list[Block]:
    """Apply ``reduce`` (a chunk of prepared tensors -> ``[n, k]`` tensor) per (device, dtype) chunk."""
    return _blocks_at(tensors, lambda chunk, _positions: reduce(chunk))


def _blocks_at(
    tensors: Sequence[torch.Tensor | None], reduce: Callable[[list[torch.Tensor], list[int]], torch.Tensor]
) -> list[Block]:
    """As :func:`_blocks`; ``reduce`` also gets the chunk's positions in ``tensors``."""
    blocks: list[Block] = []
    for (_, dtype), idx in _groups(tensors).items():
        cdt = _compute_dtype(dtype)
        rows = [
            reduce([_prepare(tensors[i], cdt) for i in chunk], chunk)  # type: ignore[arg-type]
            for chunk in _chunks(idx, tensors)
        ]
        blocks.append((idx, torch.cat(rows) if len(rows) > 1 else rows[0]))
    return blocks


#: Tensors of at most this many entries are reduced together, stacked by shape, with row-wise kernels
#: (one call per statistic per shape instead of one per tensor: per-call overhead, a few microseconds,
#: dominates them; above this size one pass over the data costs more than the call).
_SMALL = 1 << 13

#: ... when at least this many share a shape (fewer: one call per tensor costs less than stacking) ...
_STACK_MIN = 4

#: ... in stacks of at most this many entries (bounds the copy to 4 MiB of float32).
_STACK_ENTRIES = 1 << 20


def _stacks(keys: Sequence[tuple[Any, ...] | None]) -> list[list[int]]:
    """Positions to reduce stacked: same key (its first item is the entry count), in bounded stacks.

    ``None`` keys (large tensors) and keys shared by fewer than :data:`_STACK_MIN` tensors are left out.
    """
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, key in enumerate(keys):
        if key is not None:
            groups.setdefault(key, []).append(i)
    out = []
    for key, idx in groups.items():
        if len(idx) >= _STACK_MIN:
            per = max(1, _STACK_ENTRIES // max(1, key[0]))
            out += [idx[k : k + per] for k in range(0, len(idx), per)]
    return out


def _stacked_rows(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``[len(tensors), numel]``: one copy of same-shape tensors, each row in the tensor's memory order.

    Contiguous tensors are stacked as they are (no 1-D view made of each); others (channels-last,
    transposed) through their 1-D memory-order views (:func:`_flat`), as the large tensors are read:
    ``torch.stack`` would keep a channels-last layout, which no ``view`` can flatten.
    """
    if all(t.is_contiguous() for t in tensors):
        return torch.stack(tensors).view(len(tensors), -1)
    return torch.stack([_flat(t) for t in tensors])


def _stacked_subsets(
    rows_of: list[tuple[list[int], torch.Tensor]], wanted: set[int], least: int = 1
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Per stacked copy ``(positions, rows)``: the positions in ``wanted`` it holds, and their rows.

    Copies holding fewer than ``least`` of them are skipped (one by one costs less there).
    """
    for idx, rows in rows_of if len(wanted) >= least else ():
        hit = [j for j, i in enumerate(idx) if i in wanted]
        if len(hit) >= least:
            yield [idx[j] for j in hit], rows[hit]


#: Row length for the sum of squares of a large tensor (see :func:`_sum_squares`).
_ROW = 1024


def _sum_squares(flat: list[torch.Tensor]) -> list[torch.Tensor]:
    """``sum(x * x)`` per 1-D tensor, as 0-dim tensors: one memory pass, no temporary copy.

    Up to 64 Ki entries: ``torch.dot`` (in ``x``'s dtype). Larger (float64 results): the L2 norms of
    rows of 1024 entries (``vector_norm(dim=1)``, vectorised and multi-threaded), squared and summed in
    float64, plus the tail. Measured on 1-10 M float32 entries: relative error about 1e-9, against
    1e-5 to 1e-4 for a single ``torch.dot`` or ``torch.linalg.vector_norm`` over the whole tensor
    (their float32 accumulators drift), at the same speed as ``dot``.
    """
    out = []
    for x in flat:
        n = x.numel()
        if n <= 64 * _ROW:
            out.append(torch.dot(x, x))  # the caller stacks and converts to float64 once
            continue
        m = n // _ROW
        rows = torch.linalg.vector_norm(x[: m * _ROW].view(m, _ROW), dim=1).double()
        total = rows.dot(rows)
        if m * _ROW < n:
            tail = x[m * _ROW :]
            total = total + torch.dot(tail, tail).double()
        out.append(total)
    return out


def _cpu_chunk(
    g: list[torch.Tensor], strides: Sequence[int] = (), extremes: list[torch.Tensor] | None = None
) -> torch.Tensor:
    """Raw columns on the CPU, where a kernel call costs no launch and reading a value no device sync.

    Three memory passes per tensor, each one of PyTorch's own vectorised, multi-threaded reductions: the
    sum (cascade summation), the sum of squares (:func:`_sum_squares`) and
    ``aminmax``; ``count_nonzero`` over the sampled entries (``strides``). The standard deviation is
    derived from the sum and the sum of squares except where that cancels (``|mean| > std / 2``
    roughly: ``n mean^2 > ||g||^2 / 4``), where ``||g - mean||`` is measured directly with
    ``torch.dist``. NaN/Inf counts are only taken when a sum is not finite.
    """
    n = len(g)
    step = list(strides) or [1] * n
    head = torch.empty(5, n, dtype=torch.float64)  # sum, sum of squares, min, max, nonzero (sampled)
    numels = [t.numel() for t in g]
    keys = [(k, step[i], t.shape) if k <= _SMALL else None for i, (k, t) in enumerate(zip(numels, g))]
    stacks = _stacks(keys)
    stacked = {i for idx in stacks for i in idx}
    large = [i for i in range(n) if i not in stacked]  # one by one
    flat: list[torch.Tensor | None] = [None] * n  # 1-D views, made only where needed
    rows_of: list[tuple[list[int], torch.Tensor]] = []
    for idx in stacks:  # many small tensors: a few row-wise reductions per shape
        s = step[idx[0]]
        rows = _stacked_rows([g[i] for i in idx])
        rows_of.append((idx, rows))
        head[:, idx] = torch.stack(
            [
                rows.sum(1),
                torch.linalg.vector_norm(rows, dim=1).square(),
                rows.amin(1),
                rows.amax(1),
                torch.count_nonzero(rows if s == 1 else rows[:, ::s], dim=1),
            ]
        ).to(torch.float64)
    if large:
        for i in large:
            flat[i] = _flat(g[i])
        big: list[torch.Tensor] = [flat[i] for i in large]  # type: ignore[misc]
        total = [x.sum() for x in big]  # cascade summation
        lo_hi = [torch.aminmax(x) for x in big]
        nonzero = [torch.count_nonzero(x[:: step[i]]) for i, x in zip(large, big)]
        values = torch.stack([*total, *_sum_squares(big), *(v for pair in lo_hi for v in pair), *nonzero])
        m = len(large)
        head[:, large] = torch.stack(
            [
                values[:m],
                values[m : 2 * m],
                values[2 * m : 4 * m : 2],
                values[2 * m + 1 : 4 * m : 2],
                values[4 * m :],
            ]
        ).to(torch.float64)
    total_t, sq_t, lo, hi, nonzero_t = head
    if extremes is not None:  # [2, n] float64: min and max
        extremes.append(head[2:4])
    sizes = torch.tensor(numels, dtype=torch.float64)
    max_abs = torch.maximum(hi, -lo)
    # entries below sqrt(smallest normal) (about 1e-19 in float32) have squares that underflow: those
    # tensors' sums of squares (and centred norms) are taken again in float64
    tiny = (max_abs > 0) & (max_abs < 16 * math.sqrt(torch.finfo(g[0].dtype).tiny))
    tiny_at = set(torch.nonzero(tiny).flatten().tolist()) if bool(tiny.any()) else set()
    left = set(tiny_at)
    for at, sub in _stacked_subsets(rows_of, left):  # row-wise on the stacked copies (vanishing layers)
        head[1, at] = torch.linalg.vector_norm(sub.double(), dim=1).square()
        left.difference_update(at)
    for i in left:
        x = flat[i] if flat[i] is not None else _flat(g[i])
        head[1, i] = torch.dot(x.double(), x.double())
    centered_t = torch.full((n,), -1.0, dtype=torch.float64)  # -1: derive the std from the sums
    if bool(torch.isfinite(total_t).all()) and bool(torch.isfinite(sq_t).all()):
        counts = head.new_zeros(2, n)
        norm_t = torch.sqrt(sq_t)
    else:
        dense = [x if x is not None else _flat(t) for x, t in zip(flat, g)]
        counts = _nonfinite_counts(g)
        bad = counts[0] > 0
        # a finite tensor whose sum of squares overflowed float32: its norm in float64
        norm_t = torch.stack(
            [
                torch.linalg.vector_norm(x, dtype=torch.float64) if not math.isfinite(q) else torch.sqrt(qt)
                for x, q, qt in zip(dense, sq_t.tolist(), sq_t)
            ]
        )
        # a finite tensor whose float32 sum overflowed (entries near 3e38): its sum in float64
        total_t = torch.stack(
            [
                x.sum(dtype=torch.float64) if not math.isfinite(v) and c == 0 else vt
                for x, v, vt, c in zip(dense, total_t.tolist(), total_t, counts[0].tolist())
            ]
        )
        # propagate like the foreach kernels do: NaN/Inf in norm, max |g| and the centred norm
        direct = torch.stack(compat.foreach_norm(g, 2)).to(torch.float64)
        norm_t = torch.where(bad, direct, norm_t)
        max_abs = torch.where(bad & (counts[1] > 0), torch.nan, torch.where(bad, torch.inf, max_abs))
        centered_t = torch.where(bad, torch.nan, centered_t)
    mean_t = total_t / sizes
    # where the mean dominates, ||g||^2 / n - mean^2 cancels: measure ||g - mean|| directly there
    cancels = (
        torch.isfinite(norm_t) & torch.isfinite(mean_t) & (sizes * mean_t * mean_t > 0.25 * norm_t * norm_t)
    )
    todo = set(torch.nonzero(cancels).flatten().tolist())
    for at, sub in _stacked_subsets(rows_of, todo - tiny_at, _STACK_MIN):  # row-wise, stacked copies
        centered = _centred_norm(sub - mean_t[at].to(sub.dtype)[:, None], dim=1)
        ok = torch.isfinite(centered)
        centered_t[at] = torch.where(ok, centered, centered_t[at])
        todo -= {i for i, good in zip(at, ok.tolist()) if good}
    for i in sorted(todo):
        x = flat[i] if flat[i] is not None else _flat(g[i])
        centered_t[i] = _centred_norm(x - mean_t[i].to(x.dtype))
    return torch.stack([norm_t, max_abs, total_t, nonzero_t, counts[0], counts[1], centered_t], dim=1)


def _centred_norm(d: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``sqrt(sum d^2 - (sum d)^2 / n)`` in float64, ``d`` the entries minus their (rounded) mean.

    The corrected two-pass algorithm (Chan, Golub and LeVeque, "Algorithms for computing the sample
    variance", 1983): the mean's own rounding (a float32 mean of a tensor whose mean dominates is off by
    up to half an ulp, enough to make ``||g - mean||`` several times too large, or nonzero for a constant
    gradient) cancels to first order. ``d`` is exact where the entries are close to the mean (Sterbenz);
    its squares and sums are taken in float64 (no overflow past 1e19, no underflow below 1e-19).
    """
    if dim is None:
        squares = torch.linalg.vector_norm(d, dtype=torch.float64).square()
        total = d.sum(dtype=torch.float64)
        n = d.numel()
    else:
        squares = torch.linalg.vector_norm(d, dim=dim, dtype=torch.float64).square()
        total = d.sum(dim, dtype=torch.float64)
        n = d.shape[dim]
    return torch.sqrt(torch.clamp(squares - total * total / max(n, 1), min=0.0))


def _device_chunk(g: list[torch.Tensor], strides: Sequence[int] = ()) -> torch.Tensor:
    """Raw columns with the foreach kernels (accelerators without Triton): a few launches per statistic.

    The L2 norm is reduced in float64 (``_foreach_norm(dtype=float64)``): squares of entries below about
    1e-19 underflow float32, and of entries above about 1e19 overflow it.
    """
    n = len(g)
    norm = torch.stack(compat.foreach_norm(g, 2, dtype=torch.float64))
    sampled = [t if s == 1 else _flat(t)[::s] for t, s in zip(g, list(strides) or [1] * n)]
    nonzero = compat.foreach_norm(sampled, 0)  # count of entries != 0 (among the sampled ones)
    a = compat.foreach_abs(g)
    max_abs = compat.foreach_max(a)
    abs_sum = compat.foreach_norm(a, 1)
    del a
    pos = compat.foreach_clamp_min(g, 0.0)
    pos_sum = compat.foreach_norm(pos, 1)
    del pos
    flat = torch.stack([*max_abs, *pos_sum, *abs_sum, *nonzero]).view(4, n).to(torch.float64)
    total = 2 * flat[1] - flat[2]  # sum(g) = 2 sum(g+) - sum|g|: there is no foreach sum
    counts = _nonfinite_counts(g)
    centered = flat.new_full((n,), -1.0)  # std derived on the host from the norm and the sum
    return torch.stack([norm, flat[0], total, flat[3], counts[0], counts[1], centered], dim=1)


def _nonfinite_counts(g: list[torch.Tensor]) -> torch.Tensor:
    """``[2, n]`` float64: number of non-finite (NaN or +-Inf) entries, and of NaN entries, per tensor."""
    n = len(g)
    a = compat.foreach_abs(g)
    # |g| - max_finite is <= 0 for finite entries, +inf/NaN otherwise
    compat.foreach_sub_(a, torch.finfo(g[0].dtype).max)
    compat.foreach_clamp_min_(a, 0.0)
    nonfinite = compat.foreach_norm(a, 0)
    # clamping maps +inf to 1 and keeps NaN; times 0 leaves NaN only where g was NaN
    compat.foreach_clamp_max_(a, 1.0)
    compat.foreach_mul_(a, 0.0)
    nan = compat.foreach_norm(a, 0)
    return torch.stack([*nonfinite, *nan]).view(2, n).to(torch.float64)
