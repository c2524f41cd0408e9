"""Fixed samples of parameter entries, and the norms and distances measured on them.

The zero fraction, the parameter norm and the update-to-weight ratio of tensors of more than
:data:`SAMPLE_SIZE` entries are read from a fixed, evenly spread sample of at most that many entries
(:func:`sample_stride`, :func:`sample_view`); :class:`gradwatch.sampling.UpdateSampler` takes them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from gradwatch import compat
from gradwatch.stats import fused, host
from gradwatch.stats.batched import _STACK_MIN, Block, _flat, _host

#: Parameters with more entries than this have their update-to-weight ratio measured on a fixed,
#: evenly spread sample of at most this many entries (4 KiB of float32 per tensor).
SAMPLE_SIZE = 1024


def _is_prime(k: int) -> bool:
    if k < 2:
        return False
    f = 2
    while f * f <= k:
        if k % f == 0:
            return False
        f += 1
    return True


def sample_stride(shape: Sequence[int]) -> int:
    """Stride of the entries sampled from a tensor of ``shape`` (1: every entry).

    For more than :data:`SAMPLE_SIZE` entries: the smallest prime ``s >= ceil(numel / SAMPLE_SIZE)``
    that divides none of the tensor's row lengths (the products of its trailing dimensions), so the
    sample ``flat[::s]`` (``ceil(numel / s) <= SAMPLE_SIZE`` entries) visits every column of every
    trailing dimension instead of a few of them (systematic sampling with a stride coprime to the
    layout).
    """
    numel = math.prod(shape)
    if numel <= SAMPLE_SIZE:
        return 1
    rows = {math.prod(shape[k:]) for k in range(1, len(shape))} - {1}
    s = -(-numel // SAMPLE_SIZE)
    while not _is_prime(s) or any(r % s == 0 for r in rows):
        s += 1
    return s


def sample_view(t: torch.Tensor, stride: int) -> torch.Tensor:
    """The sampled entries of ``t`` as a 1-D view (no copy for dense layouts); see :func:`sample_stride`."""
    t = t.detach()
    if t.is_sparse:  # rare: a copy, rebuilt at every use
        t = t.to_dense()
    if t.is_complex():  # real and imaginary parts side by side (stride 1 still covers every entry)
        t = torch.view_as_real(t)
    flat = _flat(t)
    return flat if stride == 1 else flat[::stride]


_LengthKey = tuple[torch.device, torch.dtype, int]


class SampleLayout:
    """How the samples of a list of 1-D tensors are batched: by device, dtype and length.

    Built once from the sample views of a list of parameters (:func:`sample_view`) and reused for as long
    as those views are: the grouping is the per-tensor Python work, and it does not change from step to
    step. ``host``: the positions of CPU views, copied together into one float64 buffer and reduced with
    numpy segment reductions (:mod:`gradwatch.stats.host`; ``host_starts``: where each one starts in it);
    ``host_only``: every view is in ``host``;
    ``stacked``: groups of positions of one device, dtype and length shared by at least
    :data:`_STACK_MIN` tensors (copied with one ``stack``, reduced row-wise); ``rest``: the others, per
    device and dtype (one ``_foreach`` call each). Empty tensors are in no group.

    Args:
        views: 1-D tensors (any device and dtype).
    """

    __slots__ = ("host", "host_only", "host_starts", "host_total", "rest", "stacked")

    def __init__(self, views: Sequence[torch.Tensor]) -> None:
        groups: dict[_LengthKey, list[int]] = {}
        self.host: list[int] = []
        on_host = host.ENABLED and not fused.force_on_cpu
        for i, t in enumerate(views):
            if on_host and host.eligible(t):
                self.host.append(i)
            elif k := t.numel():
                groups.setdefault((t.device, t.dtype, k), []).append(i)
        self.host_starts = host.starts([views[i] for i in self.host])
        #: entries of the ``host`` views together (the length of their copy)
        self.host_total = sum(host.size(views[i]) for i in self.host)
        rest: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        self.stacked: list[list[int]] = []
        for (device, dtype, _), idx in groups.items():
            if len(idx) >= _STACK_MIN:
                self.stacked.append(idx)
            else:
                rest.setdefault((device, dtype), []).extend(idx)
        self.rest: list[list[int]] = list(rest.values())
        #: every view is in ``host``, in order (the one-copy paths :func:`update_and_change` and
        #: :func:`gradwatch.stats.grad_and_param_stats` apply)
        self.host_only = len(self.host) == len(views) > 0

    def same_batches(self, other: SampleLayout) -> bool:
        """Whether ``other`` batches the same positions alike (samples of the two pair up)."""
        return (self.host, self.stacked, self.rest) == (other.host, other.stacked, other.rest) and bool(
            np.array_equal(self.host_starts, other.host_starts)
        )


class Samples:
    """Copies of the sampled entries of a list of tensors, batched as their :class:`SampleLayout` says.

    ``host``: one 1-D float64 numpy copy of the samples of ``layout.host``, one after the other (None when
    that group is empty); ``stacks[k]``: a ``[len(layout.stacked[k]), length]`` tensor (one row per
    tensor, in the group's order); ``rest[k]``: 1-D copies, aligned with ``layout.rest[k]``. At most
    :data:`SAMPLE_SIZE` entries per tensor.
    """

    __slots__ = ("host", "layout", "rest", "stacks")

    def __init__(
        self,
        layout: SampleLayout,
        stacks: list[torch.Tensor],
        rest: list[list[torch.Tensor]],
        host_copy: np.ndarray | None = None,
    ) -> None:
        self.layout = layout
        self.stacks = stacks
        self.rest = rest
        self.host = host_copy

    def rows(self) -> dict[int, torch.Tensor]:
        """Position -> that tensor's 1-D sample (views of the copies)."""
        out: dict[int, torch.Tensor] = {}
        if self.host is not None:
            ends = [*self.layout.host_starts.tolist()[1:], len(self.host)]
            rows = torch.from_numpy(self.host)
            out.update(
                (i, rows[a:b]) for i, a, b in zip(self.layout.host, self.layout.host_starts.tolist(), ends)
            )
        for idx, stack in zip(self.layout.stacked, self.stacks):
            out.update(zip(idx, stack.unbind(0)))
        for idx, group in zip(self.layout.rest, self.rest):
            out.update(zip(idx, group))
        return out

    @property
    def nbytes(self) -> int:
        """Bytes held by the copies."""
        tensors = [*self.stacks, *(t for group in self.rest for t in group)]
        extra = 0 if self.host is None else self.host.nbytes
        return extra + sum(t.numel() * t.element_size() for t in tensors)


def take_samples(views: Sequence[torch.Tensor], layout: SampleLayout | None = None) -> Samples:
    """Copies of the sample views, batched as ``layout`` says.

    One float64 copy of the CPU ones (``layout.host``), one ``stack`` per stacked group, one
    ``_foreach_clone`` per other group.

    Args:
        views: 1-D sample views (:func:`sample_view`), any device and dtype.
        layout: ``SampleLayout(views)``, when the caller keeps it across steps.
    """
    layout = layout if layout is not None else SampleLayout(views)
    host_copy = None
    if layout.host:
        out = np.empty(layout.host_total, dtype=np.float64)
        host_copy = host.gather([views[i] for i in layout.host], out, keep=True)
    stacks = [torch.stack([views[i] for i in idx]) for idx in layout.stacked]
    rest = [list(compat.foreach_clone([views[i] for i in idx])) for idx in layout.rest]
    return Samples(layout, stacks, rest, host_copy)


def _stack_of(x: Samples | Sequence[torch.Tensor], k: int, layout: SampleLayout) -> torch.Tensor:
    return x.stacks[k] if isinstance(x, Samples) else torch.stack([x[i] for i in layout.stacked[k]])


def _rest_of(x: Samples | Sequence[torch.Tensor], k: int, layout: SampleLayout) -> list[torch.Tensor]:
    return x.rest[k] if isinstance(x, Samples) else [x[i] for i in layout.rest[k]]


def sample_norms(
    samples: Samples | Sequence[torch.Tensor], layout: SampleLayout | None = None
) -> list[Block]:
    """L2 norm of each sample, as blocks of ``[n, 1]`` float64 tensors on the samples' device.

    Args:
        samples: copies (:func:`take_samples`), or 1-D views with their ``layout``.
        layout: required with views; ignored with :class:`Samples`.
    """
    return sample_distances(samples, None, layout)


def sample_distances(
    now: Samples | Sequence[torch.Tensor],
    before: Samples | None,
    layout: SampleLayout | None = None,
    ord: float = 2.0,
) -> list[Block]:
    """``||now[i] - before[i]||_ord`` per tensor, as blocks ``(positions, [n, 1] float64)``.

    Stacked groups are reduced row-wise (a few calls per group instead of a few per tensor; the samples
    are small). Norms are reduced in float64 (no overflow of the squares). Differences are taken in
    float64 (exact for float32 and smaller), except on the CPU: there in float32 (float64 samples: in
    float64), a third of the memory traffic (exact where the two entries are within a factor of two of
    each other, as an update's before and after almost always are: Sterbenz's lemma; 0 exactly where they
    are equal; one float32 rounding at most otherwise), and tensors whose norm comes out non-finite (an
    overflow, or NaN weights) are redone in float64. Groups whose two sides differ in shape or dtype (a
    parameter's storage replaced in between) are left out.

    Args:
        now: copies (:class:`Samples`) or 1-D views (aligned with ``layout``).
        before: copies taken earlier with the same layout, or None for the norms of ``now``.
        layout: the layout of ``now`` when it is views; defaults to ``before``'s (or ``now``'s) layout.
        ord: the norm's order (2: the update norm; 1: any change at all).
    """
    lay = layout or (
        before.layout if before is not None else now.layout if isinstance(now, Samples) else None
    )
    if lay is None:
        raise ValueError("sample_distances: views need their SampleLayout (layout=SampleLayout(views))")
    blocks: list[Block] = []
    if lay.host:
        a_host = now.host if isinstance(now, Samples) else host.gather([now[i] for i in lay.host], keep=True)
        b_host = None if before is None else before.host
        if (
            a_host is not None
            and (b_host is None) == (before is None)
            and (b_host is None or b_host.shape == a_host.shape)
        ):
            blocks.append((lay.host, torch.from_numpy(host.distances(a_host, b_host, lay.host_starts, ord))))
    for k, idx in enumerate(lay.stacked):
        a = _stack_of(now, k, lay)
        if before is None:
            blocks.append((idx, torch.linalg.vector_norm(a, ord, dim=1, dtype=torch.float64)[:, None]))
            continue
        b = before.stacks[k]
        if a.shape != b.shape or a.dtype != b.dtype:
            continue
        if not _host(a.device):
            blocks.append((idx, torch.linalg.vector_norm(a.double() - b.double(), ord, dim=1)[:, None]))
            continue
        if a.element_size() < 4:  # 16-bit floats: a difference rounded to 8 or 11 bits is too coarse
            a, b = a.float(), b.float()
        dist = torch.linalg.vector_norm(a - b, ord, dim=1, dtype=torch.float64)
        bad = ~torch.isfinite(dist)
        if bool(bad.any()):  # on the CPU reading a flag costs no device sync
            rows = torch.nonzero(bad).flatten()
            dist[rows] = torch.linalg.vector_norm(a[rows].double() - b[rows].double(), ord, dim=1)
        blocks.append((idx, dist[:, None]))
    for k, idx in enumerate(lay.rest):
        a_list = _rest_of(now, k, lay)
        b_list = before.rest[k] if before is not None else None
        if b_list is not None and [t.shape for t in a_list] != [t.shape for t in b_list]:
            continue
        if _host(a_list[0].device) and a_list[0].element_size() >= 4:
            # as for the stacked groups: differences in the samples' dtype, norms in float64, non-finite
            # results redone in float64
            diffs = a_list if b_list is None else list(compat.foreach_sub(a_list, b_list))
            dist = torch.stack(compat.foreach_norm(diffs, ord, dtype=torch.float64))
            for j in torch.nonzero(~torch.isfinite(dist)).flatten().tolist():
                exact = a_list[j].double() - (0.0 if b_list is None else b_list[j].double())
                dist[j] = torch.linalg.vector_norm(exact, ord)
            blocks.append((idx, dist[:, None]))
            continue
        # in float64: samples are small, and squares of 1e20 overflow float32
        a64 = [t.double() for t in a_list]
        if b_list is not None:
            a64 = list(compat.foreach_sub(a64, [t.double() for t in b_list]))
        blocks.append((idx, torch.stack(compat.foreach_norm(a64, ord))[:, None]))
    return blocks


def update_and_change(now: Sequence[torch.Tensor], before: Samples, prev: Samples) -> torch.Tensor | None:
    """``[n, 2]`` float64: each sample's update norm ``||now - before||`` and change ``||before - prev||_1``.

    The one-copy path for samples that are all small CPU ones (``layout.host_only``), with ``before`` and
    ``prev`` taken with the same layout (:func:`gradwatch.stats.host.update_and_change`); None where it
    does not apply (then :func:`sample_distances` measures each column).
    """
    lay = before.layout
    if not lay.host_only or prev.layout is not lay or before.host is None or prev.host is None:
        return None
    if before.host.shape != prev.host.shape:
        return None
    return torch.from_numpy(host.update_and_change(now, before.host, prev.host, lay.host_starts))
