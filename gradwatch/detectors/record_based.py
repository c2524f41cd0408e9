"""Detectors that read each sealed :class:`~gradwatch.StepRecord`.

They run on the host, after the record's one device-to-host copy has arrived (on CUDA one step late, so
the training thread never waits for it). Every threshold is a :class:`~gradwatch.config.Config` setting;
its default and source are given in the class docstring and in ``docs/detectors.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gradwatch.detectors.base import Detector
from gradwatch.findings import Finding
from gradwatch.findings import short_list as _short
from gradwatch.forward_origin import ForwardOrigin
from gradwatch.records import StepRecord

__all__ = [
    "AllZeroGradDetector",
    "ExplodingGradDetector",
    "NonfiniteGradDetector",
    "VanishingGradDetector",
]


class NonfiniteGradDetector(Detector):
    """NaN or +-Inf in a gradient, named at its origin; or a weight that became non-finite.

    Born in the *backward* pass, the origin is the layer of the parameter nearest the loss, in the order
    the backward pass reached the parameters (recorded by the post-accumulate hooks), whose gradient
    holds NaN/Inf: if layers nearer the loss have finite gradients the value was born in the origin
    layer's backward, and parameters further from the loss only received it by propagation.

    Born in the *forward* pass, the loss itself is non-finite and every gradient receives the value at
    once, so the gradients cannot place it. Where the loss can be read for free (on the CPU) the
    recorder walks its autograd graph before ``backward()`` runs (:mod:`gradwatch.forward_origin`,
    ``StepRecord.forward_origin``): the origin is then the layer of the parameters nearest the op that
    produced the value, or the layer the data entered when the batch held it.

    Reported at the first step where it happens, naming the origin's parameters (those it propagated
    into are listed in the message). A later step is reported only if none of the parameters named
    before is still non-finite (else the new ones got it from there, e.g. through weights the first
    one's update made NaN). Cost: none beyond the step's statistics (the NaN/Inf counts are part of
    them) and, for a non-finite loss only, one walk of its graph; no anomaly mode.
    """

    kinds = ("nonfinite_grad",)

    def __init__(self) -> None:
        self.reported: set[str] = set()
        self.weights_reported: set[str] = set()

    def on_record(self, record: StepRecord) -> list[Finding]:  # noqa: D102
        params = record.params
        bad = [n for n, s in params.items() if s.nan_count or s.inf_count or not math.isfinite(s.grad_norm)]
        findings = []
        if bad:
            order = record.backward_order
            ranked = sorted(bad, key=lambda n: order.get(n, math.inf))
            found = record.forward_origin
            names = list(params)
            if found is not None and found.cause != "weights" and found.positions:
                layers = {record.layer_of(names[i]) for i in found.positions}
                origin_layer = ", ".join(sorted(layer or "<root>" for layer in layers))
                origin = [n for n in params if record.layer_of(n) in layers]
            else:
                found = None
                origin_layer = record.layer_of(ranked[0]) or "<root>"
                origin = [n for n in params if n in bad and record.layer_of(n) == record.layer_of(ranked[0])]
            nearer = [n for n in params if order.get(n, math.inf) < order.get(ranked[0], math.inf)]
            nearer_finite = [n for n in nearer if n not in bad]
            new = [n for n in ranked if n not in self.reported]
            # still non-finite where it was reported before (weights made NaN by that step's update): the
            # new names only received it from there, not a new origin
            if new and not any(n in self.reported for n in bad):
                self.reported.update(new)
                self.reported.update(origin)
                propagated = [n for n in params if n in bad and n not in origin]
                born, fix = _born(found, origin_layer, nearer_finite)
                loss = record.loss
                loss_text = (
                    "the loss was not recorded (w.record_loss(loss) tells whether it was finite)"
                    if loss is None
                    else (
                        "the loss itself was finite" if math.isfinite(loss) else f"the loss itself was {loss}"
                    )
                )
                if found is not None and loss is None:
                    loss_text = f"the loss itself was {found.value if found.loss is None else found.loss}"
                counts = ", ".join(
                    f"{n}: {params[n].nan_count} NaN, {params[n].inf_count} Inf"
                    if params[n].nan_count or params[n].inf_count
                    else (
                        f"{n}: finite entries up to {params[n].grad_max_abs:.3g} whose norm overflows"
                        if n in bad
                        else f"{n}: finite"
                    )
                    for n in origin[:4]
                )
                message = (
                    f"non-finite gradient at step {record.step} in {_short(origin)} ({counts}); {born}; "
                    f"{loss_text}."
                    + (f" Propagated from there into {_short(propagated)}." if propagated else "")
                    + " Fix: "
                    + fix
                )
                names_out = tuple(origin)  # (the parameters it propagated into are in the message)
                findings.append(Finding("nonfinite_grad", record.step, names_out, message))
        else:
            # finite gradients, but the update made a weight non-finite
            broken = [
                n
                for n, s in params.items()
                if s.update_ratio is not None
                and not math.isfinite(s.update_ratio)
                and s.param_norm > 0
                and n not in self.weights_reported
            ]
            if broken:
                self.weights_reported.update(broken)
                message = (
                    f"at step {record.step} the gradients of {_short(broken)} were finite, but the "
                    f"parameters "
                    f"became non-finite in the update: the optimizer produced NaN/Inf (learning rate too "
                    f"high, eps too small, or NaN/Inf in the optimizer state). Fix: lower the learning rate, "
                    f"clip gradients, check the optimizer's eps and state."
                )
                findings.append(Finding("nonfinite_grad", record.step, tuple(broken), message))
        return findings


class _Persistent(Detector):
    """Base: a per-parameter condition that must hold for ``steps`` consecutive recorded steps."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.run: dict[str, int] = {}
        self.reported: set[str] = set()

    def _update(self, hits: set[str], universe: Sequence[str]) -> list[str]:
        if not hits and not any(self.run.values()):
            return []  # (the common case: nothing holds and nothing was running)
        ready = []
        for n in universe:
            if n in hits:
                self.run[n] = self.run.get(n, 0) + 1
                if self.run[n] >= self.steps and n not in self.reported:
                    ready.append(n)
            else:
                self.run[n] = 0
        self.reported.update(ready)
        return ready


class AllZeroGradDetector(_Persistent):
    """Every entry of a parameter's gradient is exactly 0 for ``all_zero_steps`` recorded steps in a row.

    The parameter does receive a gradient (``has_grad``), so it is connected to the loss, but nothing
    flows: dead ReLUs feeding it, saturated units, a branch multiplied by 0. Those silence a whole layer,
    so a parameter is reported only when every parameter of its layer is all-zero: a bias whose gradient
    cancels exactly by construction (the last bias of a WGAN critic, whose loss is a difference of
    means) is not a bug while the layer's weight still learns. AutoTrainer (Zhang et al., ICSE 2021) flags
    dying ReLU from the fraction of zero gradient entries; this is its extreme, exact form (fraction 1).
    Default window 5 recorded steps.
    """

    kinds = ("all_zero_grad",)

    def on_record(self, record: StepRecord) -> list[Finding]:  # noqa: D102
        zero = {
            n
            for n, s in record.params.items()
            if s.grad_norm == 0 and s.zero_fraction == 1.0 and s.has_grad and not s.grad_is_none
        }
        if not zero and not any(self.run.values()):
            return []
        live_layers = {record.layer_of(n) for n in record.params if n not in zero}
        hits = {n for n in zero if record.layer_of(n) not in live_layers}
        ready = self._update(hits, list(record.params))
        if not ready:
            return []
        message = (
            f"the gradients of {_short(ready)} have been exactly 0 in every entry for {self.steps} steps "
            f"(up to step {record.step}) although they are connected to the loss: nothing flows back. Usual "
            f"causes: ReLUs that output 0 for every input (dead ReLU, e.g. a ReLU on the final output), "
            f"saturated sigmoid/tanh units, a branch multiplied by 0. Fix: LeakyReLU/Softplus/GELU instead "
            f"of a final or dying ReLU, a lower learning rate, better initialisation or normalisation."
        )
        return [Finding("all_zero_grad", record.step, tuple(ready), message)]


def _update_band(record: StepRecord) -> str:
    """Evidence from the update-to-weight ratios against TheDeepChecker's healthy band 1e-4..1e-1."""
    ratios = sorted(
        s.update_ratio for s in record.params.values() if s.update_ratio is not None and s.update_ratio > 0
    )
    if not ratios:
        return ""
    outside = sum(1 for r in ratios if not 1e-4 <= r <= 1e-1)
    median = ratios[len(ratios) // 2]
    return (
        f" Update-to-weight ratios this step: median {median:.2g}, {outside} of {len(ratios)} parameters "
        f"outside the healthy band 1e-4..1e-1 (TheDeepChecker)."
    )


def _born(found: ForwardOrigin | None, layer: str, nearer_finite: list[str]) -> tuple[str, str]:
    """Where a non-finite gradient was born (the message's middle) and how to fix it."""
    generic = (
        "look for log/sqrt/division/pow of values that can be 0 or negative in the origin layer's forward "
        "(add an epsilon: torch.sqrt(x + 1e-8), x.clamp_min(eps)), overflow in fp16 (use bf16 or "
        "torch.amp.GradScaler), or a too-high learning rate."
    )
    if found is None and nearer_finite:
        return (
            f"born in layer {layer}'s backward: the layers nearer the loss ({_short(nearer_finite, 3)}) have "
            f"finite gradients"
        ), generic
    if found is None:
        return (
            f"already present in the first layer the backward pass reached ({layer}): born there, in the "
            f"loss, or in the forward pass (a softmax over a row masked entirely with -inf, exp of an "
            f"unbounded log-variance, cosine_similarity of a zero vector). gradwatch names the forward op "
            f"when it can read the loss handed to backward() (on the CPU by default; on an accelerator "
            f"with read_loss=True, which waits for the device at every backward() call) and the op kept "
            f"what it computed"
        ), generic
    walked = "found by walking the loss's autograd graph before backward()"
    if found.cause == "data":
        return (
            f"born before the model: the data fed to layer {layer} already held {found.value} ({walked}, "
            f"at {found.op}), so the loss and every gradient received it"
        ), (
            "check the batch (torch.isfinite(x).all()) and the data pipeline: a division by a zero std in "
            "normalisation, log of 0, a corrupt sample."
        )
    if found.cause == "constant":
        return (
            f"born in the forward pass: a constant that is {found.value} (a Python number or 0-dim tensor) "
            f"enters the computation at {found.op}, right after layer {layer} ({walked}), so the loss and "
            f"every gradient received it"
        ), "check the constants and scale factors of the loss and the forward pass."
    op = found.op.removesuffix("Backward0").removesuffix("Backward1")
    return (
        f"born in the forward pass: the {found.value} first appears at {op} ({found.op}), right after "
        f"layer {layer} ({walked}), so the loss and every gradient received it"
    ), (
        "guard that op: a softmax over a row masked entirely with -inf gives NaN (keep at least one "
        "unmasked key per query, or zero fully masked rows after it); exp of an unbounded value overflows "
        "(clamp it first, e.g. log_var.clamp(-20, 20)); add an epsilon to log/sqrt/division "
        "(torch.sqrt(x + 1e-8), x.clamp_min(eps))."
    )


def _layer_norms_in_backward_order(record: StepRecord) -> list[tuple[str, float]]:
    """(layer, gradient norm), nearest the loss first, for layers that got a gradient this step.

    Computed once per record (both the vanishing and the exploding detector read it).
    """
    if record._derived.get("layer_order") is None:
        record._derived["layer_order"] = _layer_order(record)
    return record._derived["layer_order"]


def _layer_order(record: StepRecord) -> list[tuple[str, float]]:
    # one loop over the parameters (this runs at every recorded step): each layer's first rank in the
    # backward order, among its parameters that got a gradient
    first: dict[str, int] = {}
    for layer, k, s in zip(record._layer_of, record._order, record.params.values()):
        if k >= 0 and s.has_grad:
            held = first.get(layer)
            if held is None or k < held:
                first[layer] = k
    layers = record.layers
    return [(layer, layers[layer]) for layer in sorted(first, key=first.__getitem__)]


class VanishingGradDetector(_Persistent):
    """Gradient norms collapse towards the input layers.

    Rule (AutoTrainer, Zhang et al., ICSE 2021, "vanishing gradient"): the ratio of the first layer's
    gradient norm (the layer the backward pass reaches last) to the last layer's (nearest the loss) is
    below ``vanishing_ratio`` (1e-3) *and* the first layer's gradient norm is below ``vanishing_norm``
    (1e-4), for ``persistence`` (5) consecutive recorded steps. Names the parameters of every layer
    whose norm ratio to the last layer is below ``vanishing_ratio`` at that step. Only for module
    targets (``by_layer``): loose tensors have no layer order to compare.
    """

    kinds = ("vanishing_grad",)

    def __init__(self, steps: int, ratio: float, norm: float, by_layer: bool = True) -> None:
        super().__init__(steps)
        self.ratio, self.norm, self.by_layer = ratio, norm, by_layer

    def on_record(self, record: StepRecord) -> list[Finding]:  # noqa: D102
        layers = _layer_norms_in_backward_order(record) if self.by_layer else []
        hit = False
        if len(layers) >= 2:
            (last, last_norm), (first, first_norm) = layers[0], layers[-1]
            # exactly 0 is all_zero_grad's case (dead units), not a vanishing one
            hit = last_norm > 0 and 0 < first_norm < self.norm and first_norm / last_norm < self.ratio
        ready = self._update({"*"} if hit else set(), ["*"])
        if not ready:
            return []
        last, last_norm = layers[0]
        weak = [(layer, v) for layer, v in layers if v / last_norm < self.ratio]
        names = tuple(n for n in record.params if record.layer_of(n) in {layer for layer, _ in weak})
        first, first_norm = layers[-1]
        message = (
            f"vanishing gradients for {self.steps} steps (up to step {record.step}): the first layer "
            f"{first or '<root>'} gets gradient norm {first_norm:.3g}, {first_norm / last_norm:.2g} "
            f"times the last layer {last or '<root>'}'s {last_norm:.3g} (rule: ratio < {self.ratio:g} and "
            f"first-layer norm < "
            f"{self.norm:g}, AutoTrainer ICSE 2021); {len(weak)} layer(s) below the ratio."
            f"{_update_band(record)} Fix: ReLU-family "
            f"activations instead of sigmoid/tanh in deep stacks, residual connections, normalisation "
            f"layers, He/Xavier initialisation, fewer layers."
        )
        return [Finding("vanishing_grad", record.step, names, message)]


class ExplodingGradDetector(_Persistent):
    """Gradient norms blow up towards the input layers (or over time).

    Rule (AutoTrainer, Zhang et al., ICSE 2021, "exploding gradient"): the first layer's gradient norm
    (reached last by backward) is more than ``exploding_ratio`` (70) times the last layer's, for
    ``persistence`` (5) consecutive recorded steps; or, following TheDeepChecker (Ben Braiek & Khomh,
    2022), the total gradient norm grows at every one of ``persistence`` consecutive recorded steps and
    ends more than ``exploding_ratio`` times above where the growth started *and* above every level
    recorded before it (so a norm climbing back from a dip, as momentum carries the weights through a
    minimum, is not an explosion). Names the parameters of
    every layer whose norm is more than ``exploding_ratio`` times the last layer's. The layer-ratio rule
    needs a module target (``by_layer``); the growth rule applies to any target.
    """

    kinds = ("exploding_grad",)

    def __init__(self, steps: int, ratio: float, by_layer: bool = True) -> None:
        super().__init__(steps)
        self.ratio, self.by_layer = ratio, by_layer
        self.totals: list[float] = []
        self.peak_before = 0.0  # largest total norm recorded before the current growth window

    def on_record(self, record: StepRecord) -> list[Finding]:  # noqa: D102
        layers = _layer_norms_in_backward_order(record) if self.by_layer else []
        ratio_hit = False
        if len(layers) >= 2:
            last_norm, first_norm = layers[0][1], layers[-1][1]
            ratio_hit = last_norm > 0 and math.isfinite(first_norm) and first_norm / last_norm > self.ratio
        # before clipping, when the loop clips: a clipped total is pinned at the threshold and can never grow
        unclipped = record.unclipped_total_grad_norm
        total = record.total_grad_norm if unclipped is None else unclipped
        self.totals = ([*self.totals, total])[-(self.steps + 1) :]
        growth_hit = (
            len(self.totals) == self.steps + 1
            and all(math.isfinite(t) and t > 0 for t in self.totals)
            and all(b > a for a, b in zip(self.totals, self.totals[1:]))
            and self.totals[-1] > self.ratio * self.totals[0]
            # climbing back from a dip (momentum passing through a minimum) is not an explosion:
            # the norm must also leave behind every level seen before the run of growth
            and self.totals[-1] > self.ratio * self.peak_before
        )
        if len(self.totals) == self.steps + 1 and math.isfinite(self.totals[0]):
            self.peak_before = max(self.peak_before, self.totals[0])
        # the growth rule already spans `steps` steps; the ratio rule must persist for `steps` steps
        ready = self._update({"*"} if ratio_hit else set(), ["*"])
        if growth_hit and "*" not in self.reported:
            self.reported.add("*")
            ready = ["*"]
        if not ready:
            return []
        if ratio_hit:
            last, last_norm = layers[0]
            big = {layer for layer, v in layers if v > self.ratio * last_norm}
            names = tuple(n for n in record.params if record.layer_of(n) in big)
            first, first_norm = layers[-1]
            evidence = (
                f"(gradients as the optimizer sees them, after any clipping) "
                f"layer {first or '<root>'} gets gradient norm {first_norm:.3g}, "
                f"{first_norm / last_norm:.3g} "
                f"times the last layer {last or '<root>'}'s {last_norm:.3g} (rule: ratio > {self.ratio:g}, "
                f"AutoTrainer ICSE 2021)"
            )
        else:
            names = tuple(record.params)
            evidence = (
                f"the total gradient norm grew at each of the last {self.steps} steps, from "
                f"{self.totals[0]:.3g} to {self.totals[-1]:.3g} (TheDeepChecker's sustained-growth rule)"
            )
        message = (
            f"exploding gradients for {self.steps} steps (up to step {record.step}): {evidence}."
            f"{_update_band(record)} Fix: clip "
            f"the gradient norm (torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)) before "
            f"optimizer.step(), lower the learning rate, use gated recurrent units (LSTM/GRU) or shorter "
            f"sequences (truncated BPTT), normalisation layers."
        )
        return [Finding("exploding_grad", record.step, names, message)]
