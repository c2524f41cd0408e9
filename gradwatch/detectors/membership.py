"""Which parameters an optimizer holds and steps: an optimizer that never steps, parameters added later.

``not_updated`` for an optimizer that never steps, and ``new_param`` for parameters that appear in the
model after the watcher attached.

Both read host-side structure only (hook events, ``named_parameters()``, ``param_groups``); neither
reads a tensor value.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from gradwatch.detectors.base import Detector
from gradwatch.findings import Finding
from gradwatch.findings import short_list as _short

if TYPE_CHECKING:  # pragma: no cover
    from gradwatch.detectors.base import WatchView

__all__ = ["NeverSteppedDetector", "NewParamDetector"]

#: Backward passes into an optimizer's parameters, with no ``step()`` of it since the watcher attached,
#: after which it is reported without waiting for ``close()``. Far above the gradient-accumulation
#: windows in common use (DeepSpeed's and Hugging Face's examples use 1-64 micro-batches per step), so a
#: deliberate accumulation is not mistaken for an optimizer that is never stepped.
NEVER_STEPPED_PASSES = 256


class NeverSteppedDetector(Detector):
    """A watched optimizer whose parameters get gradients, and which never steps.

    ``scheduler.step()`` written where ``optimizer.step()`` was meant, a ``step()`` under a condition that
    never holds, a step at the wrong indentation: the parameters get gradients every iteration and never
    move. Reported as ``not_updated`` once per optimizer: after :data:`NEVER_STEPPED_PASSES` backward
    passes into its parameters without any ``step()`` of it since the watcher attached, or at ``close()``
    after two or more such passes (one backward pass without a step is a gradient probe, not a loop).

    Args:
        view: parameter names and which optimizer holds which parameter.
    """

    kinds = ("not_updated",)

    def __init__(self, view: WatchView) -> None:
        self.view = view
        self.names = view.names
        self.passes: dict[str, int] = {}  # optimizer -> backward passes into its parameters
        self.touched: dict[str, set[int]] = {}
        self.stepped: set[str] = set()
        self.reported: set[str] = set()
        self.done = False

    def on_optimizer_post(self, name: str, owned: Sequence[int], step: int) -> list[Finding]:  # noqa: D102
        if not self.done:
            self.stepped.add(name)
            self.touched.pop(name, None)
        return []

    def on_backward_end(self, touched: Collection[int], step: int) -> list[Finding]:  # noqa: D102
        if self.done:
            return []
        if len(self.stepped | self.reported) >= len(self.view.optimizer_names()):
            self.done = True  # every optimizer has stepped (or was reported): nothing left to count
            return []
        hit = set(touched)
        findings = []
        for name, owned in self.view.optimizer_positions().items():
            if name in self.stepped or name in self.reported:
                continue
            got = hit.intersection(owned)
            if not got:
                continue
            self.passes[name] = self.passes.get(name, 0) + 1
            self.touched.setdefault(name, set()).update(got)
            if self.passes[name] >= NEVER_STEPPED_PASSES:
                findings += self._report(name, step)
        return findings

    def on_close(self, step: int) -> list[Finding]:  # noqa: D102
        findings = []
        for name, count in self.passes.items():
            if count >= 2 and name not in self.stepped and name not in self.reported:
                findings += self._report(name, step)
        return findings

    def _report(self, name: str, step: int) -> list[Finding]:
        self.reported.add(name)
        idx = sorted(self.touched.get(name, ()))
        names = [self.names[i] for i in idx]
        message = (
            f"optimizer {name} never stepped: {self.passes[name]} backward passes put gradients into "
            f"{_short(names)} and {name}.step() was not called once since gradwatch attached, so they "
            f"never move. Typical causes: scheduler.step() written where optimizer.step() was meant (an LR "
            f"scheduler does not update weights), optimizer.step() under a condition that never holds, or "
            f"at the wrong indentation. Fix: call optimizer.step() after backward() (then "
            f"scheduler.step())."
        )
        return [Finding("not_updated", step, tuple(names), message)]


class NewParamDetector(Detector):
    """Parameters that appear in the watched module after the watcher attached.

    A layer built inside ``forward()`` is a new, untrained module at every call and is in no optimizer;
    a head added to the model after the optimizer was built is in no optimizer either, unless it was
    added with ``add_param_group``. Either way gradwatch does not watch it. Read from
    ``named_parameters()`` at the end of the backward passes :meth:`due` says (the first three and every
    ``recheck_every``-th after that, 10 by default: the suite asks) and at close; reported as
    ``new_param`` once per name, saying whether a watched optimizer holds it.

    Args:
        view: the watched module, parameter names, and the optimizers' parameters.
        recheck_every: backward passes between scans after the first three (one walk of
            ``named_parameters()``, host only).
    """

    kinds = ("new_param",)

    def __init__(self, view: WatchView, recheck_every: int = 10) -> None:
        self.view = view
        self.known = set(view.names)
        self.recheck_every = recheck_every
        self.reported: set[str] = set()

    def due(self, passes: int) -> bool:
        """Whether to scan at the end of backward pass number ``passes`` (1-based)."""
        return passes <= 3 or passes % self.recheck_every == 0

    def on_close(self, step: int) -> list[Finding]:  # noqa: D102
        return self.on_backward_end((), step)

    def on_backward_end(self, touched: Collection[int], step: int) -> list[Finding]:  # noqa: D102
        model = self.view.module()
        if model is None:
            return []
        orphans: list[str] = []
        held: dict[str, list[str]] = {}
        for name, p in model.named_parameters():
            if name in self.known or name in self.reported or not p.requires_grad or p.is_meta:
                continue  # (a meta-device parameter has no data: never watched)
            self.reported.add(name)
            holder = self.view.optimizer_holding(p)
            if holder is None:
                orphans.append(name)
            else:
                held.setdefault(holder, []).append(name)
        findings = []
        if orphans:
            message = (
                f"{_short(orphans)} appeared in the model after gradwatch attached (by step {step}) and no "
                f"watched optimizer holds them, so they never train. A layer created inside forward() is "
                f"also a new, untrained layer at every call. Fix: create every layer in __init__ (or call "
                f"the model once before building the optimizer), build the optimizer from the complete "
                f"model (or optimizer.add_param_group for a head added later), then watch it."
            )
            findings.append(Finding("new_param", step, tuple(orphans), message))
        for holder, names in held.items():
            message = (
                f"{_short(names)} appeared in the model after gradwatch attached (by step {step}); optimizer "
                f"{holder} holds and trains them, but gradwatch does not watch them. Fix: watch the model "
                f"once it is complete (w.close(), then gradwatch.watch(model, optimizer) again)."
            )
            findings.append(Finding("new_param", step, tuple(names), message))
        return findings
