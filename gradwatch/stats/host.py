"""The CPU path for small tensors: statistics of a whole group from one float64 copy, with numpy.

On the CPU a PyTorch operator call costs a few microseconds of dispatch whatever its size, and a small
model's gradients are a few thousand entries each: per-tensor calls, not memory traffic, set the cost
(measured: 0.35 ms of statistics per step for the six tensors of a 13k-parameter MLP). Here a group of
small CPU tensors is copied once into one contiguous float64 buffer (one ``torch.cat``, which also
converts bf16/fp16/float32 exactly), and every statistic is one numpy segment reduction over that buffer
(``np.add.reduceat`` and friends: about a microsecond of overhead each), so the number of calls does not
grow with the number of tensors.

Accumulation is in float64 throughout: squares of float32 entries are exact in float64 (48 significant
bits), never underflow (the smallest float32 square is about 2e-90) and never overflow (the largest is
about 1e77); float64 entries beyond ``[1e-150, 1e150]`` are rescaled (:func:`grad_stats`).

Where the optional C extension :mod:`gradwatch.stats._native` was built (``setup.py``; :data:`NATIVE`),
the same columns come from one compiled pass per tensor instead of the numpy calls, reading each
tensor in place (no float64 copy): measured on the digits MLP's six gradients, 4 us instead of 45 us
for :func:`grad_stats` alone, and more inside a training step, where each numpy call runs with cold
caches after the backward pass. Both paths compute in float64 and give the same values to rounding
(``tests/test_host.py`` runs every test on both); bf16 tensors, which numpy cannot view, take the
numpy path with a ``torch.cat`` conversion.

Used by :mod:`gradwatch.stats` when :data:`ENABLED` (tests turn it off to run the torch path on the
same inputs): for CPU tensors of at most :data:`MAX_TENSOR` entries, and with the extension for CPU
float tensors of any size (:func:`native_reads`: its one pass beats PyTorch's three). Without it,
larger tensors keep PyTorch's multi-threaded reductions, where the memory pass costs more than the call.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np
import torch

from gradwatch import compat

try:  # the optional C extension (setup.py); absent where no C compiler built it
    from gradwatch.stats import _native
except ImportError:  # pragma: no cover - depends on the build
    _native = None  # type: ignore[assignment]

__all__ = [
    "DeferredFinite",
    "ENABLED",
    "MAX_GROUP",
    "MAX_TENSOR",
    "NATIVE",
    "all_finite",
    "distances",
    "eligible",
    "gather",
    "grad_stats",
    "update_and_change",
    "memory_order",
    "native_grad_and_norms",
    "native_reads",
    "size",
    "starts",
]

#: Whether the CPU statistics of small tensors take this path (the tests switch it off to compare).
ENABLED = True

#: Whether the compiled pass (:mod:`gradwatch.stats._native`) computes the statistics: True where the
#: extension was built. The tests set it False to hold the numpy path to the same results.
NATIVE = _native is not None

#: dtypes the compiled pass reads through numpy's buffer protocol (bf16 has no numpy dtype).
_NATIVE_DTYPES = frozenset({torch.float32, torch.float64, torch.float16})

#: Tensors of at most this many entries take this path (above it one memory pass costs more than the
#: few calls PyTorch's multi-threaded reductions make per tensor).
MAX_TENSOR = 1 << 16

#: Entries copied together at most (8 MiB of float64): bounds the transient buffer.
MAX_GROUP = 1 << 20

#: float64 entries outside ``[_TINY, _HUGE]`` in magnitude have their norm taken after rescaling
#: (their squares would underflow or overflow float64).
_TINY, _HUGE = 1e-150, 1e150


def eligible(t: torch.Tensor) -> bool:
    """Whether ``t`` (a dense or sparse tensor, any device) is read by this path: a small CPU strided one."""
    return t.is_cpu and t.layout == torch.strided and 0 < t.numel() <= MAX_TENSOR


def memory_order(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view of a dense tensor's entries in memory order (a copy only for overlapping/gappy strides)."""
    if t.is_contiguous():
        return t.view(-1)
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda p: p[1]):
        if size == 1:
            continue
        if stride != expected:
            return t.reshape(-1)
        expected *= size
    return t.as_strided((t.numel(),), (1,), t.storage_offset())  # channels_last and other dense layouts


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view of ``t``'s entries in memory order (complex: real and imaginary parts side by side).

    1-D tensors (strided sample views included) are returned as they are.
    """
    if t.requires_grad:
        t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    if t.dim() == 1:
        return t
    return t.view(-1) if t.is_contiguous() else memory_order(t)  # (channels-last and other layouts)


class _Plan:
    """Segment offsets of a group and the positions of its sampled entries, cached per layout."""

    __slots__ = ("_joined", "counts", "sampled", "sampled_starts", "starts", "total", "wide")

    def __init__(self, numels: tuple[int, ...], strides: tuple[int, ...], wide: bool) -> None:
        self.counts = np.array(numels, dtype=np.int64)
        ends = np.cumsum(self.counts)
        self.total = int(ends[-1])
        self.starts = ends - self.counts
        self.wide = wide  # a float64 tensor is in the group (its squares can underflow or overflow)
        self.sampled: np.ndarray | None = None
        self.sampled_starts = self.starts
        if any(s > 1 for s in strides):  # positions of flat[::stride] of each tensor, in the buffer
            pieces = [np.arange(a, a + n, s) for a, n, s in zip(self.starts.tolist(), numels, strides)]
            sizes = np.array([len(p) for p in pieces], dtype=np.int64)
            self.sampled = np.concatenate(pieces)
            self.sampled_starts = np.cumsum(sizes) - sizes
        self._joined: tuple[np.ndarray, np.ndarray] | None = None

    def joined(self, extra_starts: np.ndarray) -> np.ndarray:
        """These segments' starts followed by ``extra_starts`` shifted past them (the last one kept)."""
        held = self._joined
        if held is None or held[0] is not extra_starts:
            held = self._joined = (extra_starts, np.concatenate([self.starts, self.total + extra_starts]))
        return held[1]


_Key = tuple[tuple[int, ...], tuple[int, ...], bool]
_plans: dict[_Key, _Plan] = {}
_local = threading.local()


def _plan(numels: tuple[int, ...], strides: tuple[int, ...], wide: bool) -> _Plan:
    key = (numels, strides, wide)
    plan = _plans.get(key)
    if plan is None:
        if len(_plans) >= 64:  # bounded: layouts that change every step (a model that grows) rebuild
            _plans.clear()
        plan = _plans[key] = _Plan(numels, strides, wide)
    return plan


def _array(t: torch.Tensor) -> np.ndarray | None:
    """A 1-D numpy view of ``_flat(t)``, or None for a dtype numpy lacks (bf16)."""
    t = _flat(t)
    return None if t.dtype == torch.bfloat16 else t.numpy()


#: dtypes the compiled pass reads in place at any size (complex ones through ``torch.view_as_real``).
_NATIVE_READABLE = _NATIVE_DTYPES | {torch.complex64, torch.complex128}


def native_reads(t: torch.Tensor) -> bool:
    """Whether the compiled pass reads ``t`` in place, whatever its size.

    A non-empty CPU strided tensor of float16/32/64 or complex64/128, with the extension built and on
    (:data:`NATIVE`).
    """
    return NATIVE and t.is_cpu and t.layout == torch.strided and t.dtype in _NATIVE_READABLE and t.numel() > 0


def _native_arrays(tensors: Sequence[torch.Tensor]) -> list[np.ndarray] | None:
    """Arrays over ``tensors``' memory for the compiled pass, or None where it cannot read one.

    A contiguous real tensor is passed in its own shape (the extension reads any C-contiguous buffer in
    order); complex and other layouts as :func:`_flat` gives them. None when the extension is off or a
    tensor is bf16.
    """
    if not NATIVE:
        return None
    out = []
    for t in tensors:
        if t.dtype not in _NATIVE_DTYPES or not t.is_contiguous():
            a = _array(t)
            if a is None:
                return None
            out.append(a)
        else:
            out.append((t.detach() if t.requires_grad else t).numpy())
    return out


def native_grad_and_norms(
    tensors: Sequence[torch.Tensor | None],
    strides: Sequence[int],
    values: np.ndarray,
    value_starts: np.ndarray,
) -> torch.Tensor | None:
    """:func:`grad_stats` with ``norms_of`` in one C call, with no check per tensor before it.

    The hot path of a small CPU model's recorded step (:func:`gradwatch.stats.grad_and_param_stats`):
    a ``[n, 8]`` float64 CPU tensor, or None where the compiled pass is off or cannot read a tensor as
    it is; the caller then takes the general path. What it cannot read raises on the way and is not
    checked first (each check is a call, and on a small model the calls are the cost): ``None``, a
    tensor on a device, sparse, bf16 or requiring grad (``Tensor.numpy()`` refuses them), complex,
    empty or in a layout that is neither C-contiguous nor 1-D (the extension refuses them).
    """
    if not NATIVE:
        return None
    try:
        arrays = [t.numpy() for t in tensors]  # type: ignore[union-attr]
        raw = np.empty((len(arrays), 8), dtype=np.float64)
        _native.grad_stats(arrays, strides, raw, None, values, value_starts)
    except Exception:  # (see above: the general path measures these)
        return None
    return torch.from_numpy(raw)


def size(t: torch.Tensor) -> int:
    """Entries of ``t`` as this path reads them (a complex tensor's real and imaginary parts: twice)."""
    return t.numel() * (2 if t.is_complex() else 1)


def _arrays(tensors: Sequence[torch.Tensor], keep: bool) -> list[np.ndarray | None]:
    if not keep:
        return [_array(t) for t in tensors]
    out = []
    for t in tensors:  # the numpy view, kept on the tensor itself (it lives as long as the tensor)
        a = getattr(t, "_gradwatch_array", None)
        if a is None:
            a = _array(t)
            t._gradwatch_array = a  # type: ignore[attr-defined]
        out.append(a)
    return out


def gather(tensors: Sequence[torch.Tensor], out: np.ndarray | None = None, keep: bool = False) -> np.ndarray:
    """One contiguous float64 copy of the entries of ``tensors`` (CPU, strided), in memory order each.

    Args:
        tensors: CPU tensors of any real or complex floating dtype, any shape and strides.
        out: a 1-D float64 array of exactly the total entry count to write into, or None (a new one).
        keep: keep each tensor's numpy view on the tensor (attribute ``_gradwatch_array``) for the next
            call: for views kept across steps, such as parameters' sample views; not for gradients,
            which are new tensors at every step. bf16 tensors keep None (they take ``torch.cat``).

    Returns:
        A 1-D float64 array (``out`` when given); the conversion from bf16/fp16/float32 is exact.
        ``np.concatenate`` of numpy views (cheapest per tensor), or ``torch.cat`` where one is bf16.
    """
    arrays = _arrays(tensors, keep)
    if out is None:
        out = np.empty(sum([size(t) for t in tensors]), dtype=np.float64)
    if any(a is None for a in arrays):  # a bf16 tensor: torch converts it
        torch.cat([_flat(t) for t in tensors], out=torch.from_numpy(out))
    elif NATIVE:
        _native.gather(arrays, out)  # type: ignore[arg-type]
    else:
        np.concatenate(arrays, out=out)  # type: ignore[arg-type]
    return out


def _scratch(total: int) -> np.ndarray:
    """A reused ``[2, total]`` float64 buffer (per thread): entries and their squares, or two differences."""
    held = getattr(_local, "held", None)
    if held is None or held.shape[1] < total:
        held = _local.held = np.empty((2, total), dtype=np.float64)
    return held[:, :total]


def grad_stats(
    tensors: Sequence[torch.Tensor],
    strides: Sequence[int],
    extremes: bool = False,
    norms_of: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The raw columns of :data:`gradwatch.stats.RAW_FIELDS` for a group of small CPU tensors.

    Args:
        tensors: non-empty CPU strided tensors (:func:`eligible`), any floating dtype, together at most
            :data:`MAX_GROUP` entries; with the extension, those :func:`native_reads` accepts, any size.
        strides: aligned with ``tensors``: count nonzero entries among ``flat[::stride]`` only.
        extremes: also return the minimum and maximum of each tensor.
        norms_of: optional ``(values, starts)``: a 1-D float64 array of ``len(tensors)`` segments (a
            :func:`gather` copy of the parameters' samples, :class:`~gradwatch.stats.Samples`) and where
            each starts; their L2 norms come back as an 8th column, reduced in the same calls as the
            gradients' sums of squares (on a small model the number of calls, not the entries, sets the
            cost).

    Returns:
        ``([n, 7] float64 CPU tensor, [2, n] float64 min/max or None)`` (``[n, 8]`` with ``norms_of``:
        the segments' norms last; NaN/Inf in a segment make its norm NaN/Inf). Every sum is accumulated
        in float64 (numpy's pairwise summation, or the extension's vectorised one, its centred norm's
        second pass corrected for the mean's rounding). The centred norm ``||g - mean||`` is measured
        directly (a second pass) where the mean dominates (``||g||^2 - n mean^2 < 1e-6 ||g||^2``:
        deriving it from the sums would lose more than about 1e-9 of it), else -1 (derived on the host
        from the norm and the sum). NaN/Inf propagate into the norm, max |g| and the sum, and are
        counted; their centred norm is NaN.
    """
    arrays = _native_arrays(tensors)
    if arrays is not None:  # the compiled pass: the same columns, one C call for the group
        raw = np.empty((len(arrays), 7 if norms_of is None else 8), dtype=np.float64)
        ext = np.empty((2, len(arrays)), dtype=np.float64) if extremes else None
        values, value_starts = norms_of if norms_of is not None else (None, None)
        _native.grad_stats(arrays, strides, raw, ext, values, value_starts)
        return torch.from_numpy(raw), None if ext is None else torch.from_numpy(ext)
    return _numpy_grad_stats(tensors, strides, extremes, norms_of)


@np.errstate(all="ignore")  # NaN/Inf entries are expected input, counted and propagated
def _numpy_grad_stats(
    tensors: Sequence[torch.Tensor],
    strides: Sequence[int],
    extremes: bool,
    norms_of: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`grad_stats` with numpy calls (where the compiled pass is off or cannot read a tensor)."""
    numels = tuple([size(t) for t in tensors])
    wide = torch.float64 in {t.dtype for t in tensors}
    plan = _plan(numels, tuple(strides), wide)
    n = len(numels)
    starts, counts = plan.starts, plan.counts
    if norms_of is None:
        total, every_start = plan.total, starts
    else:  # the extra segments after the gradients, reduced in the same calls
        values, value_starts = norms_of
        total, every_start = plan.total + len(values), plan.joined(value_starts)
    rows = _scratch(total)
    x, sq = rows[0], rows[1]
    gather(tensors, x[: plan.total])
    if norms_of is not None:
        x[plan.total :] = values
    np.multiply(x, x, out=sq)
    joined = np.add.reduceat(rows, every_start, axis=1)  # [2, n (+ n)]: sum, sum of squares
    sums = joined[:, :n]
    raw = np.empty((7 if norms_of is None else 8, n), dtype=np.float64)
    raw[2] = sums[0]
    np.sqrt(joined[1, :n], out=raw[0])
    x = x[: plan.total]
    lo, hi = np.minimum.reduceat(x, starts), np.maximum.reduceat(x, starts)  # (NaN propagates)
    np.maximum(hi, np.negative(lo), out=raw[1])  # max |g| = max(max g, -min g)
    raw[1] += 0.0  # (an all-zero tensor: +0.0, not -0.0)
    if norms_of is not None:
        np.sqrt(joined[1, n:], out=raw[7])
    picked = x if plan.sampled is None else x[plan.sampled]
    raw[3] = np.add.reduceat(picked != 0, plan.sampled_starts, dtype=np.int64)
    raw[6] = -1.0
    # (a NaN or Inf entry makes the sum of squares NaN or Inf; a few host numbers: no numpy call)
    if all(map(math.isfinite, sums[1].tolist())):
        raw[4:6] = 0.0
        bad = None
    else:
        raw[4] = np.add.reduceat(~np.isfinite(x), starts, dtype=np.int64)
        raw[5] = np.add.reduceat(np.isnan(x), starts, dtype=np.int64)
        bad = raw[4] > 0
    spread = sums[1] - sums[0] * sums[0] / counts  # n var, from the sums
    direct = spread < 1e-6 * sums[1]  # False for NaN
    odd = np.flatnonzero((raw[1] > _HUGE) | ((raw[1] > 0) & (raw[1] < _TINY))) if wide else ()
    if len(odd):  # float64 entries whose squares underflow or overflow float64: rescaled by max |g|
        direct[odd] = False
        if bad is not None:
            odd = odd[~bad[odd]]
    if direct.any():  # the mean dominates: ||g - mean|| from the entries themselves
        dev = np.subtract(x, np.repeat(sums[0] / counts, counts), out=sq[: plan.total])
        np.multiply(dev, dev, out=dev)
        raw[6, direct] = np.sqrt(np.add.reduceat(dev, starts))[direct]
    for i in odd:
        m = float(raw[1, i])
        seg = x[starts[i] : starts[i] + counts[i]] / m
        raw[0, i] = m * float(np.sqrt(np.dot(seg, seg)))
        dev = seg - float(sums[0, i]) / counts[i] / m
        raw[6, i] = m * float(np.sqrt(np.dot(dev, dev)))
    if bad is not None:
        raw[6, bad] = np.nan
    ranges = torch.from_numpy(np.stack([lo, hi])) if extremes else None
    return torch.from_numpy(raw).T, ranges


def all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether every entry of the small CPU tensors ``tensors`` is finite.

    One ``np.dot`` per tensor with a zero vector: ``0 * x`` is 0 for every finite ``x`` and NaN for NaN
    and +-Inf, so the product is NaN exactly when an entry is not finite, whatever the magnitudes (no
    overflow, unlike a sum or a sum of squares). bf16 tensors (no numpy dtype): one copy of them all.
    """
    arrays = _native_arrays(tensors)
    if arrays is not None:
        return bool(_native.all_finite(arrays))
    return _numpy_all_finite(tensors)


@np.errstate(all="ignore")
def _numpy_all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    rest = []
    for t in tensors:
        a = _array(t)
        if a is None:
            rest.append(t)
            continue
        zeros = _zeros(a.size, a.dtype)
        if not np.isfinite(np.dot(a, zeros)):
            return False
    return not rest or bool(np.isfinite(gather(rest).sum()))


class DeferredFinite:
    """Whether some small CPU tensors were all finite when this was made, computed when first read.

    ``bool(flag)`` computes it (:func:`all_finite`) on first use and drops the references; until then
    the tensors are held (the caller bounds how long: small CPU gradients, about one step). If one of
    them was written in place since (its version counter moved: gradients accumulated into it, or zeroed
    in place), the values are no longer those of that moment and the flag reads True ("no evidence of a
    non-finite entry"). A write through ``.data`` moves no version counter and is not seen.

    Made instead of computing the flag at once because the flag is seldom read (only for gradients
    that no optimizer used) and, on a small model, reading every gradient at the end of every backward
    pass cost about a tenth of the step.
    """

    __slots__ = ("_tensors", "_value", "_versions")

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self._tensors = list(tensors)
        self._versions = [compat.version_counter(t) for t in self._tensors]
        self._value: bool | None = None

    def __bool__(self) -> bool:
        if self._value is None:
            same = all(compat.version_counter(t) == v for t, v in zip(self._tensors, self._versions))
            self._value = all_finite(self._tensors) if same else True
            self._tensors, self._versions = [], []
        return self._value

    def settle(self) -> None:
        """Compute the flag now (if not yet) and drop the references: the tensors may change or go soon."""
        bool(self)


_zero_vectors: dict[np.dtype, np.ndarray] = {}


def _zeros(n: int, dtype: np.dtype) -> np.ndarray:
    """A read-only zero vector of ``n`` entries of ``dtype`` (a view of one kept per dtype)."""
    held = _zero_vectors.get(dtype)
    if held is None or held.size < n:
        held = np.zeros(max(n, MAX_TENSOR * 2), dtype=dtype)
        held.flags.writeable = False
        _zero_vectors[dtype] = held
    return held[:n]


def starts(tensors: Sequence[torch.Tensor]) -> np.ndarray:
    """Where each tensor's entries start in :func:`gather`'s copy (complex: twice as many), int64."""
    sizes = np.array([size(t) for t in tensors], dtype=np.int64)
    return np.cumsum(sizes) - sizes


@np.errstate(all="ignore")
def distances(now: np.ndarray, before: np.ndarray | None, starts: np.ndarray, ord: float = 2.0) -> np.ndarray:
    """``||now_i - before_i||_ord`` per segment of two float64 copies (:func:`gather`), as float64.

    Args:
        now: a 1-D float64 array.
        before: one of the same length, or None: the norms of ``now``.
        starts: where each segment starts (each segment non-empty), ascending from 0.
        ord: 2 (the L2 norm) or 1 (the sum of absolute differences).

    Returns:
        ``[len(starts), 1]`` float64 array. Differences of float64 copies of float32 (or smaller) values
        are exact. NaN or Inf entries give NaN or Inf.
    """
    x = now if before is None else now - before
    if ord == 1.0:
        return np.add.reduceat(np.abs(x), starts).reshape(-1, 1)
    if ord != 2.0:
        raise ValueError(f"distances: ord must be 1 or 2, got {ord}")
    return np.sqrt(np.add.reduceat(x * x, starts)).reshape(-1, 1)


def update_and_change(
    now: Sequence[torch.Tensor], before: np.ndarray, prev: np.ndarray, starts: np.ndarray
) -> np.ndarray:
    """The update and change columns of a list of parameters' samples, in one pass of a few numpy calls.

    Args:
        now: the parameters' sample views (:func:`gradwatch.stats.sample_view`) after the update; CPU.
        before: their :func:`gather` copy (float64) taken just before the update.
        prev: the copy taken before the previous recorded update, same layout.
        starts: where each parameter's sample starts in those copies, ascending from 0.

    Returns:
        ``[len(starts), 2]`` float64: ``||now_i - before_i||_2`` (the update norm of the sample) and
        ``||before_i - prev_i||_1`` (0 exactly when the weights are back where they were). Differences
        of float64 copies of float32 (or smaller) values are exact; NaN or Inf entries give NaN or Inf.
        The same values as :func:`distances` computes for each column on its own.
    """
    if NATIVE:
        arrays = _arrays(now, True)
        if all(a is not None for a in arrays):  # (no bf16 view)
            out = np.empty((len(starts), 2), dtype=np.float64)
            _native.update_and_change(arrays, before, prev, out)  # type: ignore[arg-type]
            return out
    return _numpy_update_and_change(now, before, prev, starts)


@np.errstate(all="ignore")
def _numpy_update_and_change(
    now: Sequence[torch.Tensor], before: np.ndarray, prev: np.ndarray, starts: np.ndarray
) -> np.ndarray:
    d = _scratch(len(before))
    gather(now, d[0], keep=True)
    np.subtract(d[0], before, out=d[0])
    np.subtract(before, prev, out=d[1])
    np.multiply(d[0], d[0], out=d[0])
    np.abs(d[1], out=d[1])
    out = np.add.reduceat(d, starts, axis=1)
    np.sqrt(out[0], out=out[0])
    return out.T
