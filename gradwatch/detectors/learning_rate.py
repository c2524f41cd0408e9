"""``lr_too_high``: updates larger than the weights they update, step after step.

Rule of thumb (Karpathy, CS231n "Neural Networks Part 3: Learning and Evaluation", ratio of
weights:updates): the update of a weight matrix should be about 1e-3 of its size (``||theta_after -
theta_before|| / ||theta_before||``, the update-to-weight ratio gradwatch records). gradwatch reports a
ratio 1000 times that: when the *median* update-to-weight ratio over the weight matrices (parameters of
two or more dimensions, with nonzero norm) exceeds :data:`RATIO` (1: each update moves the weights by
more than their own size) at :data:`STEPS` (2) consecutive recorded steps while the total gradient norm
grows from each to the next (diverging; an oscillation at the edge of stability does not grow).
Parameters of an optimizer stepped with a closure (LBFGS: many inner iterations and a line search per
step, large moves by design) are left out. A healthy run stays two to three orders of magnitude below
it; SGD at lr=10 on a small MLP sits near 5 from the first step and diverges a few steps later. The
median (not the mean or the maximum) keeps layers that start at or near zero (zero-initialised LoRA or
residual projections, whose first updates are as large as they are) from deciding alone; biases and norm
gains (one dimension) are left out for the same reason.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from gradwatch.detectors.base import Detector
from gradwatch.findings import Finding, short_list

if TYPE_CHECKING:  # pragma: no cover
    from gradwatch.detectors.base import WatchView
    from gradwatch.records import StepRecord

__all__ = ["RATIO", "STEPS", "LearningRateDetector"]

#: Median update-to-weight ratio above which the learning rate is reported (1000x the 1e-3 rule of thumb).
RATIO = 1.0
#: Consecutive recorded steps it must hold.
STEPS = 2


class LearningRateDetector(Detector):
    """The learning rate is far too high: updates as large as the weights, two recorded steps in a row.

    Reported once, at the first of those steps, naming the weight matrices whose ratio exceeds
    :data:`RATIO`, with their optimizer's learning rate.

    Args:
        view: parameter names, shapes and learning rates.
    """

    kinds = ("lr_too_high",)

    def __init__(self, view: WatchView) -> None:
        self.view = view
        self.names = view.names
        self.weights = [i for i in range(len(view.names)) if len(view.shape(i)) >= 2]
        self.run: list[tuple[int, float, list[int]]] = []  # (step, median, positions above) in a row
        self.totals: list[float] = []  # the total gradient norm at each step of the run
        self.reported = False

    def on_record(self, record: StepRecord) -> list[Finding]:  # noqa: D102
        if self.reported or not self.weights:
            return []
        params = record.params
        closure = self.view.closure_stepped()
        names = self.names
        ratios = []
        high = 0
        for i in self.weights:
            s = params[names[i]]
            r = s.update_ratio
            if r is None or i in closure or not s.has_grad or not s.param_norm > 0 or not math.isfinite(r):
                continue
            ratios.append((r, i))
            high += r > RATIO
        if not ratios or 2 * high < len(ratios):  # most at or below: so is the median (no sort)
            self.run, self.totals = [], []
            return []
        ordered = sorted(r for r, _ in ratios)
        mid = len(ordered) // 2
        median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
        if not median > RATIO:
            self.run, self.totals = [], []
            return []
        total = record.total_grad_norm
        if self.run and not total > self.totals[-1]:  # not diverging: the gradients did not grow
            self.run, self.totals = [], []
        self.run.append((record.step, median, [i for r, i in ratios if r > RATIO]))
        self.totals.append(total)
        if len(self.run) < STEPS:
            return []
        self.reported = True
        first, _, above = self.run[0]
        lrs = self.view.learning_rates()
        rates = sorted({lrs[i] for i in above if i in lrs})
        lr_text = ", ".join(f"{lr:g}" for lr in rates) if rates else "not readable"
        suggestion = f" (e.g. lr={rates[-1] / 1000:g})" if rates and rates[-1] > 0 else ""
        medians = ", ".join(f"{m:.3g}" for _, m, _ in self.run)
        steps = ", ".join(str(s) for s, _, _ in self.run)
        shown = short_list([self.names[i] for i in above])
        message = (
            f"the learning rate ({lr_text}) is far too high: from step {first}, each update moves the "
            f"weights by more than their own size (median update-to-weight ratio over the weight matrices "
            f"{medians} at steps {steps}; about 1e-3 is healthy, Karpathy's CS231n rule of thumb), in "
            f"{shown}, while the gradient norm grows. Training diverges from here: the loss grows and the "
            f"gradients overflow a few steps later. Fix: lower the learning rate 100-1000x{suggestion}, or "
            f"add a warm-up."
        )
        return [Finding("lr_too_high", first, tuple(self.names[i] for i in above), message)]
