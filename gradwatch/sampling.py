"""The update-to-weight ratio: a fixed sample of each parameter's entries, taken before and after an update.

For each parameter, :func:`gradwatch.stats.sample_stride` picks at most
:data:`~gradwatch.stats.SAMPLE_SIZE` (1024) evenly spread entries (all of them for smaller parameters).
:meth:`UpdateSampler.before` copies them just before the optimizer updates the parameters;
:meth:`UpdateSampler.after` measures ``||theta_after - theta_before||`` on them, and how far the weights
moved since the previous recorded update (0 when an update was undone). The record turns these into
``ParamStats.update_ratio`` and ``ParamStats.weights_unchanged`` (scaled by ``sqrt(numel / sample
size)`` for sampled parameters). The same shape as Cockpit's ``UpdateSize`` quantity (before/after
hooks around ``optimizer.step()``), on a sample instead of the whole tensor so that it costs 4 KiB per
float32 tensor and one batched copy per optimizer step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from gradwatch import stats
from gradwatch.records import Column, Part
from gradwatch.sharding import local
from gradwatch.targets import Optimizers

__all__ = ["UpdateSampler"]

_data_ptr, _numel = torch.Tensor.data_ptr, torch.Tensor.numel


class UpdateSampler:
    """Samples of the watched parameters, and the update and weight norms measured on them.

    Args:
        params: the watched parameters (their shapes set the sample strides).
        optimizers: the watched optimizers (the position lists they own bound the tables kept here).
        dtensors: positions of ``DTensor`` parameters (FSDP2): shapes are the whole tensor's, samples
            are taken from this rank's shard (see :mod:`gradwatch.sharding`).

    Attributes:
        shapes: each parameter's shape (updated when a parameter is resized).
        numels: entries as the statistics read them (a complex parameter's real and imaginary parts).
        strides: sample stride of each parameter (1: every entry).
        sample_sizes: entries in each parameter's sample.
    """

    def __init__(
        self, params: Sequence[torch.Tensor], optimizers: Optimizers, dtensors: frozenset[int] = frozenset()
    ) -> None:
        self._optimizers = optimizers
        self._dtensors = dtensors
        self.set_shapes(params)
        self._views: list[tuple[int, int, torch.Tensor] | None] = [None] * len(self.numels)
        # parameter positions -> (views built so far, data pointers, entry counts, the views) where every
        # view was cached: checked with two map() calls instead of a loop over the parameters
        self._same_views: dict[tuple[int, ...], tuple[int, list[int], list[int], list[torch.Tensor]]] = {}
        self._views_made = 0  # sample views built so far: a batching layout is valid while this stays
        # parameter positions -> (views built when it was made, its layout): per optimizer, and unowned
        self.layouts: dict[tuple[int, ...], tuple[int, stats.SampleLayout]] = {}
        # parameter positions -> the samples taken before the last recorded update of those parameters
        self.prev_samples: dict[tuple[int, ...], stats.Samples] = {}

    def set_shapes(self, params: Sequence[torch.Tensor]) -> None:
        """Shapes, entry counts and sample strides of the parameters (again when one is resized)."""
        self.shapes = tuple(tuple(p.shape) for p in params)
        self._complex = tuple(p.is_complex() for p in params)
        # entries as the statistics read them: a complex parameter's real and imaginary parts side by side
        real = [(*shape, 2) if c else shape for c, shape in zip(self._complex, self.shapes)]
        self.numels = tuple(math.prod(shape) for shape in real)
        self.strides = tuple(stats.sample_stride(shape) for shape in real)
        self.sample_sizes = tuple(-(-n // s) if n else 0 for n, s in zip(self.numels, self.strides))

    def sampled_size(self, i: int) -> int | None:
        """Entries in parameter ``i``'s sample when it is a sample (stride > 1), else ``None``."""
        return self.sample_sizes[i] if self.strides[i] > 1 else None

    def forget_views(self) -> None:
        """Drop the cached views (on detach: they hold the parameters' storage)."""
        self._views = [None] * len(self.numels)
        self._same_views.clear()

    def views(self, idx: Sequence[int], params: list[torch.Tensor]) -> list[torch.Tensor]:
        """Views of the sampled entries of ``params[i]`` (cached while the parameter keeps its storage).

        New storage (or a new size on the same storage: ``p.data = p.data[:k]``) is also where a
        parameter may have been resized (``p.data = torch.cat(...)``, a vocabulary that grows) or made
        complex: its entry count and sample stride follow.
        """
        key = tuple(idx)
        hit = self._same_views.get(key)
        if hit is not None and hit[0] == self._views_made:  # (every view was cached: check them at once)
            held = [params[i] for i in idx]
            if list(map(_data_ptr, held)) == hit[1] and list(map(_numel, held)) == hit[2]:
                return list(hit[3])
        out = []
        for i in idx:
            p = params[i]
            if i in self._dtensors:
                if (tuple(p.shape), p.is_complex()) != (self.shapes[i], self._complex[i]):
                    self.set_shapes(params)
                p = local(p)  # (this rank's shard: sampled with the whole tensor's stride)
            cached = self._views[i]
            if cached is not None and cached[0] == p.data_ptr() and cached[1] == p.numel():
                out.append(cached[2])
                continue
            if i not in self._dtensors and (tuple(p.shape), p.is_complex()) != (
                self.shapes[i],
                self._complex[i],
            ):
                self.set_shapes(params)
            view = stats.sample_view(p, self.strides[i])
            self._views_made += 1
            # a copy (an unusual, gappy layout; or a view of such a copy) would go stale: rebuilt every time
            if not p.is_sparse and view.untyped_storage().data_ptr() == p.untyped_storage().data_ptr():
                self._views[i] = (p.data_ptr(), p.numel(), view)
            out.append(view)
        kept = [v for i in idx if (v := self._views[i]) is not None]
        if len(kept) == len(out) and not self._dtensors.intersection(idx):
            self._same_views[key] = (self._views_made, [v[0] for v in kept], [v[1] for v in kept], out)
            self._forget_stale(self._same_views)
        return out

    def layout(self, idx: Sequence[int], views: list[torch.Tensor]) -> stats.SampleLayout:
        """The batching layout of these views (kept while no sample view is rebuilt)."""
        key = tuple(idx)
        hit = self.layouts.get(key)
        if hit is not None and hit[0] == self._views_made:
            return hit[1]
        layout = stats.SampleLayout(views)
        if hit is not None and hit[1].same_batches(layout):
            layout = hit[1]  # views rebuilt, batched alike: samples taken with the old layout still pair up
        self.layouts[key] = (self._views_made, layout)
        self._forget_stale(self.layouts)
        return layout

    def _forget_stale(self, table: dict[tuple[int, ...], Any]) -> None:
        """Bound a table keyed by parameter positions: drop the lists no optimizer owns any more.

        There is one live list per optimizer and one for the parameters none holds; param groups that
        change (``add_param_group``) leave old ones behind.
        """
        if len(table) <= 2 * len(self._optimizers) + 8:
            return
        live = self._optimizers.position_lists()
        for key in [k for k in table if k not in live]:
            del table[key]

    def before(self, idx: list[int], params: list[torch.Tensor]) -> stats.Samples:
        """Copies of the sampled entries of ``params[i]``, taken before an update (one batched copy)."""
        views = self.views(idx, params)
        return stats.take_samples(views, self.layout(idx, views))

    def norms(
        self, idx: list[int], params: list[torch.Tensor], samples: stats.Samples | None = None
    ) -> list[Part]:
        """Record parts with the L2 norm of each parameter's sample (:attr:`Column.PARAM_NORM`).

        ``samples``: copies just taken by :meth:`before` (read instead of gathering the entries again).
        """
        if samples is not None:
            blocks = stats.sample_norms(samples)
        else:
            views = self.views(idx, params)
            blocks = stats.sample_norms(views, self.layout(idx, views))
        return [([idx[j] for j in pos], Column.PARAM_NORM, t) for pos, t in blocks]

    def after(self, idx: list[int], before: stats.Samples, params: list[torch.Tensor]) -> list[Part]:
        """Record parts for the update of ``params[i]``: sampled update norm, change since the last record.

        The change compares ``before`` (the sample taken before this step's update) with the one taken
        before the previous recorded update, which it then replaces: batched when both have the same
        layout, else parameter by parameter (the list changed, or a parameter got new storage), and not
        for a parameter whose sample changed shape or dtype. The update norm is not measured when the
        storage changed inside ``step()`` itself (the layouts of the two samples differ).
        """
        now = self.views(idx, params)
        parts: list[Part] = []
        key = tuple(idx)
        prev = self.prev_samples.get(key)
        same = self.layout(idx, now) is before.layout
        both = stats.update_and_change(now, before, prev) if same and prev is not None else None
        if both is not None:  # (small CPU samples: both columns in one pass)
            parts.append((idx, Column.UPDATE_NORM, both))
        else:
            if same:
                parts += [
                    ([idx[j] for j in pos], Column.UPDATE_NORM, t)
                    for pos, t in stats.sample_distances(now, before)
                ]
            if prev is not None and prev.layout is before.layout:
                parts += [
                    ([idx[j] for j in pos], Column.RESTORE_DIFF, t)
                    for pos, t in stats.sample_distances(before, prev, ord=1.0)
                ]
            else:  # the parameters' list or storage changed since (add_param_group, p.data = ...): one by one
                parts += self._changes_by_parameter(idx, before)
        self.prev_samples.pop(key, None)  # (re-inserted last: the newest entry is the last one)
        self.prev_samples[key] = before
        self._forget_stale(self.prev_samples)
        return parts

    def _changes_by_parameter(self, idx: list[int], before: stats.Samples) -> list[Part]:
        """The restore column parameter by parameter, against whichever kept samples hold each one."""
        old: dict[int, torch.Tensor] = {}
        for key, kept in self.prev_samples.items():  # oldest first: newer samples overwrite older ones
            for j, row in kept.rows().items():
                old[key[j]] = row
        positions, changes = [], []
        for j, row in before.rows().items():
            was = old.get(idx[j])
            if was is not None and was.shape == row.shape and was.dtype == row.dtype:
                positions.append(idx[j])
                changes.append(torch.linalg.vector_norm(row.double() - was.double(), 1.0))
        return [(positions, Column.RESTORE_DIFF, torch.stack(changes)[:, None])] if changes else []
