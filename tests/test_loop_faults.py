"""The fault kinds of issue 16 beyond the case files: thresholds, variants, and what gradwatch restores.

Each test builds its loop by hand and checks the finding's kind, step and parameter names, or that a
healthy variant is silent.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

import gradwatch as gw
from gradwatch.detectors.membership import NEVER_STEPPED_PASSES


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))


def _loss(model: nn.Module, k: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(k)
    x = torch.randn(8, 6, generator=g)
    return nn.functional.mse_loss(model(x), x.sum(1, keepdim=True))


ALL = ("0.weight", "0.bias", "2.weight", "2.bias")


def test_an_optimizer_that_never_steps_is_reported_mid_run_after_the_threshold() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = gw.watch(model, opt, on_finding="ignore")
    for k in range(NEVER_STEPPED_PASSES - 1):
        _loss(model, k).backward()  # accumulates, never steps
    assert w.findings == []  # (a long accumulation window is not reported)
    _loss(model).backward()
    assert [(f.kind, f.step, f.params) for f in w.findings] == [("not_updated", 0, ALL)]
    assert "never stepped" in w.findings[0].message and "scheduler.step()" in w.findings[0].message
    w.close()
    assert len(w.findings) == 1  # not again at close


def test_one_backward_pass_without_a_step_is_a_probe_not_a_bug() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt, on_finding="ignore") as w:
        _loss(model).backward()  # e.g. a gradient check before training starts
    assert w.findings == []


def test_a_never_stepped_optimizer_among_two_is_named_alone() -> None:
    torch.manual_seed(1)
    a, b = nn.Linear(4, 4), nn.Linear(4, 1)
    model = nn.ModuleDict({"a": a, "b": b})
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    sched_b = torch.optim.lr_scheduler.StepLR(opt_b, 2)
    with gw.watch(model, [opt_a, opt_b], on_finding="ignore") as w:
        for _ in range(4):
            opt_a.zero_grad()
            opt_b.zero_grad()
            b(a(torch.randn(3, 4))).pow(2).mean().backward()
            opt_a.step()
            sched_b.step()  # opt_b.step() forgotten
    assert [(f.kind, f.params) for f in w.findings] == [("not_updated", ("b.weight", "b.bias"))]
    assert "SGD#1 never stepped" in w.findings[0].message


def test_a_decay_factor_of_zero_is_not_updated_with_its_learning_rate() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.0)
    with gw.watch(model, opt, on_finding="ignore") as w:
        for k in range(10):
            opt.zero_grad()
            _loss(model, k).backward()
            opt.step()
            sched.step()
    assert [(f.kind, f.step, f.params) for f in w.findings] == [("not_updated", 6, ALL)]


def test_frozen_parameters_frozen_before_watch_are_named_when_the_optimizer_moves_them() -> None:
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    _loss(model).backward()
    opt.step()
    model[0].requires_grad_(False)  # frozen before the watcher exists: not watched, still held, .grad zeros
    before = model[0].weight.detach().clone()
    with gw.watch(model, opt, on_finding="ignore") as w:
        for k in range(3):
            opt.zero_grad(set_to_none=False)
            _loss(model, k).backward()
            opt.step()
    assert not torch.equal(before, model[0].weight)  # (the bug is real: weight decay moved it)
    assert [(f.kind, f.step, f.params) for f in w.findings] == [
        ("ineffective_freeze", 0, ("0.weight", "0.bias"))
    ]


def test_a_frozen_parameter_plain_sgd_leaves_unchanged_is_not_reported() -> None:
    # plain SGD adds -lr * 0 in place: the version counter moves, the values do not
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt, on_finding="ignore") as w:
        for k in range(4):
            if k == 1:
                model[0].requires_grad_(False)
            opt.zero_grad(set_to_none=False)
            _loss(model, k).backward()
            opt.step()
    assert w.findings == []


def test_clip_on_an_empty_generator_by_keyword_and_the_functions_are_restored() -> None:
    original = torch.nn.utils.clip_grad_norm_, torch.nn.utils.clip_grad.clip_grad_value_
    model = _mlp()
    params = model.parameters()
    opt = torch.optim.SGD(params, lr=0.1)
    with gw.watch(model, opt, on_finding="ignore") as w:
        for k in range(2):
            opt.zero_grad()
            _loss(model, k).backward()
            total = torch.nn.utils.clip_grad_norm_(parameters=params, max_norm=1.0)
            opt.step()
    assert float(total) == 0.0  # the original ran, on the (empty) list
    assert [(f.kind, f.step, f.params) for f in w.findings] == [("ineffective_clip", 0, ALL)]
    assert (torch.nn.utils.clip_grad_norm_, torch.nn.utils.clip_grad.clip_grad_value_) == original


def test_clip_given_a_generator_still_clips_every_parameter() -> None:
    model = _mlp()
    ref = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt, on_finding="ignore") as w:
        (100 * _loss(model)).backward()
        total = torch.nn.utils.clip_grad_norm_((p for p in model.parameters()), 0.5)
    (100 * _loss(ref)).backward()
    want = torch.nn.utils.clip_grad_norm_(list(ref.parameters()), 0.5)
    assert float(total) == float(want)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p.grad, q.grad)
    assert w.findings == []


def test_a_head_added_later_to_the_optimizer_is_reported_as_held_but_unwatched() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt, on_finding="ignore") as w:
        for k in range(3):
            if k == 1:
                model.add_module("aux", nn.Linear(1, 1))
                opt.add_param_group({"params": model.aux.parameters()})
            opt.zero_grad()
            out = model(torch.randn(4, 6))
            (out.pow(2).mean() + (model.aux(out).pow(2).mean() if k else 0)).backward()
            opt.step()
    [f] = w.findings
    assert (f.kind, f.step, f.params) == ("new_param", 1, ("aux.weight", "aux.bias"))
    assert "optimizer SGD holds and trains them" in f.message


def test_nan_named_at_its_origin_and_not_again_downstream() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gw.watch(model, opt, on_finding="ignore") as w:
        for k in range(5):
            opt.zero_grad()
            h = model[0](torch.randn(4, 6) * (300 if k >= 2 else 1))
            h = torch.where(h < 50, torch.exp(h), h)  # unselected exp overflows: NaN into model[0]'s grad
            model[1](torch.tanh(h)).pow(2).mean().backward()
            opt.step()
    assert [(f.kind, f.step, f.params) for f in w.findings] == [("nonfinite_grad", 2, ("0.weight", "0.bias"))]
    assert "1.weight" in w.findings[0].message  # the finite layer nearer the loss, cited as evidence


def test_a_head_added_in_a_last_iteration_that_never_steps_is_reported_at_that_step() -> None:
    # the last backward pass is never sealed (no optimizer step ends it): the findings made at close
    # belong to the step in progress, not to the last sealed one
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt, on_finding="ignore") as w:
        for k in range(4):
            if k == 3:
                model.add_module("aux", nn.Linear(1, 1))
            opt.zero_grad()
            out = model(torch.randn(4, 6))
            (out.pow(2).mean() + (model.aux(out).pow(2).mean() if k == 3 else 0)).backward()
            if k < 3:
                opt.step()
    assert [(f.kind, f.step, f.params) for f in w.findings] == [("new_param", 3, ("aux.weight", "aux.bias"))]


def _run(w: gw.Watcher, iteration: Callable[[int], None], mode: str, n: int) -> gw.Watcher:
    """Run ``iteration(k)`` ``n`` times under ``w``, then close it.

    ``mode``: ``"decorated"`` (with ``w.train_step``), ``"marked"`` (``w.step()`` after each iteration) or
    ``"unmarked"``.
    """
    step = w.train_step(iteration) if mode == "decorated" else iteration
    for k in range(n):
        step(k)
        if mode == "marked":
            w.step()
    w.close()
    return w


def _gan_leak(mode: str) -> gw.Watcher:
    """D first, zeroed right after its step; G's backward then refills D, carried into the next D step."""
    torch.manual_seed(3)
    G = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    D = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    model = nn.ModuleDict({"G": G, "D": D})
    opt_g, opt_d = torch.optim.Adam(G.parameters(), lr=1e-3), torch.optim.SGD(D.parameters(), lr=1e-2)
    bce = nn.BCEWithLogitsLoss()
    w = gw.watch(model, [opt_g, opt_d], on_finding="ignore")

    def iteration(k: int) -> None:
        real, fake = torch.randn(16, 2) + 2.0, G(torch.randn(16, 4))
        (bce(D(real), torch.ones(16, 1)) + bce(D(fake.detach()), torch.zeros(16, 1))).backward()
        opt_d.step()
        opt_d.zero_grad()
        opt_g.zero_grad()
        bce(D(fake), torch.ones(16, 1)).backward()  # also fills D's gradients
        opt_g.step()

    return _run(w, iteration, mode, 6)


def test_generator_gradients_left_in_the_discriminator_are_found_marked_or_not() -> None:
    d = ("D.0.weight", "D.0.bias", "D.2.weight", "D.2.bias")
    decorated = _gan_leak("decorated")
    assert [(f.kind, f.step, f.params) for f in decorated.findings] == [("missing_zero_grad", 1, d)]
    assert "a backward pass that ran after SGD" in decorated.findings[0].message
    marked = _gan_leak("marked")  # (marked from the first w.step() on: the first iteration is steps 0, 1)
    assert [(f.kind, f.step, f.params) for f in marked.findings] == [("missing_zero_grad", 2, d)]
    # unmarked, each optimizer step is a step of its own: D steps at 0, 2, 4...; its second step (2) is the
    # first to apply G's gradient, which reached D's parameters before G's and which Adam applied at step 1
    unmarked = _gan_leak("unmarked")
    assert [(f.kind, f.step, f.params) for f in unmarked.findings] == [("missing_zero_grad", 2, d)]
    message = unmarked.findings[0].message
    assert "went through these parameters to the parameters of Adam#0 and which Adam#0 already" in message


def test_accumulation_marked_per_micro_batch_is_not_a_leak() -> None:
    # the Trainer pattern: one marked step per micro-batch, the optimizer steps every second one
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt, on_finding="ignore") as w:
        for k in range(8):
            _loss(model, k).backward()
            if k % 2 == 1:
                opt.step()
                opt.zero_grad()
            w.step()
    assert w.findings == []


def _step_first(mode: str) -> gw.Watcher:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = gw.watch(model, opt, on_finding="ignore")

    def iteration(k: int) -> None:
        if k > 0:
            opt.step()
            opt.zero_grad()
        _loss(model, k).backward()

    return _run(w, iteration, mode, 5)


def test_a_loop_that_steps_first_then_computes_the_next_gradient_is_not_a_leak() -> None:
    # step() + zero_grad() at the top of the iteration applies the previous iteration's gradient, once
    assert _step_first("marked").findings == []
    assert _step_first("decorated").findings == []
