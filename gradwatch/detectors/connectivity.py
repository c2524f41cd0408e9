"""Detectors for parameters cut off from training: ``no_grad``, ``not_updated``, ``ineffective_freeze``."""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from gradwatch.detectors.base import Detector
from gradwatch.findings import Finding
from gradwatch.findings import short_list as _short
from gradwatch.forward_origin import graph_leaves
from gradwatch.records import StepRecord

if TYPE_CHECKING:  # pragma: no cover
    from gradwatch.detectors.base import WatchView

__all__ = ["IneffectiveFreezeDetector", "NoGradDetector", "NotUpdatedDetector", "loss_graph_leaves"]


def loss_graph_leaves(loss: torch.Tensor, watched: set[int]) -> tuple[set[int], list[torch.Tensor]]:
    """The leaves of ``loss``'s autograd graph: ``id()`` of the watched ones reached, and the others.

    Walks ``grad_fn.next_functions`` from ``loss`` (each node once) and reads each ``AccumulateGrad``
    node's ``variable``. ``watched`` holds the ``id()`` of each watched parameter. Returns the ids of
    watched parameters the loss reaches, and the leaves that require grad but are not watched (once
    each, in the order found). Host-only; O(graph size).
    """
    reached: set[int] = set()
    foreign: dict[int, torch.Tensor] = {}
    for var in graph_leaves([loss.grad_fn]):
        if id(var) in watched:
            reached.add(id(var))
        elif var.requires_grad:
            foreign[id(var)] = var
    return reached, list(foreign.values())


_CUT_CAUSES = (
    "the graph is cut between them and the loss: .item()/.tolist()/float() or a numpy round-trip, "
    ".detach() or .data, re-wrapping with torch.tensor(...), argmax/argmin/comparisons, or a forward run "
    "under torch.no_grad()/torch.inference_mode(); or the module is never called in forward()"
)


class NoGradDetector(Detector):
    """A watched parameter with ``requires_grad=True`` gets no gradient at ``no_grad_steps`` uses in a row.

    A *use* is a step of the optimizer that holds the parameter (or, with no optimizer, a step
    boundary). A window, not a single step, so that a branch skipped now and then is not reported while
    a layer cut out of the graph is reported within the first ``no_grad_steps`` (default 5) steps. Tells
    apart parameters that never received a gradient since attach and those that stopped receiving one.
    A parameter frozen later (``requires_grad_(False)`` during training) is not counted while frozen.

    Args:
        view: names, provenance and ``requires_grad`` of the watched parameters.
        steps: the window.
    """

    kinds = ("no_grad",)

    def __init__(self, view: WatchView, steps: int) -> None:
        self.prov = view.provenance
        self.names = view.names
        self.steps = steps
        self.requires_grad = view.requires_grad
        self.missed = [0] * len(self.names)
        self.ever = [False] * len(self.names)
        self.reported: set[int] = set()

    def _judge(self, idx: Sequence[int], step: int, owner: str) -> list[Finding]:
        ready = []
        for i in idx:
            if self.prov.fresh[i] or not self.requires_grad(i):  # frozen since: not missing anything
                self.ever[i] = self.ever[i] or self.prov.fresh[i]
                self.missed[i] = 0
                continue
            self.missed[i] += 1
            if self.missed[i] >= self.steps and i not in self.reported:
                ready.append(i)
        if not ready:
            return []
        self.reported.update(ready)
        findings = []
        for never in (True, False):
            group = [self.names[i] for i in ready if self.ever[i] != never]
            if not group:
                continue
            what = (
                "never received a gradient since gradwatch attached"
                if never
                else "stopped receiving gradients"
            )
            message = (
                f"{_short(group)} {what}: no gradient in the last {self.steps} steps of {owner} (up to "
                f"step {step}), although they require grad. Usual causes: {_CUT_CAUSES}. Fix: keep the loss "
                f"a tensor computed from the model's outputs, call the layer in forward(), or freeze it on "
                f"purpose with requires_grad_(False) (then gradwatch does not watch it)."
            )
            findings.append(Finding("no_grad", step, tuple(group), message))
        return findings

    def on_optimizer_post(self, name: str, owned: Sequence[int], step: int) -> list[Finding]:  # noqa: D102
        return self._judge(owned, step, f"optimizer {name}")

    def on_boundary(self, unowned: Sequence[int], step: int) -> list[Finding]:  # noqa: D102
        return self._judge(unowned, step, "training")

    def loss_not_connected(self, step: int, why: str) -> list[Finding]:
        """The loss reaches no watched parameter (graph check on a loss gradwatch was given)."""
        new = [i for i in range(len(self.names)) if i not in self.reported]
        if not new:
            return []
        self.reported.update(new)
        names = tuple(self.names[i] for i in new)
        message = (
            f"the loss at step {step} reaches no watched parameter ({why}), so backward() gives "
            f"{_short(list(names))} no gradient. Usual causes: {_CUT_CAUSES}. Fix: build the loss from the "
            f"model's output tensors without converting them to Python numbers or numpy."
        )
        return [Finding("no_grad", step, names, message)]


class NotUpdatedDetector(Detector):
    """A parameter with a nonzero gradient whose value does not change.

    * Not held by any watched optimizer (a layer kept in a plain Python list, a layer replaced after the
      optimizer was built, a param group that forgot a layer): reported at the first recorded step where
      it has a nonzero gradient, naming the optimizers that do not hold it.
    * Held by an optimizer but unchanged for ``not_updated_steps`` (default 5) recorded steps in a row
      while its gradient is nonzero: the update norm is exactly 0 (learning rate 0, a mask inside the
      step), or the update is undone before the next step (the sampled entries the update ratio is
      measured on are back, bit for bit, to their values at the previous recorded boundary although that
      step moved them: ``load_state_dict``, ``copy_`` or an EMA copied back after ``optimizer.step()``).
      For a parameter whose update is measured on a sample (more than 1024 entries), an update of 0 only
      counts when at least 20 sampled entries are expected to have a nonzero gradient
      (``(1 - zero_fraction) * sample size``), so a sparse update the sample misses (a few embedding
      rows under plain SGD) is not taken for no update.
      Only judged where an update would be visible in the parameter's dtype
      (``lr * ||g|| / ||theta||`` above the dtype's resolution), so tiny (vanishing) gradients are left to
      ``vanishing_grad``.

    Args:
        view: names, ownership (``unowned()``; ``None`` when no optimizer is watched: nothing to judge),
            learning rates, optimizer names and sample sizes of the watched parameters.
        steps: the window.
    """

    kinds = ("not_updated",)

    def __init__(self, view: WatchView, steps: int) -> None:
        self.view = view
        self.names = view.names
        self.steps = steps
        self.still = [0] * len(self.names)
        self.undone = [False] * len(self.names)
        self.last: list[float | None] = [None] * len(self.names)
        self.reported: set[int] = set()

    def on_record(self, record: StepRecord) -> list[Finding]:  # noqa: D102
        unowned = self.view.unowned()
        if unowned is None:
            return []
        params = record.params
        findings = []
        orphan = [
            i
            for i in unowned
            if i not in self.reported
            and params[self.names[i]].has_grad
            and params[self.names[i]].grad_norm > 0
        ]
        if orphan:
            self.reported.update(orphan)
            names = tuple(self.names[i] for i in orphan)
            optimizers = self.view.optimizer_names()
            holders = ", ".join(optimizers) + (" does not" if len(optimizers) == 1 else " do not")
            message = (
                f"{_short(list(names))} get nonzero gradients (step {record.step}) but no watched optimizer "
                f"holds them ({holders}), so they are never updated. Usual "
                f"causes: layers kept in a plain Python list instead of nn.ModuleList, a layer replaced "
                f"after "
                f"the optimizer was built, a param group that forgot a layer. Fix: build the optimizer after "
                f"the model is final from model.parameters(), or add them with optimizer.add_param_group()."
            )
            findings.append(Finding("not_updated", record.step, names, message))
        lrs = self.view.learning_rates()
        stuck = []
        unowned_set = set(unowned)
        for i, name in enumerate(self.names):
            s = params[name]
            lr = lrs.get(i)
            before, self.last[i] = self.last[i], s.update_ratio
            if i in unowned_set or s.update_ratio is None or lr is None or not s.has_grad:
                continue
            visible = s.param_norm == 0 or lr * s.grad_norm / s.param_norm > 1e-6 or lr == 0
            k = self.view.sampled_size(i)
            if k is not None and (1.0 - s.zero_fraction) * k < 20:
                visible = lr == 0  # the sample may miss a sparse update: only a zero lr is sure
            # the last update was undone before this step: the sampled weights it moved are back, bit
            # for bit, to where they were before it (load_state_dict, a copy_ or a mask after each step)
            undone = before is not None and before > 0 and s.weights_unchanged is True
            self.undone[i] = undone
            moving = s.grad_norm > 0 and math.isfinite(s.grad_norm)
            if moving and ((s.update_ratio == 0 and visible) or undone):
                self.still[i] += 1
                if self.still[i] >= self.steps and i not in self.reported:
                    stuck.append(i)
            else:
                self.still[i] = 0
        if stuck:
            self.reported.update(stuck)
            names = tuple(self.names[i] for i in stuck)
            zero_lr = [self.names[i] for i in stuck if lrs.get(i) == 0]
            restored = [self.names[i] for i in stuck if self.undone[i]]
            if zero_lr:
                cause = f"their learning rate is 0 ({_short(zero_lr)})"
            elif restored:
                cause = (
                    f"each update is undone before the next step: the weights of {_short(restored)} are back "
                    f"exactly to their previous values (load_state_dict, param.copy_(...), an EMA or mask "
                    f"copied back after optimizer.step())"
                )
            else:
                cause = "something restores or masks them after each update (a hook, p.data = ..., a mask)"
            message = (
                f"{_short(list(names))} have nonzero gradients but did not change in {self.steps} optimizer "
                f"steps (up to step {record.step}): {cause}. Fix: check the param group's lr and scheduler, "
                f"and any code that writes to these weights."
            )
            findings.append(Finding("not_updated", record.step, names, message))
        return findings

    def unreachable_leaves(self, step: int, leaves: Sequence[tuple[str, tuple[int, ...]]]) -> list[Finding]:
        """Leaf tensors the loss depends on that gradwatch does not watch (graph check)."""
        shapes = ", ".join(f"{label} {list(shape)}" for label, shape in leaves[:6])
        more = f" and {len(leaves) - 6} more" if len(leaves) > 6 else ""
        message = (
            f"the loss at step {step} depends on {len(leaves)} tensor(s) that require grad but are not "
            f"parameters of the watched model ({shapes}{more}); no optimizer built from the model holds "
            f"them, so they are never updated. Usual cause: layers kept in a plain Python list or dict "
            f"instead of nn.ModuleList/nn.ModuleDict. Fix: register them as submodules or nn.Parameter."
        )
        return [Finding("not_updated", step, (), message)]


def _freeze_attrs(obj: object, exact: bool) -> list[tuple[str, object]]:
    """Falsy, non-callable instance attributes that look like ``requires_grad`` (a freeze attempt).

    ``exact`` also accepts the exact name (on a module, where ``requires_grad`` is not a real switch).
    Near misses are judged by ``difflib`` similarity >= 0.8 (``requries_grad``, ``require_grad``,
    ``requires_grads``, ``requiresgrad`` ...).
    """
    found: list[tuple[str, object]] = []
    for key, value in vars(obj).items() if hasattr(obj, "__dict__") else ():
        if callable(value) or not isinstance(value, (bool, int)) or value:
            continue
        if key == "requires_grad":
            if exact:
                found.append((key, value))
        elif difflib.SequenceMatcher(None, key.lower().strip("_"), "requires_grad").ratio() >= 0.8:
            found.append((key, value))
    return found


class IneffectiveFreezeDetector(Detector):
    """A freeze that freezes nothing.

    * ``module.requires_grad = False`` only sets a Python attribute on the module (the method is
      ``module.requires_grad_(False)``): its parameters keep ``requires_grad=True`` and keep training.
    * A misspelt attribute on a parameter (``p.require_grad = False``, ``p.requires_grads = False``).

    Checked at attach and again every ``recheck_every`` recorded steps (default 100), so a freeze written
    later in training is caught too.

    Args:
        view: the watched module (nothing to check for loose tensors) and parameter names.
        recheck_every: recorded steps between scans of the module tree.
    """

    kinds = ("ineffective_freeze",)

    def __init__(self, view: WatchView, recheck_every: int = 100) -> None:
        self.module = view.module
        self.names = set(view.names)
        self.recheck_every = recheck_every
        self.seen = 0
        self.reported: set[str] = set()

    def check(self, step: int) -> list[Finding]:
        """Scan the module tree once."""
        model = self.module()
        if model is None:
            return []
        findings = []
        for mod_name, mod in model.named_modules():
            attrs = _freeze_attrs(mod, exact=True)
            if attrs:
                attr, flag = attrs[0]
                prefix = f"{mod_name}." if mod_name else ""
                hit = [
                    prefix + n
                    for n, p in mod.named_parameters()
                    if p.requires_grad and prefix + n in self.names and prefix + n not in self.reported
                ]
                if hit:
                    self.reported.update(hit)
                    where = f"model.{mod_name}" if mod_name else "model"
                    message = (
                        f"{where}.{attr} = {flag!r} only set a Python attribute on the "
                        f"{type(mod).__name__} module"
                        + (
                            " and hid its requires_grad_() method"
                            if attr == "requires_grad_"
                            else ": nn.Module has no such switch"
                        )
                        + f", so {_short(hit)} still "
                        f"require grad and keep training. Fix: "
                        + (
                            f"delete that assignment (del {where}.{attr}), then "
                            if attr != "requires_grad"
                            else ""
                        )
                        + f"{where}.requires_grad_(False) (a method call, with the trailing underscore), "
                        f"or set p.requires_grad = False on each parameter."
                    )
                    findings.append(Finding("ineffective_freeze", step, tuple(hit), message))
        for name, p in model.named_parameters():
            if name not in self.names or name in self.reported or not p.requires_grad:
                continue
            wrong = _freeze_attrs(p, exact=False)
            if wrong:
                self.reported.add(name)
                message = (
                    f"{name}.{wrong[0][0]} = {wrong[0][1]!r} sets a misspelt attribute, so {name} still "
                    f"requires grad and keeps training. Fix: "
                    + (
                        "delete that assignment (it hides the method), then "
                        if wrong[0][0] == "requires_grad_"
                        else ""
                    )
                    + f"{name}.requires_grad = False (or {name}.requires_grad_(False))."
                )
                findings.append(Finding("ineffective_freeze", step, (name,), message))
        return findings

    def on_attach(self, step: int) -> list[Finding]:  # noqa: D102
        return self.check(step)

    def frozen_moved(self, optimizer: str, names: Sequence[str], step: int) -> list[Finding]:
        """Frozen parameters (``requires_grad=False``) that ``optimizer``'s step changed anyway.

        They are still in its ``param_groups`` with a ``.grad`` tensor (zeros left from before the
        freeze, or from ``zero_grad(set_to_none=False)``), and every PyTorch optimizer steps a parameter
        whose ``.grad`` is not ``None``: momentum and weight decay keep moving it.
        """
        new = [n for n in names if n not in self.reported]
        if not new:
            return []
        self.reported.update(new)
        message = (
            f"{_short(new)} are frozen (requires_grad=False), yet optimizer {optimizer} changed them at step "
            f"{step}: it still holds them with a .grad tensor (zeros left from before the freeze), so "
            f"momentum and weight decay keep moving them. Fix: set p.grad = None for each frozen parameter "
            f"(zero_grad(set_to_none=True), the default, does it), or build the optimizer from "
            f"[p for p in model.parameters() if p.requires_grad]."
        )
        return [Finding("ineffective_freeze", step, tuple(new), message)]

    def on_record(self, record: StepRecord) -> list[Finding]:  # noqa: D102
        self.seen += 1
        if self.seen % self.recheck_every:
            return []
        return self.check(record.step)
