"""Sharded parameters (FSDP2's ``fully_shard``): read each rank's shard, combine the statistics across ranks.

Under FSDP2 every parameter is a ``DTensor`` sharded along dim 0 over a 1-D device mesh; its ``.grad`` is
a ``DTensor`` too, holding this rank's shard of the gradient after FSDP's reduce-scatter (the mean over
ranks). The parameters are not in the autograd graph (FSDP computes with unsharded copies), but FSDP2
calls their post-accumulate-grad hooks itself once the sharded gradient is written, and the optimizer
steps the sharded parameters, so the recorder's hooks and boundaries work unchanged. What changes is
reading values: every statistic is computed on the local shard (``DTensor.to_local()``, no copy, no
communication), and the per-tensor numbers of the shards are combined into those of the whole tensor
with **one** ``all_gather`` of a small float64 matrix per recorded optimizer step (:meth:`ShardPlan.combine`;
about 170 bytes per sharded parameter and rank), issued at the end of ``optimizer.step()`` on every rank.
No collective runs on steps that are not recorded.

How each column combines (the same arithmetic as on one tensor, see :mod:`gradwatch.stats.reference`):

* L2 norms (gradient, weights' sample, update's sample): ``sqrt(sum_r norm_r^2)``, scaled by the largest
  so that no square overflows or underflows;
* max |g|: the maximum; sums and counts (sum, nonzero, non-finite, NaN) and the L1 change: the sum;
* ``||g - mean(g)||`` (Chan et al., "Updating formulae and a pairwise algorithm for computing sample
  variances", 1979): ``sqrt(sum_r c_r^2 + sum_r n_r (mean_r - mean)^2)``, where every shard measured it;
* sampled entries (tensors of more than ``stats.SAMPLE_SIZE`` entries): each shard samples its own
  entries with the parameter's stride, so the whole sample has ``k' = sum_r ceil(n_r / stride)`` entries
  instead of ``ceil(n / stride)``; the counts and norms are rescaled to the sample size the record
  assumes, so zero fractions, weight norms and update-to-weight ratios are those of the ``k'`` entries.

A value some rank did not measure (a structure that differs between ranks) is left unmeasured, never
guessed, and never makes the collective's shape differ: no hang. Histograms and kept gradients
(``keep_grads``) are of this rank's shard. Replicated ``DTensor`` parameters are read locally (their
values are the whole tensor's). Not part of the public API.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from gradwatch.errors import GradWatchError
from gradwatch.records import _UNMEASURED, Column, Part

__all__ = ["ShardPlan", "is_dtensor", "local"]

_N = len(Column)
_L2 = (Column.GRAD_NORM, Column.PARAM_NORM, Column.UPDATE_NORM)
_SUMS = (Column.GRAD_SUM, Column.GRAD_NONZERO, Column.GRAD_NONFINITE, Column.GRAD_NAN, Column.RESTORE_DIFF)


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor``, read from its class alone (no import)."""
    cls = type(t)
    return cls.__name__ == "DTensor" and cls.__module__.startswith("torch.distributed")


def local(t: Any) -> Any:
    """This rank's local tensor of a ``DTensor`` (the object itself, no copy); anything else unchanged.

    ``DTensor.to_local()`` (public API) returns the local tensor as it is when grad mode is off.
    """
    if t is None or not is_dtensor(t):
        return t
    with torch.no_grad():
        return t.to_local()


def _placement(name: str, p: Any) -> tuple[str, Any]:
    """``("shard", device mesh)`` or ``("replicate", None)``; raises for what is not handled."""
    mesh = p.device_mesh
    kinds = [type(pl).__name__ for pl in p.placements]
    if mesh.ndim == 1 and kinds == ["Shard"]:
        return "shard", mesh
    if all(k == "Replicate" for k in kinds):
        return "replicate", None
    raise GradWatchError(
        f"watch(): parameter {name!r} is a DTensor with placements {tuple(p.placements)} on a "
        f"{mesh.ndim}-D device mesh; gradwatch handles DTensor parameters sharded on one dimension of a "
        f"1-D mesh (FSDP2's fully_shard) or replicated, not 2-D meshes (HSDP, tensor parallelism) yet. "
        f"Watch the model under fully_shard on a 1-D mesh or under DistributedDataParallel."
    )


class ShardPlan:
    """Which watched parameters are ``DTensor`` s, and how their statistics combine across ranks.

    Args:
        names: parameter names (for errors).
        params: the watched parameters.

    Raises:
        GradWatchError: a ``DTensor`` parameter on a mesh or with placements gradwatch does not handle.
    """

    def __init__(self, names: Sequence[str], params: Sequence[torch.Tensor]) -> None:
        #: positions of every DTensor parameter (read through :func:`local`)
        self.dtensors: frozenset[int] = frozenset(i for i, p in enumerate(params) if is_dtensor(p))
        groups: dict[int, tuple[Any, list[int]]] = {}
        for i in sorted(self.dtensors):
            kind, mesh = _placement(names[i], params[i])
            if kind == "shard":  # (by process group: each fully_shard call may build its own mesh)
                groups.setdefault(id(mesh.get_group()), (mesh, []))[1].append(i)
        #: device mesh and the positions sharded over it, per mesh (in a fixed order on every rank); the
        #: mesh's process group is looked up at each combination (no reference kept to it)
        self.groups: list[tuple[Any, list[int]]] = list(groups.values())
        #: positions whose statistics are combined across ranks
        self.sharded: frozenset[int] = frozenset(i for _, idx in self.groups for i in idx)
        self._consts: dict[tuple[Any, ...], torch.Tensor] = {}  # host numbers already on a device

    def _const(self, values: Sequence[Any], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``values`` as a tensor on ``device``, made once (pinned and non-blocking on CUDA: no sync)."""
        key = (tuple(values), dtype, device)
        t = self._consts.get(key)
        if t is None:
            if len(self._consts) > 256:  # (positions and sizes rarely change: bounded all the same)
                self._consts.clear()
            t = torch.tensor(values, dtype=dtype)
            if device.type != "cpu":
                t = t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)
            self._consts[key] = t
        return t

    def __bool__(self) -> bool:
        return bool(self.dtensors)

    def values(self, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The tensors the statistics read: local shards of the DTensors, the others as they are."""
        if not self.dtensors:
            return list(params)
        return [local(p) if i in self.dtensors else p for i, p in enumerate(params)]

    def grads(self, idx: Sequence[int], params: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
        """``params[i].grad`` for ``i`` in ``idx``, as local shards where the parameter is a DTensor."""
        if not self.dtensors:
            return [params[i].grad for i in idx]
        return [local(params[i].grad) if i in self.dtensors else params[i].grad for i in idx]

    def combine(
        self,
        parts: list[Part],
        start: int,
        positions: Sequence[int],
        params: Sequence[torch.Tensor],
        sample_sizes: Sequence[int],
        strides: Sequence[int],
    ) -> None:
        """Append to ``parts`` the whole-tensor values of the sharded parameters among ``positions``.

        Call on every rank at the same point (the end of a recorded optimizer step, over the positions it
        owns): one ``all_gather`` per process group among ``positions`` that holds a sharded parameter,
        whether or not this rank measured anything. The appended part covers every column of those
        parameters (later parts overwrite earlier ones in a record): the values combined from the shards
        measured in ``parts[start:]`` where every rank measured them, else unmeasured, so that every rank
        records the same. Device work only: no host read.

        Args:
            parts: the step's parts so far (device tensors); appended to.
            start: first part not combined yet.
            positions: the parameter positions this combination covers (fixed on every rank).
            params: the watched parameters (their local shards give each rank's entry count).
            sample_sizes: entries in each whole parameter's sample (as the record assumes).
            strides: sample stride of each parameter.
        """
        wanted = set(positions)
        new = parts[start:]
        for mesh, members in self.groups:
            rows = [i for i in members if i in wanted]
            if rows:
                self._combine_group(mesh.get_group(), rows, new, parts, params, sample_sizes, strides)

    def _combine_group(
        self,
        group: Any,
        rows: list[int],
        new: list[Part],
        out: list[Part],
        params: Sequence[torch.Tensor],
        sample_sizes: Sequence[int],
        strides: Sequence[int],
    ) -> None:
        import torch.distributed as dist

        row_of = {i: r for r, i in enumerate(rows)}
        device = local(params[rows[0]]).device
        # [values (10) | measured (10) | local entries (1)] per sharded parameter
        mine = torch.zeros(len(rows), 2 * _N + 1, dtype=torch.float64, device=device)
        counts = [local(params[i]).numel() * (2 if params[i].is_complex() else 1) for i in rows]
        empty = [r for r, n in enumerate(counts) if n == 0]
        if empty:  # an empty shard (fewer rows than ranks): every statistic of it is 0, and measured
            mine[self._const(empty, torch.long, device), _N : 2 * _N] = 1.0
        for pos, col, t in new:
            sel = [j for j, i in enumerate(pos) if i in row_of]
            if not sel:
                continue
            at = self._const([row_of[pos[j]] for j in sel], torch.long, device)
            values = t if len(sel) == len(pos) else t[self._const(sel, torch.long, t.device)]
            width = t.shape[1]
            mine[at, col : col + width] = values.to(device=device, dtype=torch.float64)
            mine[at, _N + col : _N + col + width] = 1.0
        mine[:, 2 * _N] = self._const(counts, torch.float64, device)
        world = dist.get_world_size(group)
        gathered = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(gathered, mine, group=group)
        # the same values on every rank, whatever this rank measured: columns some rank did not measure
        # are unmeasured
        sampling = self._const(
            [v for i in rows for v in (strides[i], sample_sizes[i])], torch.float64, device
        )
        out.append((rows, 0, _whole(torch.stack(gathered), sampling.view(-1, 2))))


def _scaled_l2(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(sum over dim 0 of x^2)`` without overflow or underflow (scaled by the largest |x|)."""
    top = x.abs().amax(0)
    safe = torch.where((top > 0) & top.isfinite(), top, torch.ones_like(top))
    out = safe * (x / safe).square().sum(0).sqrt()
    return torch.where(top.isinf() & ~x.isnan().any(0), top, out)


def _whole(everyone: torch.Tensor, sampling: torch.Tensor) -> torch.Tensor:
    """The ``[rows, 10]`` whole-tensor columns from every rank's ``[world, rows, 21]`` shard columns.

    ``sampling``: ``[rows, 2]``, each parameter's sample stride and whole sample size.
    """
    v, measured, n = everyone[..., :_N], everyone[..., _N : 2 * _N], everyone[..., 2 * _N]
    device = everyone.device
    res = torch.zeros(v.shape[1:], dtype=torch.float64, device=device)
    for c in _L2:
        res[:, c] = _scaled_l2(v[..., c])
    res[:, Column.GRAD_MAX_ABS] = v[..., Column.GRAD_MAX_ABS].amax(0)
    for c in _SUMS:
        res[:, c] = v[..., c].sum(0)
    # ||g - mean|| of the whole tensor from the shards' (Chan et al. 1979); -1 where a shard did not measure
    c_r = v[..., Column.GRAD_CENTERED]
    total_n = n.sum(0)
    mean = res[:, Column.GRAD_SUM] / total_n.clamp(min=1)
    mean_r = v[..., Column.GRAD_SUM] / n.clamp(min=1)
    spread = (n * (mean_r - mean).square()).sum(0)
    centered = (c_r.square().sum(0) + spread).sqrt()
    direct = ((c_r >= 0) | c_r.isnan() | c_r.isinf()).all(0)
    res[:, Column.GRAD_CENTERED] = torch.where(direct, centered, torch.full_like(centered, -1.0))
    # each shard sampled its own entries: rescale to the sample size the record assumes
    stride, k = sampling[:, 0], sampling[:, 1]
    k_shards = torch.ceil(n / stride).sum(0)
    factor = torch.where(k_shards > 0, k / k_shards.clamp(min=1), torch.ones_like(k))
    res[:, Column.GRAD_NONZERO] *= factor
    res[:, Column.PARAM_NORM] *= factor.sqrt()
    res[:, Column.UPDATE_NORM] *= factor.sqrt()
    unmeasured = res.new_tensor(_UNMEASURED.tolist()).expand_as(res)
    return torch.where(measured.bool().all(0), res, unmeasured)
