"""Where the content of each ``.grad`` came from, tracked on the host through version counters.

PyTorch has no hook on ``zero_grad`` and people clear gradients in many ways (``optimizer.zero_grad()``,
``model.zero_grad()``, ``p.grad = None``, ``p.grad.zero_()``), so gradwatch detects the *effect*. Every
in-place write to a tensor increments its version counter (``Tensor._version``), and autograd's
``AccumulateGrad`` adds a new gradient into an existing ``.grad`` in place (one increment) or installs a
new tensor when ``.grad`` is ``None``. So at each observation of a parameter's ``.grad`` the tracker
knows, without reading a single value, whether its content was kept since the previous observation
(same tensor object, version exactly one higher after an accumulation, or unchanged) or reset (a
different or no tensor, or any other in-place write such as ``zero_()``).

Per parameter it keeps: the backward passes whose gradients make up the current content, whether that
content includes a gradient already used by the parameter's owner (its optimizer's ``step()``, or a
step boundary when no optimizer holds it), and whether it received a new gradient since that use.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch

from gradwatch import compat

__all__ = ["HORIZON", "Provenance"]

#: Backward passes older than this many passes are forgotten (bounds memory; a discarded pass is
#: normally judged at the next optimizer step, a few passes later).
HORIZON = 64


class Provenance:
    """Host-side provenance of the gradients of ``n`` watched parameters.

    Args:
        n: number of watched parameters.
    """

    def __init__(self, n: int) -> None:
        # id() of the .grad tensor last seen (no reference to it: a weak reference would make
        # torch.utils.swap_tensors, used by module.to() in swap mode, refuse the gradient). Only compared
        # while the old tensor is known to be alive or just replaced, where ids cannot be reused.
        self._ref: list[int | None] = [None] * n
        self._ver = [0] * n
        #: sharded parameters (FSDP2): a weak reference to the ``.grad`` last seen, instead of its id (no
        #: hook runs before their accumulation, so a freed gradient's id may already be reused)
        self._seen: dict[int, weakref.ref[torch.Tensor] | None] = {}
        self._param_ver = [0] * n  # the parameter's own version when its last gradient arrived
        #: content includes a gradient the owner already used at step ``used_at[i]``
        self.holds_used = [False] * n
        self.used_at = [-1] * n
        self.used_by = [""] * n
        #: received a new gradient since the owner's last use
        self.fresh = [False] * n
        #: the owner is about to step again on the untouched gradient it already used
        self.restep = [False] * n
        self._passes: list[set[int]] = [set() for _ in range(n)]
        self.pass_id = 0
        self.used_passes: set[int] = set()
        #: backward pass -> parameters whose contribution from it was reset before any use
        self.reset_unused: dict[int, set[int]] = {}
        #: backward passes with non-finite gradients reset without an optimizer step (AMP skips)
        self.skipped = 0
        #: backward pass -> parameters it accumulated into
        self.touched: dict[int, set[int]] = {}
        self._touching: set[int] | None = None  # touched[pass_id], while it is in the table
        #: backward pass -> flags (``stats.all_finite``), all true if every gradient it touched was finite
        self.pass_finite: dict[int, list[Any]] = {}
        #: backward pass -> the unused passes whose gradients were accumulated into the same ``.grad``
        #: content as its own and reset with it (gradient accumulation)
        self.co_reset: dict[int, set[int]] = {}
        #: backward pass -> parameters reset unused after they were themselves written in place
        self.moved_reset: dict[int, set[int]] = {}
        self._skip_groups: set[int] = set()  # skipped contents already counted (by their first pass)

    def new_pass(self, inside_optimizer: bool) -> None:
        """A backward pass starts; one run inside ``optimizer.step()`` (a closure) counts as used."""
        self.pass_id += 1
        self._touching = self.touched[self.pass_id] = set()
        if inside_optimizer:
            self.used_passes.add(self.pass_id)

    def _reset(self, i: int, param: torch.Tensor) -> None:
        passes = self._passes[i]  # passes added since the owner's last use
        unused = [p for p in passes if p not in self.used_passes]
        # the parameter itself was written in place since its gradient arrived (a hand-written update,
        # a constraint such as clamp_ or renorm_, an Embedding's max_norm)
        moved = compat.version_counter(param) != self._param_ver[i]
        for p in unused:
            self.settle(p)  # (deferred finite flags: read while the gradients they keep still exist)
            self.reset_unused.setdefault(p, set()).add(i)
            if moved:
                self.moved_reset.setdefault(p, set()).add(i)
            if len(unused) > 1:  # accumulated into one .grad content, reset together
                self.co_reset.setdefault(p, set()).update(unused)
        passes.clear()  # (reused: no allocation per parameter and step)
        self.holds_used[i] = False

    def settle(self, p: int) -> None:
        """Compute pass ``p``'s deferred finite flags now, while the gradients they keep still exist.

        (``stats.host.DeferredFinite`` keeps the gradients it describes until read; device flags are left
        as they are: reading them syncs.)
        """
        for flag in self.pass_finite.get(p, ()):
            settle = getattr(flag, "settle", None)
            if settle is not None:
                settle()

    def settle_pending(self) -> None:
        """:meth:`settle` every pass not yet used or forgotten (none where a loop steps before zeroing)."""
        for p in list(self.pass_finite):
            self.settle(p)

    def settle_held(self, idx: Sequence[int]) -> None:
        """:meth:`settle` every pass whose gradients parameters ``idx`` hold now."""
        for p in {p for i in idx for p in self._passes[i]}:
            self.settle(p)

    def _observe(self, i: int, g: torch.Tensor | None) -> None:
        self._ref[i] = None if g is None else id(g)
        self._ver[i] = 0 if g is None else compat.version_counter(g)
        if self._seen and i in self._seen:
            self._seen[i] = None if g is None else weakref.ref(g)

    def shard(self, idx: Sequence[int]) -> None:
        """Parameters ``idx`` are sharded ``DTensor`` s (FSDP2): see :meth:`sharded_accumulated`."""
        for i in idx:
            self._seen.setdefault(i, None)

    def sharded_accumulated(self, i: int, param: torch.Tensor) -> None:
        """A sharded parameter's gradient was written (FSDP2 calls its post-accumulate hooks itself).

        No hook runs before that write, so whether the previous content was kept is read afterwards:
        FSDP2 adds a new gradient into the local tensor of the existing ``.grad`` (the ``DTensor``
        object and its version counter are untouched) or installs a new ``DTensor`` when ``.grad`` was
        ``None``; ``zero_()`` on the ``DTensor`` increments its version. So the content was kept exactly
        when ``.grad`` is the very object last seen, at the version last seen. (A ``.data.zero_()`` behind
        the version counter is not seen here: its values are gone by now.)
        """
        g = param.grad
        seen = self._seen.get(i)
        if self._ref[i] is not None and (
            g is None or seen is None or seen() is not g or compat.version_counter(g) != self._ver[i]
        ):
            self._reset(i, param)
        self.accumulated(i, param)

    def before_accumulate(self, i: int, param: torch.Tensor) -> None:
        """A gradient is about to be accumulated into ``param.grad`` (tensor hook on the leaf).

        ``.grad`` still holds what was there: ``None`` (reset by ``set_to_none``), another tensor (the
        user assigned one; it was created while the old one was alive, so ``id`` cannot collide), or the
        same tensor with a newer version (written in place: ``zero_()``).
        """
        g = param.grad
        ref = self._ref[i]
        if ref is not None and (
            g is None or id(g) != ref or compat.version_counter(g) != self._ver[i]
        ):  # not kept
            self._reset(i, param)
            self._ref[i] = None if g is None else id(g)
            self._ver[i] = 0 if g is None else compat.version_counter(g)
        elif self.holds_used[i] and g is not None and not bool(g.any()):
            # kept by its version, yet all zeros: zeroed behind the version counter
            # (``p.grad.data.zero_()``, the old idiom), or a used gradient that was exactly 0; either way
            # nothing used is carried over. Only read on this path (a loop that does not zero, or zeroes
            # through ``.data``); on CUDA it waits for the device.
            self._reset(i, param)

    def accumulated(self, i: int, param: torch.Tensor) -> None:
        """A gradient of the current pass was accumulated into ``param.grad`` (post-accumulate hook)."""
        self._passes[i].add(self.pass_id)
        touching = self._touching
        if touching is None or self.touched.get(self.pass_id) is not touching:  # forgotten (horizon)
            touching = self._touching = self.touched.setdefault(self.pass_id, set())
        touching.add(i)
        self.fresh[i] = True
        self._param_ver[i] = compat.version_counter(param)
        g = param.grad  # (_observe, inlined: this runs for every parameter of every backward pass)
        self._ref[i] = None if g is None else id(g)
        self._ver[i] = 0 if g is None else compat.version_counter(g)
        if self._seen:
            self._observe(i, g)

    def check(self, i: int, param: torch.Tensor) -> None:
        """Look at ``param.grad`` just before its optimizer steps: notice a reset since the last observation.

        Between a backward pass and the optimizer step, in-place writes to ``.grad`` are expected
        (``clip_grad_norm_``, ``GradScaler.unscale_``), so only a replaced or removed ``.grad`` counts as
        a reset here; the new version becomes the base for the next observation. A ``.grad`` assigned by
        hand (``p.grad = g``, e.g. from ``torch.autograd.grad``) is a new gradient: ``fresh``; the passes
        the replaced one held count as used (it may well be computed from them), not discarded.
        """
        g = param.grad
        ref = self._ref[i]
        self.restep[i] = False
        if ref is None:
            if g is not None:  # assigned by hand since the last observation (no accumulation ran)
                self.fresh[i] = True
                self._observe(i, g)
            return
        if g is None or id(g) != ref:
            if g is not None:  # replaced by hand (p.grad = p.grad + noise, a projection, an all-reduce):
                self.used_passes.update(self._passes[i])  # made from what it held, not discarded
            self._reset(i, param)
            if g is not None:  # and a new gradient
                self.fresh[i] = True
        elif self.holds_used[i] and not self.fresh[i] and compat.version_counter(g) == self._ver[i]:
            # untouched since the owner used it, no new gradient: the owner is about to step again on
            # exactly the gradient it already applied
            self.restep[i] = True
        self._observe(i, g)

    def check_all(self, idx: Sequence[int], params: Sequence[torch.Tensor]) -> None:
        """:meth:`check` of ``params[i]`` for each ``i`` in ``idx`` (one call per optimizer step).

        The usual case, a gradient accumulated since the last observation and not replaced, in one loop
        with no call per parameter; anything else goes through :meth:`check`.
        """
        ref, ver, restep, seen, version = (
            self._ref,
            self._ver,
            self.restep,
            self._seen,
            compat.version_counter,
        )
        for i in idx:
            g = params[i].grad
            r = ref[i]
            if r is None or g is None or id(g) != r or self.holds_used[i] or seen:
                self.check(i, params[i])
                continue
            restep[i] = False
            ver[i] = version(g)

    def use_all(
        self, idx: Sequence[int], params: Sequence[torch.Tensor], step: int, owner: str, observe: bool
    ) -> None:
        """:meth:`use` of ``params[i]`` for each ``i`` in ``idx`` (one call per optimizer step)."""
        if self._seen:
            for i in idx:
                self.use(i, params[i], step, owner, observe)
            return
        passes, used = self._passes, self.used_passes
        holds, used_at, used_by, fresh = self.holds_used, self.used_at, self.used_by, self.fresh
        ref, ver, version = self._ref, self._ver, compat.version_counter
        for i in idx:
            g = params[i].grad
            held = passes[i]
            if held:
                used.update(held)
                held.clear()  # (reused: no allocation per parameter and step)
            holds[i] = g is not None
            used_at[i] = step
            used_by[i] = owner
            fresh[i] = False
            if observe:  # (_observe, inlined)
                ref[i] = None if g is None else id(g)
                ver[i] = 0 if g is None else version(g)

    def use(self, i: int, param: torch.Tensor, step: int, owner: str, observe: bool) -> None:
        """The owner used ``param.grad`` at ``step``; with ``observe``, its current state is the new base."""
        g = param.grad
        self.used_passes.update(self._passes[i])
        self._passes[i].clear()  # (reused: no allocation per parameter and step)
        self.holds_used[i] = g is not None
        self.used_at[i] = step
        self.used_by[i] = owner
        self.fresh[i] = False
        if observe:
            self._observe(i, g)

    def passes(self, i: int) -> set[int]:
        """The backward passes whose gradients make up parameter ``i``'s ``.grad`` since its use or reset.

        Read-only: the set is the tracker's own.
        """
        return self._passes[i]

    def stale(self, idx: Sequence[int]) -> list[int]:
        """Of ``idx``, the parameters whose gradient the owner already used and is about to use again.

        Either mixed with a new gradient (``fresh``), or untouched (``restep``, set by :meth:`check`).
        """
        return [i for i in idx if self.holds_used[i] and (self.fresh[i] or self.restep[i])]

    def discarded_passes(self) -> dict[int, set[int]]:
        """Backward passes all of whose gradients were reset before any optimizer used any of them.

        Each is returned once, with the parameters it had accumulated into, and forgotten. A pass whose
        gradients were not all finite is left out: that is an optimizer step an AMP ``GradScaler``
        skipped, not a discarded gradient. So is a finite pass accumulated into the same gradients as
        such a pass and reset with them (gradient accumulation where one micro-batch overflowed: the
        scaler skips the whole accumulated step). Costs one host read of a flag per such pass; each
        skipped step is counted once in ``skipped``. Nor is a pass every parameter of which was written
        in place between its gradient's arrival and its reset: a hand-written update used it (SAM).
        """
        out = {}
        for p, params in list(self.reset_unused.items()):
            if p in self.used_passes:
                del self.reset_unused[p]
                continue
            if not params >= self.touched.get(p, set()):
                continue  # part of the pass is still held; an optimizer may yet use it
            del self.reset_unused[p]
            if self.moved_reset.pop(p, set()) >= (self.touched.get(p) or params):
                # every parameter it reached was written in place before its gradient was reset: a
                # hand-written update used the pass (SAM's ascent step moves every weight), so it was not
                # discarded; a constraint on some layers (clamp_, renorm_, max_norm) moves only those
                self.used_passes.add(p)
                continue
            group = self.co_reset.get(p, set()) | {p}
            if any(not all(bool(f) for f in self.pass_finite.get(q, ())) for q in group):
                if min(group) not in self._skip_groups:
                    self._skip_groups.add(min(group))
                    self.skipped += 1
                continue
            out[p] = params
        for p in [p for p in self.touched if p in self.used_passes]:
            del self.touched[p]
            self.pass_finite.pop(p, None)
            self.co_reset.pop(p, None)
            self.moved_reset.pop(p, None)
        horizon = self.pass_id - HORIZON  # bounded memory: very old passes can no longer be judged
        for table in (self.touched, self.pass_finite, self.reset_unused, self.co_reset, self.moved_reset):
            for p in [p for p in table if p < horizon]:
                del table[p]
        self._skip_groups = {p for p in self._skip_groups if p >= horizon}
        if len(self.used_passes) > 2 * HORIZON:
            self.used_passes = {p for p in self.used_passes if p >= horizon}
        return out
