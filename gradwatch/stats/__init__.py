"""Pure tensor functions that compute gradient statistics on the tensors' own device.

No hooks, no I/O and no host synchronisation on CUDA: every function returns device tensors, and the
caller copies them to the host once per recorded step. Work is grouped per (device, dtype), in chunks of
at most :data:`CHUNK_ELEMENTS` entries so that transient memory stays bounded whatever the model size:

* on CUDA without Triton, ``torch._foreach_*`` kernels: one launch per statistic per chunk instead of one
  per tensor;
* on the CPU (no launch cost; reading a value costs no device sync): tensors of at most
  ``host.MAX_TENSOR`` entries in one float64 copy per group and numpy segment reductions
  (:mod:`gradwatch.stats.host`: per-call overhead dominates small tensors); larger ones with PyTorch's
  vectorised, multi-threaded reductions, one memory pass per statistic (and, with the host path switched
  off, small tensors row-wise over a stacked copy per shape);
* on CUDA with Triton, one multi-tensor kernel launch per (device, dtype) group (:mod:`.fused`).

Per-tensor raw columns (:data:`RAW_FIELDS`) are sums and counts; means and standard deviations are
derived on the host from them and the tensors' sizes (which the host already knows), so no size tensor
ever has to be sent to the device. The zero count, the parameter norm and the update-to-weight ratio of
tensors of more than :data:`SAMPLE_SIZE` entries are read from a fixed sample of at most that many
entries (:func:`sample_stride`, :func:`sample_view`).

Modules: :mod:`.host` (numpy, small CPU tensors), :mod:`.batched` (pure torch), :mod:`.fused` and
:mod:`.triton_kernels` (Triton), :mod:`.samples` (sampled entries), :mod:`.binning` (histograms), and
:mod:`.reference`: the plain float64 definition of every column, which ``tests/test_engines.py`` holds
every engine to. This module only dispatches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from gradwatch import compat
from gradwatch.stats import fused, host
from gradwatch.stats.batched import (
    _SMALL,
    CHUNK_ELEMENTS,
    Block,
    _blocks,
    _blocks_at,
    _cpu_chunk,
    _device_chunk,
    _host,
    _stacked_rows,
    _stacks,
)
from gradwatch.stats.binning import histograms
from gradwatch.stats.samples import (
    SAMPLE_SIZE,
    SampleLayout,
    Samples,
    sample_distances,
    sample_norms,
    sample_stride,
    sample_view,
    take_samples,
    update_and_change,
)

__all__ = [
    "CHUNK_ELEMENTS",
    "RAW_FIELDS",
    "SAMPLE_SIZE",
    "Block",
    "SampleLayout",
    "Samples",
    "all_finite",
    "grad_and_param_stats",
    "reads_freely",
    "grad_stats",
    "histograms",
    "sample_distances",
    "sample_norms",
    "sample_stride",
    "sample_view",
    "take_samples",
    "update_and_change",
]

#: Columns returned by :func:`grad_stats`, per tensor: L2 norm, max |g|, sum of entries, number of
#: nonzero entries (NaN counts as nonzero; among the sampled entries when :func:`grad_stats` is given
#: sample strides), number of non-finite entries (NaN or +-Inf), number of NaN,
#: and ``||g - mean(g)||`` where it is measured directly (the CPU path), else -1 (derive the standard
#: deviation from the norm and the sum).
RAW_FIELDS = ("norm", "max_abs", "sum", "nonzero", "nonfinite", "nan", "centered")


def grad_stats(
    grads: Sequence[torch.Tensor | None],
    strides: Sequence[int] = (),
    ranges: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> list[Block]:
    """Raw statistics of each tensor in ``grads``, batched per (device, dtype).

    Args:
        grads: gradients (any floating dtype, any device, dense or sparse); ``None`` and empty tensors
            are skipped (they appear in no block).
        strides: optional, aligned with ``grads``: count the nonzero entries only among the sampled
            entries ``flat[::stride]`` (:func:`sample_stride`); 1 or absent: among all of them.
        ranges: optional dict, filled in: position in ``grads`` -> ``(min, max)`` of that tensor as
            float64 0-dim tensors (NaN propagates), where the statistics computed them anyway (the CPU
            path), for :func:`histograms` to reuse.

    Returns:
        Blocks ``(positions, stats)``: ``stats`` is a ``[len(positions), len(RAW_FIELDS)]`` float64
        tensor on the gradients' device. bf16/fp16 values are upcast to float32 before reducing; float64
        stays float64. NaN/Inf propagate into ``norm``, ``max_abs`` and ``sum`` and are counted in
        ``nonfinite``/``nan``. ``nonzero`` counts within the sample when a stride is given.
    """
    step = list(strides) or [1] * len(grads)

    def reduce(g: list[torch.Tensor], pos: list[int]) -> torch.Tensor:
        chunk_strides = [step[i] for i in pos]
        if _host(g[0].device):
            extremes: list[torch.Tensor] = []
            out = _cpu_chunk(g, chunk_strides, extremes)
            if ranges is not None:  # (unbind: one call for the 0-dim views, not an indexing per entry)
                lo, hi = extremes[0]
                ranges.update(zip(pos, zip(lo.unbind(), hi.unbind())))
            return out
        return _device_chunk(g, chunk_strides)

    fused_blocks, rest = _fused_blocks(grads, step)
    host_blocks, rest = _host_blocks(rest, step, ranges)
    return fused_blocks + host_blocks + _blocks_at(rest, reduce)


def reads_freely(device: torch.device) -> bool:
    """Whether reading a value of a tensor on ``device`` on the host costs no device sync (the CPU).

    False on accelerators, and on the CPU while the tests run the accelerator paths there
    (``fused.force_on_cpu``).
    """
    return _host(device)


def _host_total(tensors: Sequence[torch.Tensor | None]) -> int:
    """Entries of ``tensors`` together when :mod:`.host` reads every one of them, else -1.

    (:func:`host.eligible`, inlined into one loop: this runs at every backward pass and recorded step.)
    """
    if not host.ENABLED or fused.force_on_cpu:
        return -1
    total, most, strided = 0, host.MAX_TENSOR, torch.strided
    for t in tensors:
        if t is None or not t.is_cpu or t.layout != strided or not 0 < (n := t.numel()) <= most:
            return -1
        total += n
    return total


def grad_and_param_stats(
    grads: Sequence[torch.Tensor | None], strides: Sequence[int], samples: Samples
) -> torch.Tensor | None:
    """The raw gradient columns and the parameters' sample norms in one ``[n, 8]`` float64 CPU block.

    The one-copy path of a small CPU model (:func:`gradwatch.stats.host.grad_stats` with ``norms_of``):
    the gradients and the samples just taken (:class:`Samples`, aligned with ``grads``) are reduced in
    the same numpy calls. Columns: :data:`RAW_FIELDS`, then the L2 norm of each sample (what
    :func:`sample_norms` gives). None where it does not apply (a gradient missing, empty, not a small CPU
    strided one, more than ``host.MAX_GROUP`` entries together, or samples not all on the host): then
    :func:`grad_stats` and :func:`sample_norms` measure them.
    """
    if not samples.layout.host_only or samples.host is None or len(grads) != len(samples.layout.host):
        return None
    if host.ENABLED and not fused.force_on_cpu:  # (the compiled pass: one loop, one call)
        raw = host.native_grad_and_norms(grads, strides, samples.host, samples.layout.host_starts)
        if raw is not None:
            return raw
    total = _host_total(grads)
    if not 0 < total <= host.MAX_GROUP // 2:
        return None
    raw, _ = host.grad_stats(grads, strides, norms_of=(samples.host, samples.layout.host_starts))  # type: ignore[arg-type]
    return raw


def _host_chunks(
    tensors: Sequence[torch.Tensor | None], any_size: bool = False
) -> tuple[list[list[int]], list[torch.Tensor | None]]:
    """The CPU tensors :mod:`.host` reads, and ``tensors`` with those replaced by None.

    Small ones (:func:`host.eligible`) in chunks of at most ``host.MAX_GROUP`` entries (the numpy path
    copies each chunk). With ``any_size``, where the compiled pass is built, every CPU tensor it reads
    in place (:func:`host.native_reads`, any size: no copy) goes into one chunk first: one C call, one
    pass per tensor on one thread.
    """
    if not host.ENABLED or fused.force_on_cpu:
        return [], list(tensors)
    chunks: list[list[int]] = []
    direct: set[int] = set()
    if any_size and host.NATIVE:
        direct = {i for i, t in enumerate(tensors) if t is not None and host.native_reads(t)}
        if direct:
            chunks.append(sorted(direct))
    size = host.MAX_GROUP
    for i, t in enumerate(tensors):
        if t is not None and i not in direct and host.eligible(t):
            n = t.numel()
            if size + n > host.MAX_GROUP:
                chunks.append([])
                size = 0
            chunks[-1].append(i)
            size += n
    if not chunks:
        return [], list(tensors)
    taken = {i for c in chunks for i in c}
    return chunks, [None if i in taken else t for i, t in enumerate(tensors)]


def _host_blocks(
    tensors: Sequence[torch.Tensor | None],
    strides: Sequence[int],
    ranges: dict[int, tuple[torch.Tensor, torch.Tensor]] | None,
) -> tuple[list[Block], list[torch.Tensor | None]]:
    """The raw columns of the small CPU tensors (:mod:`.host`), and the tensors left for the other paths."""
    chunks, rest = _host_chunks(tensors, any_size=True)
    blocks: list[Block] = []
    for idx in chunks:
        chunk = [t for i in idx if (t := tensors[i]) is not None]
        raw, extremes = host.grad_stats(chunk, [strides[i] for i in idx], ranges is not None)
        if ranges is not None and extremes is not None:
            lo, hi = extremes
            ranges.update(zip(idx, zip(lo.unbind(), hi.unbind())))
        blocks.append((idx, raw))
    return blocks, rest


def _fused_blocks(
    tensors: Sequence[torch.Tensor | None], strides: Sequence[int]
) -> tuple[list[Block], list[torch.Tensor | None]]:
    """The groups :mod:`gradwatch.stats.fused` handles (one Triton launch each), and the tensors left over.

    Returns the blocks of raw columns for the fused groups, and ``tensors`` with those entries replaced
    by None (for the other paths). On the CPU (unless the tests force it) nothing is fused.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    readable: dict[int, torch.Tensor] = {}
    on: dict[torch.device, bool] = {}
    for i, t in enumerate(tensors):
        if t is None:
            continue
        device = t.device
        ok = on.get(device)
        if ok is None:
            ok = on[device] = fused.enabled(device)
        if not ok or t.numel() == 0:
            continue
        if t.requires_grad or t.is_sparse or t.is_complex() or not t.is_contiguous():
            t = fused.readable(t.detach())
        if t.dtype not in fused.FUSED_DTYPES:
            continue
        readable[i] = t
        groups.setdefault((device, t.dtype), []).append(i)
    if not groups:
        return [], list(tensors)
    blocks: list[Block] = []
    try:
        for idx in groups.values():
            raw, _ = fused.grad_stats([readable[i] for i in idx], [strides[i] for i in idx])
            blocks.append((idx, raw))
    except Exception as err:  # a kernel that does not compile or run here: the torch paths instead
        fused.disable(err)
        return [], list(tensors)
    rest = [None if i in readable else t for i, t in enumerate(tensors)]
    return blocks, rest


#: Passes touching at most this many tensors try the one-flag path of :func:`all_finite` first.
_FEW_FLAGS = 64


def all_finite(tensors: Sequence[torch.Tensor | None]) -> list[Any]:
    """Flags, one per device and dtype chunk, true where every entry of those tensors is finite.

    Without a host read; read them with ``bool()``. CPU tensors :mod:`.host` reads (small ones; any
    size where its compiled pass is built): a :class:`~gradwatch.stats.host.DeferredFinite` flag per
    chunk, computed when first read or settled (see there for what that means for tensors written in
    place in between). Others: 0-dim bool tensors. Other CPU tensors: one cascade ``sum`` per tensor
    (small same-size tensors summed stacked, row-wise): a sum is finite exactly when no entry is NaN or
    +-Inf (barring an overflow past about 3e38). Elsewhere one batched L2 norm per chunk (one kernel
    launch; its sum of squares overflows only past about 1e19 per entry in float32).
    """
    if len(tensors) <= _FEW_FLAGS and 0 < _host_total(tensors) <= host.MAX_GROUP // 2:
        return [host.DeferredFinite(tensors)]  # type: ignore[arg-type]  # (a small CPU model: one flag)
    chunks, rest = _host_chunks(tensors, any_size=True)
    flags: list[Any] = [
        host.DeferredFinite([t for i in idx if (t := tensors[i]) is not None]) for idx in chunks
    ]

    def reduce(t: list[torch.Tensor]) -> torch.Tensor:
        if not _host(t[0].device):
            return torch.stack(compat.foreach_norm(t, 2)).sum().isfinite().reshape(1, 1)
        groups = _stacks([(k, x.shape) if (k := x.numel()) <= _SMALL else None for x in t])
        stacked = {j for js in groups for j in js}
        parts = [_stacked_rows([t[j] for j in js]).sum(1) for js in groups]
        parts += [x.sum().reshape(1) for j, x in enumerate(t) if j not in stacked]
        return torch.cat(parts).sum().isfinite().reshape(1, 1)

    return flags + [block.all() for _, block in _blocks(rest, reduce)]
