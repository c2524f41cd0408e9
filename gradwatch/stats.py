"""Pure tensor functions that compute gradient statistics on the tensors' own device.

No hooks, no I/O and no host synchronisation: every function returns device tensors, and the caller
copies them to the host once per recorded step. Reductions are batched over all tensors of one
(device, dtype) group with the ``torch._foreach_*`` kernels (one kernel launch per statistic per group on
CUDA, instead of one per tensor), in chunks of at most :data:`CHUNK_ELEMENTS` entries so that the transient
memory stays bounded whatever the model size.

Per-tensor raw columns (:data:`RAW_FIELDS`) are sums and counts; means and standard deviations are
derived on the host from them and the tensors' sizes (which the host already knows), so no size tensor
ever has to be sent to the device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = [
    "CHUNK_ELEMENTS",
    "RAW_FIELDS",
    "Block",
    "all_finite",
    "grad_stats",
    "histograms",
    "norms",
    "param_norms",
    "snapshot",
    "update_norms",
]

#: Upper bound on the entries processed by one batched call; bounds the transient memory of
#: :func:`grad_stats` to about two float32 copies of this many entries (128 MiB).
CHUNK_ELEMENTS = 1 << 24

#: Columns returned by :func:`grad_stats`, per tensor: L2 norm, max |g|, sum of entries, number of
#: nonzero entries (NaN counts as nonzero), number of non-finite entries (NaN or +-Inf), number of NaN,
#: and ``||g - mean(g)||`` where it is measured directly (the CPU path), else -1 (derive the standard
#: deviation from the norm and the sum).
RAW_FIELDS = ("norm", "max_abs", "sum", "nonzero", "nonfinite", "nan", "centered")

#: A block of results: positions in the caller's list, and a ``[len(positions), k]`` tensor.
Block = tuple[list[int], torch.Tensor]


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
    blocks: list[Block] = []
    for (_, dtype), idx in _groups(tensors).items():
        cdt = _compute_dtype(dtype)
        rows = [
            reduce([_prepare(tensors[i], cdt) for i in chunk])  # type: ignore[arg-type]
            for chunk in _chunks(idx, tensors)
        ]
        blocks.append((idx, torch.cat(rows) if len(rows) > 1 else rows[0]))
    return blocks


def grad_stats(grads: Sequence[torch.Tensor | None]) -> list[Block]:
    """Raw statistics of each tensor in ``grads``, batched per (device, dtype).

    Args:
        grads: gradients (any floating dtype, any device, dense or sparse); ``None`` and empty tensors
            are skipped (they appear in no block).

    Returns:
        Blocks ``(positions, stats)``: ``stats`` is a ``[len(positions), len(RAW_FIELDS)]`` float64
        tensor on the gradients' device. bf16/fp16 values are upcast to float32 before reducing; float64
        stays float64. NaN/Inf propagate into ``norm``, ``max_abs`` and ``sum`` and are counted in
        ``nonfinite``/``nan``.

    Computed with 6 batched reductions and 2 transient buffers the size of one chunk.
    """
    return _blocks(grads, lambda g: _cpu_chunk(g) if g[0].device.type == "cpu" else _device_chunk(g))


def _cpu_chunk(g: list[torch.Tensor]) -> torch.Tensor:
    """Raw columns on the CPU, where a kernel call costs no launch and reading a value no device sync.

    Sums and min/max use PyTorch's own per-tensor reductions (cascade summation, exact min/max), which
    are both faster on the CPU than the foreach kernels for the same statistic and more accurate.
    """
    n = len(g)
    total = [t.sum() for t in g]  # cascade summation
    means = [s / t.numel() for s, t in zip(total, g)]
    centered = [torch.dist(t, m) for t, m in zip(g, means)]  # ||g - mean||, no cancellation
    lo_hi = [torch.aminmax(t) for t in g]
    nonzero = [torch.count_nonzero(t) for t in g]
    flat = torch.stack([*total, *centered, *(x for pair in lo_hi for x in pair)]).to(torch.float64)
    total_t, centered_t = flat[:n], flat[n : 2 * n]
    lo, hi = flat[2 * n :: 2], flat[2 * n + 1 :: 2]
    sizes = torch.tensor([t.numel() for t in g], dtype=torch.float64)
    mean_t = total_t / sizes
    # ||g||^2 = ||g - mean||^2 + n mean^2, exact in float64 from two accurate float32 reductions
    norm_t = torch.sqrt(centered_t * centered_t + sizes * mean_t * mean_t)
    max_abs = torch.maximum(hi, -lo)
    nonzero_t = torch.stack(nonzero).to(torch.float64)
    if bool(norm_t.sum().isfinite()):  # a finite norm: nothing non-finite to count
        counts = flat.new_zeros(2, n)
    else:
        counts = _nonfinite_counts(g)
        bad = counts[0] > 0
        # propagate like the foreach kernels do: NaN/Inf in norm, max |g| and the centred norm
        direct = torch.stack(torch._foreach_norm(g, 2)).to(torch.float64)
        norm_t = torch.where(bad, direct, norm_t)
        max_abs = torch.where(bad & (counts[1] > 0), torch.nan, torch.where(bad, torch.inf, max_abs))
        centered_t = torch.where(bad, torch.nan, centered_t)
    return torch.stack([norm_t, max_abs, total_t, nonzero_t, counts[0], counts[1], centered_t], dim=1)


def _device_chunk(g: list[torch.Tensor]) -> torch.Tensor:
    """Raw columns with the foreach kernels: one launch per statistic for the whole chunk (CUDA)."""
    n = len(g)
    norm = torch._foreach_norm(g, 2)
    nonzero = torch._foreach_norm(g, 0)  # count of entries != 0
    a = torch._foreach_abs(g)
    max_abs = torch._foreach_max(a)
    abs_sum = torch._foreach_norm(a, 1)
    del a
    pos = torch._foreach_clamp_min(g, 0.0)
    pos_sum = torch._foreach_norm(pos, 1)
    del pos
    flat = torch.stack([*norm, *max_abs, *pos_sum, *abs_sum, *nonzero]).view(5, n).to(torch.float64)
    flat[2] = 2 * flat[2] - flat[3]  # sum(g) = 2 sum(g+) - sum|g|: there is no foreach sum
    counts = _nonfinite_counts(g)
    centered = flat.new_full((1, n), -1.0)  # std derived on the host from the norm and the sum
    return torch.cat([flat[[0, 1, 2, 4]], counts, centered]).T


def _nonfinite_counts(g: list[torch.Tensor]) -> torch.Tensor:
    """``[2, n]`` float64: number of non-finite (NaN or +-Inf) entries, and of NaN entries, per tensor."""
    n = len(g)
    a = torch._foreach_abs(g)
    # |g| - max_finite is <= 0 for finite entries, +inf/NaN otherwise
    torch._foreach_sub_(a, torch.finfo(g[0].dtype).max)
    torch._foreach_clamp_min_(a, 0.0)
    nonfinite = torch._foreach_norm(a, 0)
    # clamping maps +inf to 1 and keeps NaN; times 0 leaves NaN only where g was NaN
    torch._foreach_clamp_max_(a, 1.0)
    torch._foreach_mul_(a, 0.0)
    nan = torch._foreach_norm(a, 0)
    return torch.stack([*nonfinite, *nan]).view(2, n).to(torch.float64)


def all_finite(tensors: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
    """0-dim bool tensors (one per device and dtype chunk), True where every entry of those tensors is finite.

    One batched L2 norm per chunk: the norm is finite exactly when no entry is NaN or +-Inf (barring an
    overflow of the sum of squares, which float32 reaches only past about 1e19 per entry).
    """
    blocks = _blocks(tensors, lambda t: torch.stack(torch._foreach_norm(t, 2)).sum().isfinite().reshape(1, 1))
    return [flags.all() for _, flags in blocks]


def norms(tensors: Sequence[torch.Tensor | None]) -> list[Block]:
    """L2 norm of each tensor, as blocks of ``[n, 1]`` float64 tensors on the tensors' devices."""
    return _blocks(tensors, lambda t: torch.stack(torch._foreach_norm(t, 2)).to(torch.float64)[:, None])


def param_norms(tensors: Sequence[torch.Tensor | None]) -> list[Block]:
    """L2 norm and sum of entries of each tensor: blocks of ``[n, 2]`` float64 tensors.

    The sum is a second fingerprint of the weights (a norm-preserving change moves it). On the CPU it is
    PyTorch's cascade ``sum`` per tensor; elsewhere ``2 sum(max(p, 0)) - sum|p|`` with foreach kernels.
    """

    def reduce(t: list[torch.Tensor]) -> torch.Tensor:
        if t[0].device.type == "cpu":
            both = torch.stack([*torch._foreach_norm(t, 2), *(x.sum() for x in t)]).view(2, len(t))
        else:
            both = _device_norm_and_sum(t)
        return both.T.to(torch.float64)

    return _blocks(tensors, reduce)


def _device_norm_and_sum(t: list[torch.Tensor]) -> torch.Tensor:
    """``[2, n]``: L2 norm and sum of each tensor with foreach kernels (there is no foreach sum)."""
    n = len(t)
    pos = torch._foreach_norm(torch._foreach_clamp_min(t, 0.0), 1)
    both = torch.stack([*torch._foreach_norm(t, 2), *pos, *torch._foreach_norm(t, 1)]).view(3, n)
    return torch.stack([both[0], 2 * both[1] - both[2]])


def snapshot(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """A detached copy of each parameter (one batched clone per device and dtype), for update ratios."""
    out: list[torch.Tensor] = [torch.empty(0)] * len(params)
    for _, idx in _groups(params).items():
        for chunk in _chunks(idx, params):
            copies = torch._foreach_clone([params[i].detach() for i in chunk])  # type: ignore[attr-defined]
            for i, c in zip(chunk, copies):
                out[i] = c
    return out


def update_norms(params: Sequence[torch.Tensor], before: Sequence[torch.Tensor]) -> list[Block]:
    """``||params[i] - before[i]||`` for each i, as blocks like :func:`norms`.

    float32/float64 differences are taken in place in ``before`` (which is consumed); bf16/fp16 ones
    are taken in float32, where the difference of two half-precision numbers is exact.
    """
    diffs: list[torch.Tensor | None] = [None] * len(params)
    for (_, dtype), idx in _groups(params).items():
        for chunk in _chunks(idx, params):
            now = [params[i].detach() for i in chunk]
            old = [before[i] for i in chunk]
            out: Sequence[torch.Tensor]
            if dtype in (torch.float32, torch.float64):
                torch._foreach_sub_(old, now)
                out = old
            else:
                out = torch._foreach_sub([t.float() for t in old], [t.float() for t in now])
            for i, d in zip(chunk, out):
                diffs[i] = d
    return norms(diffs)


def _finite_histogram(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bins: int) -> torch.Tensor:
    """A histogram row of an all-finite float64 vector with min ``lo`` and max ``hi`` (same rule as below)."""
    flat = hi == lo
    r_lo = torch.where(flat, lo - 0.5, lo)
    r_hi = torch.where(flat, hi + 0.5, hi)
    pos = x - r_lo
    pos.mul_(bins).div_(r_hi - r_lo)  # (x - lo) * bins / (hi - lo), in this order, as torch.histc
    counts = torch.bincount(pos.to(torch.int64).clamp_(0, bins - 1), minlength=bins).to(torch.float64)
    edges = r_lo + (r_hi - r_lo) * torch.arange(1, bins + 1, dtype=torch.float64, device=x.device) / bins
    num = torch.full((), float(x.numel()), dtype=torch.float64, device=x.device)
    head = torch.stack([lo, hi, num, x.sum(), torch.dot(x, x)])
    return torch.cat([head, edges, counts])


def histograms(tensors: Sequence[torch.Tensor], bins: int) -> torch.Tensor:
    """Histogram of the finite entries of each tensor, binned on the tensors' device.

    Bins are ``bins`` equal-width buckets between the finite minimum and maximum of each tensor (the
    rule of ``torch.histc``/``numpy.histogram``; a constant tensor gets the range ``[v - 0.5, v + 0.5]``
    as in ``numpy.histogram``). NaN and +-Inf are left out of every bucket and of ``num``.

    Args:
        tensors: non-empty tensors, all on one device.
        bins: number of buckets, >= 1.

    Returns:
        ``[len(tensors), 5 + 2 * bins]`` float64 tensor on that device; each row is
        ``min, max, num, sum, sum_squares`` (of the finite entries), then ``bins`` right bucket edges,
        then ``bins`` counts: the arguments of ``SummaryWriter.add_histogram_raw``.
    """
    xs64 = [_prepare(t, torch.float64).reshape(-1) for t in tensors]
    ranges = [torch.aminmax(x) for x in xs64]  # NaN propagates, +-Inf shows in the range
    # one host read per call (histogram steps are written out anyway): which tensors are all finite
    all_finite = torch.stack([torch.stack(r) for r in ranges]).isfinite().all(dim=1).tolist()
    rows = []
    for x, (lo, hi), fast in zip(xs64, ranges, all_finite):
        if fast:  # the usual case: no masking needed, about half the passes over the data
            rows.append(_finite_histogram(x, lo, hi, bins))
            continue
        finite = torch.isfinite(x)
        num = finite.sum().to(torch.float64)
        lo = torch.where(finite, x, torch.inf).min()
        hi = torch.where(finite, x, -torch.inf).max()
        empty = num == 0
        lo = data_lo = torch.where(empty, 0.0, lo)
        hi = data_hi = torch.where(empty, 0.0, hi)
        flat = hi == lo
        lo = torch.where(flat, lo - 0.5, lo)
        hi = torch.where(flat, hi + 0.5, hi)
        xs = torch.where(finite, x, lo)
        pos = ((xs - lo) * bins / (hi - lo)).to(torch.int64).clamp_(0, bins - 1)
        counts = torch.zeros(bins, dtype=torch.float64, device=x.device)
        counts.scatter_add_(0, pos, finite.to(torch.float64))
        edges = lo + (hi - lo) * torch.arange(1, bins + 1, dtype=torch.float64, device=x.device) / bins
        xf = torch.where(finite, x, 0.0)
        # min/max of the data itself: (v - 0.5) + 0.5 is not always v in floating point
        head = torch.stack([data_lo, data_hi, num, xf.sum(), (xf * xf).sum()])
        rows.append(torch.cat([head, edges, counts]))
    return torch.stack(rows)
