"""``missing_zero_grad`` and ``discarded_grad``: gradients carried into the next step, or wiped too early.

Both read the host-side :class:`~gradwatch.provenance.Provenance` of every ``.grad``; neither
reads a gradient value (``discarded_grad`` reads one finite-flag per discarded backward pass, to tell an
AMP ``GradScaler``'s skipped step from a bug). See ``docs/zero-grad.md`` for the method and its limits.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from gradwatch.detectors.base import Detector
from gradwatch.findings import Finding
from gradwatch.forward_origin import params_behind
from gradwatch.provenance import HORIZON

if TYPE_CHECKING:  # pragma: no cover
    from gradwatch.detectors.base import WatchView

__all__ = ["DiscardedGradDetector", "MissingZeroGradDetector"]


def _names(names: Sequence[str], idx: Sequence[int], limit: int = 6) -> str:
    shown = ", ".join(f"{names[i]}.grad" for i in idx[:limit])
    return shown + (f" and {len(idx) - limit} more" if len(idx) > limit else "")


def _leak_fix(name: str) -> str:
    """The fix of another loss's gradient left in optimizer ``name``'s parameters."""
    return (
        f"Fix: zero {name}'s gradients at the start of its step, before its backward() (what the other "
        f"loss left there is then cleared), or freeze these parameters (requires_grad_(False)) around the "
        f"other loss's backward()."
    )


class MissingZeroGradDetector(Detector):
    """A parameter's owner steps with a gradient that still holds one from an earlier step.

    The owner is the optimizer whose ``param_groups`` hold the parameter, or, when no optimizer is
    watched, the step boundary (decorator, ``Watcher.step()``, in-place update). Three ways:

    * the gradient still holds the one the owner used at its previous step: it is ``stale + fresh``, and
      each update applies every earlier gradient again;
    * (marked or not) its gradient holds a backward pass that went through the owner's layers to another
      optimizer's parameters (they lie behind the owner's layers in that pass's autograd graph: a GAN
      generator's loss through the discriminator, an actor's loss through the critic) and that this
      other optimizer stepped with before the owner's own pass ran, mixed with that own pass (one that
      reached no other optimizer's parameters); not judged at the owner's first step;
    * (steps marked by the user: ``Watcher.step()`` or ``@w.train_step``) a backward pass ran after the
      owner's step in a step, its gradient was carried into a later step and the owner applied it there
      *together with* that step's own gradient. A loop that steps first and then computes the gradient
      for its next step applies the carried gradient alone, once: not reported.

    A trunk shared on purpose by two losses with their own optimizers (actor-critic) has no other
    optimizer's parameters behind it, and a part several optimizers' losses reach holds no pass of its
    own owner: neither is reported (``docs/zero-grad.md``).

    Reported once per parameter, at the first step where it happens, grouped by owner.

    Args:
        view: the shared gradient provenance, parameter names and sizes, the optimizers' parameters,
            and the recorded gradient norms (the evidence: ``view.norm_at``).
    """

    kinds = ("missing_zero_grad",)

    def __init__(self, view: WatchView) -> None:
        self.prov = view.provenance
        self.names = view.names
        self.norm_at = view.norm_at
        # an empty parameter has nothing to carry over
        self.reported: set[int] = {i for i, n in enumerate(view.numels) if n == 0}
        #: optimizer name -> (step, last backward pass id, positions it holds) at its last step
        self.stepped: dict[str, tuple[int, int, frozenset[int]]] = {}
        #: optimizer name -> parameter position -> (step, pass id) of a pass that ran after its step
        self.after_step: dict[str, dict[int, tuple[int, int]]] = {}
        #: (step, id of its first backward pass that reached a watched parameter); pass ids only grow, so
        #: a pass ran in that step exactly when its id is at least that one
        self.first_pass: tuple[int, int] = (-1, 0)
        self.view = view
        #: backward pass -> the parameters it accumulated into, for the last HORIZON passes (only with
        #: several optimizers: what tells another optimizer's pass from an optimizer's own)
        self.touched: dict[int, Collection[int]] = {}
        #: backward pass -> optimizer -> the other optimizers with parameters behind its layers in that
        #: pass's graph (:func:`~gradwatch.forward_origin.params_behind`), for passes reaching several
        self.behind: dict[int, dict[str, frozenset[str]]] = {}
        self._graphs: dict[tuple[Any, ...], dict[str, frozenset[str]]] = {}  # the same graph, read once
        self.several = len(view.optimizer_names()) > 1
        self._holds: dict[str, frozenset[int]] | None = None  # optimizer -> positions it holds
        #: (id of the last backward pass before it, optimizer name) of the recent optimizer steps
        self.step_log: collections.deque[tuple[int, str]] = collections.deque(maxlen=4 * HORIZON)

    def on_optimizer_post(self, name: str, owned: Sequence[int], step: int) -> list[Finding]:  # noqa: D102
        self.stepped[name] = held = (step, self.prov.pass_id, frozenset(owned))
        if self.several:
            self.step_log.append((self.prov.pass_id, name))
            if self._holds is not None and self._holds.get(name) != held[2]:
                self._holds = None  # (param groups changed)
        self.after_step.pop(name, None)
        return []

    def on_backward_end(self, touched: Collection[int], step: int) -> list[Finding]:  # noqa: D102
        pass_id = self.prov.pass_id
        if self.first_pass[0] != step:
            self.first_pass = (step, pass_id)
        behind = None
        if self.several:
            self.touched[pass_id] = touched
            behind = self._behind(touched)
            if behind is not None:
                self.behind[pass_id] = behind
            if len(self.touched) > 2 * HORIZON:  # (bounded: older passes can no longer be judged)
                self.touched = {p: t for p, t in self.touched.items() if p > pass_id - HORIZON}
                self.behind = {p: b for p, b in self.behind.items() if p > pass_id - HORIZON}
        for name, (at, last, owned) in self.stepped.items():
            # this pass ran after that optimizer's step (and, if it reached other optimizers' parameters,
            # went through this one's to theirs)
            if at == step and pass_id > last and (behind is None or behind.get(name)):
                held = owned.intersection(touched)
                if held:
                    marks = self.after_step.setdefault(name, {})
                    for i in held:
                        marks.setdefault(i, (step, pass_id))
        return []

    def holds(self) -> dict[str, frozenset[int]]:
        """Optimizer name -> positions it holds (cached; rebuilt when an optimizer steps holding others)."""
        if self._holds is None:
            self._holds = {q: frozenset(pos) for q, pos in self.view.optimizer_positions().items()}
            self._graphs.clear()  # (read against the previous holdings)
        return self._holds

    def _behind(self, touched: Collection[int]) -> dict[str, frozenset[str]] | None:
        """Per optimizer, the other optimizers with parameters behind its layers in the pass just ended.

        ``None`` for a pass that reached the parameters of one optimizer only, or whose graph is unknown
        (not given to ``torch.autograd.backward``). A pass reaching the same optimizers from the same
        kinds of roots is read once (a loop's passes repeat; a layer dropped now and then does not change
        which optimizer's parameters lie behind which one's layers).
        """
        holds = self.holds()
        reached = frozenset(q for q, pos in holds.items() if not pos.isdisjoint(touched))
        roots = self.view.backward_roots()
        if len(reached) < 2 or not roots:
            return None
        key = (reached, *map(type, roots))  # (the graph is read once per set of optimizers it reached)
        found = self._graphs.get(key)
        if found is None:
            owner_of = {i: q for q, pos in holds.items() for i in pos}
            behind = params_behind(roots, self.view.positions_by_id(), owner_of) or {}
            found = {
                o: frozenset(owner_of[i] for i in pos if i in owner_of) - {o} for o, pos in behind.items()
            }
            if len(self._graphs) >= 64:
                self._graphs.clear()
            self._graphs[key] = found
        return found

    def _carried(self, name: str, owned: Sequence[int], step: int) -> list[Finding]:
        """Gradients from a pass run after ``name``'s step in an earlier step, still held at its next step."""
        marks = self.after_step.pop(name, None)
        if not marks:
            return []
        first = self.first_pass[1] if self.first_pass[0] == step else math.inf  # (no pass in this step yet)
        leaked = [
            i
            for i in owned
            if i in marks
            and marks[i][0] < step
            and i not in self.reported
            and marks[i][1] in (held := self.prov.passes(i))
            and any(p >= first for p in held)  # with this step's own gradient
        ]
        if not leaked:
            return []
        self.reported.update(leaked)
        at = min(marks[i][0] for i in leaked)
        message = (
            f"optimizer {name} at step {step} applies to {_names(self.names, leaked)} a gradient left there "
            f"at step {at} by a backward pass that ran after {name} had stepped (another loss's backward "
            f"through these parameters, such as a GAN generator's loss through the discriminator): it was "
            f"carried into this step and added to this step's own gradient. {_leak_fix(name)}"
        )
        return [Finding("missing_zero_grad", step, tuple(self.names[i] for i in leaked), message)]

    def _foreign(self, name: str, owned: Sequence[int], step: int) -> list[Finding]:
        """Another optimizer's backward pass, through ``name``'s parameters, mixed into its own.

        Marked or not: a parameter's gradient holds a pass that went *through* ``name``'s layers to
        another optimizer's parameters (behind them in the pass's graph: :meth:`_behind`, as a
        discriminator between a generator's loss and the generator) and that this other optimizer stepped
        with *before* ``name``'s own pass ran, together with that own pass (one that reached no parameter
        another optimizer holds). A trunk two losses share on purpose has no other optimizer's
        parameters behind it, and a part several optimizers' losses reach (a shared head, a loss weight)
        gets no pass of its own: neither is reported.
        """
        if name not in self.stepped or not self.stepped.keys() - {name}:
            # (another optimizer must have stepped; and not at this one's first step: before it, a
            # gradient zeroed through .data, the old idiom, cannot be told from one left there)
            return []
        prov = self.prov
        holds: dict[str, frozenset[int]] | None = None
        others: set[int] = set()
        leaked, users = [], set()
        judged: dict[frozenset[int], set[str]] = {}  # (the parameters of a network share their passes)
        for i in owned:
            held = prov.passes(i)
            if len(held) < 2 or i in self.reported:
                continue
            if holds is None:
                holds = {q: pos for q, pos in self.holds().items() if q != name}
                others = set().union(*holds.values())
            passes = frozenset(held)
            by = judged.get(passes)
            if by is None:
                by = judged[passes] = self._leaked_by(name, passes, others)
            if by:
                leaked.append(i)
                users |= by
        if not leaked:
            return []
        self.reported.update(leaked)
        who = " or ".join(sorted(users))
        message = (
            f"optimizer {name} at step {step} applies to {_names(self.names, leaked)} a gradient left "
            f"there by another loss's backward pass, which went through these parameters to the "
            f"parameters of {who} and which {who} already stepped with (such as a GAN generator's loss "
            f"through the discriminator), added to {name}'s own gradient. {_leak_fix(name)}"
        )
        return [Finding("missing_zero_grad", step, tuple(self.names[i] for i in leaked), message)]

    def _leaked_by(self, name: str, held: frozenset[int], others: set[int]) -> set[str]:
        """The optimizers that stepped with a pass in ``held`` through ``name``'s layers before its own.

        ``held``: the backward passes in one ``.grad``; ``others``: positions other optimizers hold.
        Empty when ``held`` has no own pass of ``name`` (one that reached none of ``others``).
        """
        used, touched = self.prov.used_passes, self.touched
        own = [p for p in held if p not in used and p in touched and others.isdisjoint(touched[p])]
        if not own:
            return set()
        first_own = min(own)
        return {  # optimizers that stepped between a pass through these parameters and the own pass
            q
            for p in held
            if p in used and p < first_own and (through := self.behind.get(p, {}).get(name))
            for at, q in self.step_log
            if p <= at < first_own and q in through
        }

    def _judge(self, owner: str, idx: Sequence[int], step: int, fix_owner: str) -> list[Finding]:
        stale = [i for i in self.prov.stale(idx) if i not in self.reported]
        if not stale:
            return []
        if "{zero}" in fix_owner:  # each forgotten parameter's own fix, in its own name
            zero = "; ".join(f"{self.names[i]}.grad.zero_()" for i in stale[:4])
            fix_owner = fix_owner.replace("{zero}", zero + ("; ..." if len(stale) > 4 else ""))
        self.reported.update(stale)
        prev = self.prov.used_at[stale[0]]
        norms = [self.norm_at(i, prev) for i in stale]
        carried = [n for n in norms if n is not None]
        evidence = (
            f"the carried-over part has norm {sum(n * n for n in carried) ** 0.5:.4g}"
            if carried
            else "the carried-over part was not recorded (step outside the `every` schedule)"
        )
        if all(self.prov.restep[i] and not self.prov.fresh[i] for i in stale):
            message = (
                f"{owner} at step {step} steps again on {_names(self.names, stale)} unchanged since it used "
                f"them at step {prev}, with no backward pass in between: the same gradient is applied twice "
                f"({evidence}). Fix: call backward() (and zero_grad()) between optimizer steps, or step once."
            )
        else:
            message = (
                f"{owner} at step {step} uses {_names(self.names, stale)} holding the step-{prev} gradient "
                f"plus this step's contribution: the gradient was not zeroed after it was used at step "
                f"{prev}, so every update re-applies all earlier gradients ({evidence}). Fix: {fix_owner}"
            )
        return [Finding("missing_zero_grad", step, tuple(self.names[i] for i in stale), message)]

    def on_optimizer_pre(self, name: str, owned: Sequence[int], step: int) -> list[Finding]:  # noqa: D102
        return (
            self._carried(name, owned, step)
            + self._foreign(name, owned, step)
            + self._judge(
                f"optimizer {name}",
                owned,
                step,
                "call optimizer.zero_grad() once per step, before backward() or after step(); if you "
                "accumulate gradients on purpose, call step() and zero_grad() once per N backward() calls.",
            )
        )

    def on_boundary(self, unowned: Sequence[int], step: int) -> list[Finding]:  # noqa: D102
        return self._judge(
            "the update",
            unowned,
            step,
            "clear the gradients after each update: {zero} (or set each .grad = None, or call "
            "optimizer.zero_grad() / model.zero_grad()); if you accumulate on purpose, end each step with "
            "the watcher's step() (the object gradwatch.watch returned).",
        )


class DiscardedGradDetector(Detector):
    """All gradients of a backward pass were reset before any optimizer used any of them.

    Typical causes: ``zero_grad()`` called for every micro-batch inside a gradient-accumulation window,
    or ``model.zero_grad()`` bypassing an accumulation-aware wrapper: the step then uses only the last
    micro-batch. Not reported: a backward pass some optimizer used (the GAN generator's pass also fills
    the discriminator's gradients, which are then zeroed), passes run by a closure inside ``step()``,
    and passes with non-finite gradients (an AMP ``GradScaler`` skipped that step).

    Args:
        view: the shared gradient provenance and the parameter names.
    """

    kinds = ("discarded_grad",)

    def __init__(self, view: WatchView) -> None:
        self.prov = view.provenance
        self.names = view.names
        self.reported: set[int] = set()
        #: steps at which a backward pass with non-finite gradients was dropped without an optimizer
        #: step (an AMP GradScaler skip), at most the last 1000
        self.skipped_steps: list[int] = []

    def _judge(self, step: int) -> list[Finding]:
        before = self.prov.skipped
        passes = self.prov.discarded_passes()
        if self.prov.skipped > before:
            # not a bug: the optimizer step was skipped (AMP GradScaler found inf/NaN); noted, not reported
            self.skipped_steps.extend([step] * (self.prov.skipped - before))
            del self.skipped_steps[:-1000]
        lost = sorted({i for params in passes.values() for i in params} - self.reported)
        if not lost:
            return []
        self.reported.update(lost)
        message = (
            f"at step {step}, the gradients of {len(passes)} backward pass(es) into "
            f"{_names(self.names, lost)} were reset (zero_grad() or .grad = None) before any optimizer "
            f"used them: the update sees only what later backward passes left, or nothing at all if "
            f"zero_grad() runs between backward() and step(). Fix: call zero_grad() before backward() or "
            f"after optimizer.step(); in gradient accumulation, once per N micro-batches, after the step. "
            f"If that pass was a deliberate probe (a saliency map, a gradient check), silence it with "
            f"w.suppress('discarded_grad')."
        )
        return [Finding("discarded_grad", step, tuple(self.names[i] for i in lost), message)]

    def on_optimizer_used(self, name: str, owned: Sequence[int], step: int) -> list[Finding]:  # noqa: D102
        return self._judge(step)

    def on_boundary_used(self, unowned: Sequence[int], step: int) -> list[Finding]:  # noqa: D102
        return self._judge(step)
