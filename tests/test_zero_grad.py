"""missing_zero_grad / discarded_grad: caught on the buggy loops, silent on the correct ones."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import needs_amp_gradscaler
from torch import nn

import gradwatch as gw

STEPS = 6


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _xy(n: int = 16, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)


def _loss(model, x, y):
    return ((model(x) - y) ** 2).mean()


ALL = ("0.weight", "0.bias", "2.weight", "2.bias")


def _gan(
    seed: int, d_opt: str = "Adam"
) -> tuple[nn.ModuleDict, torch.optim.Optimizer, torch.optim.Optimizer, torch.Tensor]:
    """A tiny GAN (``G``, ``D``), Adam for G, ``d_opt`` for D, and a batch of real data."""
    torch.manual_seed(seed)
    gan = nn.ModuleDict(
        {
            "G": nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2)),
            "D": nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1)),
        }
    )
    opt_g = torch.optim.Adam(gan["G"].parameters(), 1e-3)
    opt_d = (
        torch.optim.Adam(gan["D"].parameters(), 1e-3)
        if d_opt == "Adam"
        else torch.optim.SGD(gan["D"].parameters(), 1e-2)
    )
    return gan, opt_g, opt_d, torch.randn(8, 2)


def kinds(w) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for f in w.findings:
        out.setdefault(f.kind, set()).update(f.params)
    return out


# ----------------------------------------------------------------------------- buggy loops
def test_no_zero_grad_at_all_names_every_parameter_at_step_1() -> None:
    model, (x, y) = _mlp(), _xy()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    norms = []
    with gw.watch(model, opt, on_finding="ignore") as w:
        for _ in range(STEPS):
            _loss(model, x, y).backward()
            norms.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).norm().item())
            opt.step()
    (f,) = w.findings
    assert f.kind == "missing_zero_grad" and f.step == 1 and set(f.params) == set(ALL)
    assert "SGD at step 1" in f.message and "step-0 gradient" in f.message and "zero_grad()" in f.message
    carried = float(f.message.split("carried-over part has norm ")[1].split(")")[0])
    assert carried == pytest.approx(norms[0], rel=1e-3)  # the evidence is step 0's gradient


def test_zero_grad_once_per_epoch() -> None:
    model, (x, y) = _mlp(), _xy(32)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gw.watch(model, opt, on_finding="ignore") as w:
        for _epoch in range(2):
            opt.zero_grad()
            for xb, yb in zip(x.chunk(4), y.chunk(4)):
                _loss(model, xb, yb).backward()
                opt.step()
    assert kinds(w) == {"missing_zero_grad": set(ALL)}
    assert w.findings[0].step == 1


def test_gan_only_the_unzeroed_network_is_named() -> None:
    gan, opt_g, opt_d, real = _gan(seed=0)
    with gw.watch(gan, [opt_g, opt_d], on_finding="ignore") as w:
        for _ in range(STEPS):
            fake = gan["G"](torch.randn(8, 2))
            # BUG: opt_d.zero_grad() forgotten
            (gan["D"](fake.detach()).mean() - gan["D"](real).mean()).backward()
            opt_d.step()
            opt_g.zero_grad()
            (-gan["D"](fake).mean()).backward()
            opt_g.step()
    assert kinds(w) == {"missing_zero_grad": {"D.0.weight", "D.0.bias", "D.2.weight", "D.2.bias"}}
    assert "Adam#1" in w.findings[0].message


def test_manual_loop_without_grad_zero() -> None:
    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 20)
    y = 2 * x + 1
    w_, b_ = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    with gw.watch({"w": w_, "b": b_}, None, on_finding="ignore") as w:
        for _ in range(STEPS):
            ((w_ * x + b_ - y) ** 2).mean().backward()
            with torch.no_grad():
                w_ -= 0.1 * w_.grad
                b_ -= 0.1 * b_.grad
    assert kinds(w) == {"missing_zero_grad": {"w", "b"}}
    # the forgotten parameters' own fix, in their own names; steps are the watcher's, not "w.step()"
    # (in such a loop w is the weight tensor)
    assert w.findings[0].step == 1 and "w.grad.zero_(); b.grad.zero_()" in w.findings[0].message
    assert "the watcher's step()" in w.findings[0].message and "w.step()" not in w.findings[0].message


def test_forgotten_bias_in_manual_zeroing() -> None:
    model, (x, y) = _mlp(), _xy()
    with gw.watch(model, None, on_finding="ignore") as w:
        for _ in range(STEPS):
            _loss(model, x, y).backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.01 * p.grad
            for name, p in model.named_parameters():
                if name != "2.bias":  # BUG: the last bias is never zeroed
                    p.grad.zero_()
    assert kinds(w) == {"missing_zero_grad": {"2.bias"}}


def test_zero_grad_every_micro_batch_discards_gradients() -> None:
    model, (x, y) = _mlp(), _xy(32)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gw.watch(model, opt, on_finding="ignore") as w:
        for _ in range(3):
            for xb, yb in zip(x.chunk(4), y.chunk(4)):
                opt.zero_grad()  # BUG: inside the accumulation window
                (_loss(model, xb, yb) / 4).backward()
            opt.step()
    assert kinds(w) == {"discarded_grad": set(ALL)}
    (f,) = w.findings
    assert f.step == 0 and "3 backward pass(es)" in f.message


@pytest.mark.parametrize("constraint", ["clamp-one-layer", "renorm-one-layer", "embedding-max-norm"])
def test_discarded_gradients_are_found_when_some_layers_are_constrained_in_place(constraint: str) -> None:
    # an in-place write to some weights between micro-batches (a constraint, not an update) must not
    # make the zeroed passes look used: only a write to every weight the pass reached does (SAM)
    torch.manual_seed(1)
    emb = nn.Embedding(20, 4, max_norm=1.0 if constraint == "embedding-max-norm" else None)
    model = _mlp()
    opt = torch.optim.SGD([*emb.parameters(), *model.parameters()], lr=0.01)
    tokens = torch.randint(0, 20, (32,))
    _, y = _xy(32)
    with gw.watch({"emb": emb.weight, **dict(model.named_parameters())}, opt, on_finding="ignore") as w:
        for _ in range(3):
            for tb, yb in zip(tokens.chunk(4), y.chunk(4)):
                opt.zero_grad()  # BUG: inside the accumulation window
                (_loss(model, emb(tb), yb) / 4).backward()
                with torch.no_grad():
                    if constraint == "clamp-one-layer":
                        model[0].weight.clamp_(-1.0, 1.0)
                    elif constraint == "renorm-one-layer":
                        model[2].weight.renorm_(2, 0, 1.0)
            opt.step()
    assert kinds(w) == {"discarded_grad": {"emb", *ALL}}


def test_model_zero_grad_bypassing_accumulation_with_set_to_none_false() -> None:
    model, (x, y) = _mlp(), _xy(32)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gw.watch(model, opt, on_finding="ignore") as w:
        for _ in range(2):
            for xb, yb in zip(x.chunk(2), y.chunk(2)):
                model.zero_grad(set_to_none=False)
                _loss(model, xb, yb).backward()
            opt.step()
    assert kinds(w) == {"discarded_grad": set(ALL)}


# ----------------------------------------------------------------------------- correct loops
def _plain(model, opt, x, y, zero):
    for _ in range(STEPS):
        zero("before")
        _loss(model, x, y).backward()
        opt.step()
        zero("after")


def _amp_loop(model, opt, x, y):
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    skipped = 0
    for k in range(STEPS):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = _loss(model, x, y)
        if k in (1, 2):
            loss = loss * float("inf")  # an overflowing step: the scaler must skip it
        before = model[0].weight.detach().clone()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        skipped += bool(torch.equal(before, model[0].weight.detach()))
    assert skipped == 2


def _amp_accumulation_loop(model, opt, x, y):
    # two micro-batches per step; one of them overflows at steps 1 (the second) and 2 (the first): the
    # scaler skips the whole accumulated step, finite micro-batch included, which is not a bug either
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    skipped = 0
    for k in range(STEPS):
        opt.zero_grad()
        before = model[0].weight.detach().clone()
        for micro in range(2):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = _loss(model, x[micro::2], y[micro::2]) / 2
            if (k, micro) in ((1, 1), (2, 0)):
                loss = loss * float("inf")
            scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        skipped += bool(torch.equal(before, model[0].weight.detach()))
    assert skipped == 2


def _lbfgs(model, x, y):
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)

    def closure():
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    return opt


HEALTHY = {
    "zero-before-backward": lambda m, o, x, y: _plain(
        m, o, x, y, lambda when: o.zero_grad() if when == "before" else None
    ),
    "zero-after-step": lambda m, o, x, y: _plain(
        m, o, x, y, lambda when: o.zero_grad() if when == "after" else None
    ),
    "set-to-none-false": lambda m, o, x, y: _plain(
        m, o, x, y, lambda when: o.zero_grad(set_to_none=False) if when == "before" else None
    ),
    "model-zero-grad": lambda m, o, x, y: _plain(
        m, o, x, y, lambda when: m.zero_grad() if when == "after" else None
    ),
    "grad-none-by-hand": lambda m, o, x, y: _plain(
        m,
        o,
        x,
        y,
        lambda when: [setattr(p, "grad", None) for p in m.parameters()] if when == "after" else None,
    ),
    "grad-zero-by-hand": lambda m, o, x, y: _plain(
        m, o, x, y, lambda when: [p.grad.zero_() for p in m.parameters()] if when == "after" else None
    ),
    "amp-bf16-gradscaler-with-skips": _amp_loop,
    "amp-gradscaler-accumulation-with-skips": _amp_accumulation_loop,
}


@pytest.mark.parametrize(
    "loop", [pytest.param(k, marks=needs_amp_gradscaler) if k.startswith("amp") else k for k in HEALTHY]
)
def test_silent_on_correct_single_optimizer_loops(loop: str) -> None:
    model, (x, y) = _mlp(), _xy()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gw.GradWatchWarning)
        with gw.watch(model, opt) as w:
            HEALTHY[loop](model, opt, x, y)
    assert w.findings == []
    assert len(w.history) >= 3
    if loop.startswith("amp"):  # the two overflowing steps are noted as skipped, not reported as bugs
        assert len(w.skipped_steps) == 2
        assert "2 optimizer step(s) skipped because the gradients were not finite" in w.report()
    else:
        assert w.skipped_steps == []


def test_silent_on_accumulation_with_one_step_per_k() -> None:
    model, (x, y) = _mlp(), _xy(32)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gw.watch(model, opt) as w:
        for _ in range(3):
            for xb, yb in zip(x.chunk(4), y.chunk(4)):
                (_loss(model, xb, yb) / 4).backward()
            opt.step()
            opt.zero_grad()
    assert w.findings == [] and len(w.history) == 3


@pytest.mark.parametrize("order", ["g-first", "d-first"])
def test_silent_on_gan_generator_loss_into_discriminator(order: str) -> None:
    gan, opt_g, opt_d, real = _gan(seed=0)

    def d_step(fake):
        opt_d.zero_grad()
        (gan["D"](fake.detach()).mean() - gan["D"](real).mean()).backward()
        opt_d.step()

    def g_step(fake):
        opt_g.zero_grad()
        (-gan["D"](fake).mean()).backward()  # also fills D's .grad, never used by opt_d
        opt_g.step()

    with gw.watch(gan, [opt_g, opt_d]) as w:
        for _ in range(STEPS):
            fake = gan["G"](torch.randn(8, 2))
            if order == "g-first":
                g_step(fake)
                d_step(fake)
            else:
                d_step(fake)
                g_step(fake)
    assert w.findings == []


@pytest.mark.parametrize("marked", [False, True])
def test_generator_first_gan_zeroed_after_each_step_leaks_into_the_discriminator(marked: bool) -> None:
    # Lightning-AI/pytorch-lightning#557: for each optimizer in turn, backward, step(), zero_grad(). G's
    # loss fills D's .grad; D's own backward adds to it and D's step applies both
    gan, opt_g, opt_d, real = _gan(seed=1, d_opt="SGD")
    with gw.watch(gan, [opt_g, opt_d], on_finding="ignore") as w:
        for _ in range(STEPS):
            fake = gan["G"](torch.randn(8, 2))
            (-gan["D"](fake).mean()).backward()
            opt_g.step()
            opt_g.zero_grad()
            (gan["D"](fake.detach()).mean() - gan["D"](real).mean()).backward()
            opt_d.step()
            opt_d.zero_grad()
            if marked:
                w.step()
    d = ("D.0.weight", "D.0.bias", "D.2.weight", "D.2.bias")
    # the very first D step already applies G's gradient, but an optimizer's first step is not judged (a
    # .grad zeroed through .data before it cannot be told from one left there): D's second step. Unmarked,
    # G steps at 0, 2 and D at 1, 3; marked from the first w.step() on, the first iteration is steps 0, 1
    # and the second one step 2
    assert [(f.kind, f.step, f.params) for f in w.findings] == [("missing_zero_grad", 2 if marked else 3, d)]
    assert (
        "SGD#1" in w.findings[0].message
        and "to the parameters of Adam#0 and which Adam#0 already stepped" in w.findings[0].message
    )


class _CheckpointedD(nn.Module):
    """A discriminator whose middle block runs under reentrant activation checkpointing."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.mid, self.out = (
            nn.Linear(2, 16),
            nn.Sequential(nn.Tanh(), nn.Linear(16, 16)),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        return self.out(checkpoint(self.mid, self.inp(x), use_reentrant=True))


@pytest.mark.parametrize("leak", [False, True])
def test_a_reentrant_checkpoint_inside_the_backward_pass_is_part_of_that_pass(leak: bool) -> None:
    # checkpoint(use_reentrant=True) differentiates its block with a backward call of its own during the
    # outer pass: one pass, not three (else the generator's pass into D.mid looked discarded when D was
    # zeroed, and a leak through D named only D's first layer)
    torch.manual_seed(2)
    gan = nn.ModuleDict(
        {"G": nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)), "D": _CheckpointedD()}
    )
    opt_g = torch.optim.Adam(gan["G"].parameters(), 1e-3)
    opt_d = torch.optim.Adam(gan["D"].parameters(), 1e-3)
    passes = []
    with gw.watch(gan, [opt_g, opt_d], on_finding="ignore") as w:
        prov = w._recorder.provenance
        for _ in range(STEPS):
            fake, real = gan["G"](torch.randn(8, 3)), torch.randn(8, 2) + 1.0
            if not leak:
                opt_d.zero_grad()
            before = prov.pass_id
            (gan["D"](fake.detach()).mean() - gan["D"](real).mean()).backward()
            opt_d.step()
            if leak:
                opt_d.zero_grad()  # (zeroed after its step: G's backward then fills D's .grad)
            opt_g.zero_grad()
            (-gan["D"](fake).mean()).backward()
            opt_g.step()
            passes.append(prov.pass_id - before)
    assert passes == [2] * STEPS
    if leak:
        d = ("D.inp.weight", "D.inp.bias", "D.mid.1.weight", "D.mid.1.bias", "D.out.weight", "D.out.bias")
        assert [(f.kind, set(f.params)) for f in w.findings] == [("missing_zero_grad", set(d))]
    else:
        assert w.findings == []


def test_a_leak_through_a_generator_with_a_parameter_no_optimizer_holds() -> None:
    # G's input scale is in no optimizer (not_updated says so); it lies behind D's layers too
    gan, opt_g, opt_d, real = _gan(seed=5)
    gan["G"].register_parameter("scale", nn.Parameter(torch.ones(2)))
    with gw.watch(gan, [opt_g, opt_d], on_finding="ignore") as w:
        for _ in range(STEPS):
            fake = gan["G"](torch.randn(8, 2) * gan["G"].scale)
            (gan["D"](fake.detach()).mean() - gan["D"](real).mean()).backward()
            opt_d.step()
            opt_d.zero_grad()
            (-gan["D"](fake).mean()).backward()
            opt_g.step()
            opt_g.zero_grad()
    assert not w._recorder.failed
    assert kinds(w)["missing_zero_grad"] == {"D.0.weight", "D.0.bias", "D.2.weight", "D.2.bias"}


@pytest.mark.parametrize("frozen_for", ["backward", "forward and backward"])
def test_silent_when_the_discriminator_is_frozen_for_the_generators_backward(frozen_for: str) -> None:
    # the fix the leak finding suggests; frozen after the forward pass, autograd still runs the
    # discriminator's accumulation nodes (and their hooks) but writes nothing into .grad
    gan, opt_g, opt_d, real = _gan(seed=4)
    with gw.watch(gan, [opt_g, opt_d], on_finding="ignore") as w:
        for _ in range(STEPS):
            fake = gan["G"](torch.randn(8, 2))
            (gan["D"](fake.detach()).mean() - gan["D"](real).mean()).backward()
            opt_d.step()
            opt_d.zero_grad()  # (after its step: only the freezing keeps G's loss out of D's .grad)
            if frozen_for != "backward":
                gan["D"].requires_grad_(False)
            g_loss = -gan["D"](fake).mean()
            gan["D"].requires_grad_(False)
            g_loss.backward()
            gan["D"].requires_grad_(True)
            assert all(p.grad is None for p in gan["D"].parameters())
            opt_g.step()
            opt_g.zero_grad()
    assert w.findings == [] and len(w.history) == 2 * STEPS


def test_silent_on_lbfgs_closure() -> None:
    model, (x, y) = _mlp(), _xy()
    with gw.watch(model, None) as w0:
        pass
    assert w0.findings == []
    model = _mlp()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)

    def closure():
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        return loss

    with gw.watch(model, opt) as w:
        for _ in range(3):
            opt.step(closure)
    assert w.findings == [] and len(w.history) == 3


def test_silent_on_gradient_penalty_and_double_backward() -> None:
    model, (x, y) = _mlp(), _xy()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with gw.watch(model, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            xr = x.clone().requires_grad_(True)
            loss = _loss(model, xr, y)
            (gx,) = torch.autograd.grad(loss, xr, create_graph=True)
            loss = loss + 0.1 * gx.pow(2).sum()
            loss.backward(retain_graph=True)  # two backward passes into one step
            (0.5 * loss).backward()
            opt.step()
    assert w.findings == []


def test_silent_on_frozen_skipped_and_optimizerless_parameters() -> None:
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {"frozen": nn.Linear(4, 4), "a": nn.Linear(4, 1), "b": nn.Linear(4, 1), "extra": nn.Linear(4, 1)}
    )
    model["frozen"].requires_grad_(False)
    opt = torch.optim.SGD([*model["a"].parameters(), *model["b"].parameters()], lr=0.01)  # not "extra"
    x = torch.randn(8, 4)
    with gw.watch(model, opt, on_finding="ignore") as w:
        for k in range(STEPS):
            opt.zero_grad()
            h = model["frozen"](x)
            branch = model["a"] if k % 2 == 0 else model["b"]  # each branch skipped every other step
            (branch(h).sum() + model["extra"](h).sum()).backward()
            opt.step()
    # "extra" is in no optimizer: that is not_updated's finding, and nothing else is reported
    assert kinds(w) == {"not_updated": {"extra.weight", "extra.bias"}}


def test_silent_on_manual_loop_with_set_to_none() -> None:
    a = torch.randn(3, requires_grad=True)
    with gw.watch([a]) as w:
        for _ in range(STEPS):
            (a * a).sum().backward()
            with torch.no_grad():
                a -= 0.1 * a.grad
            a.grad = None
    assert w.findings == [] and len(w.history) == STEPS


def test_silent_with_decorator_and_manual_updates() -> None:
    a = torch.randn(3, requires_grad=True)
    w = gw.Watcher({"a": a})

    @w.train_step
    def step():
        loss = (a * a).sum()
        loss.backward()
        with torch.no_grad():
            a.sub_(0.1 * a.grad)
        a.grad.zero_()
        return loss

    for _ in range(STEPS):
        step()
    w.close()
    assert w.findings == [] and len(w.history) == STEPS


# ----------------------------------------------------------------------------- delivery
def _buggy(w_kwargs):
    model, (x, y) = _mlp(), _xy()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gw.watch(model, opt, **w_kwargs) as w:
        for _ in range(STEPS):
            _loss(model, x, y).backward()
            opt.step()
    return w


def test_warn_once_with_the_kind_subclass() -> None:
    with pytest.warns(gw.MissingZeroGradWarning, match=r"SGD at step 1 .*zero_grad") as rec:
        _buggy({})
    hits = [r for r in rec if issubclass(r.category, gw.MissingZeroGradWarning)]
    assert len(hits) == 1
    assert hits[0].filename == __file__  # attributed to the user's line (opt.step()), not to gradwatch


def test_warning_filter_error_stops_the_step() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", gw.MissingZeroGradWarning)
        with pytest.raises(gw.MissingZeroGradWarning):
            _buggy({})


def test_raise_policy_raises_gradient_error_at_the_step() -> None:
    model, (x, y) = _mlp(), _xy()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    w = gw.watch(model, opt, on_finding="raise")
    _loss(model, x, y).backward()
    opt.step()
    _loss(model, x, y).backward()
    before = model[0].weight.detach().clone()
    with pytest.raises(gw.GradientError, match="step-0 gradient") as err:
        opt.step()
    assert err.value.finding.kind == "missing_zero_grad" and err.value.finding.step == 1
    assert torch.equal(before, model[0].weight)  # raised before the bad update
    w.close()


def test_suppress_option_and_context() -> None:
    w = _buggy({"on_finding": "ignore", "suppress": {"missing_zero_grad": ["2.*"]}})
    assert kinds(w) == {"missing_zero_grad": {"0.weight", "0.bias"}}
    w = _buggy({"on_finding": "ignore", "suppress": ["missing_zero_grad"]})
    assert w.findings == []
    with pytest.raises(ValueError, match="unknown finding kind 'missing_zerograd'"):
        gw.Watcher(nn.Linear(2, 1), suppress=["missing_zerograd"])
    model, (x, y) = _mlp(), _xy()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gw.watch(model, opt, on_finding="ignore") as w, w.suppress("missing_zero_grad"):
        for _ in range(3):
            _loss(model, x, y).backward()
            opt.step()
    assert w.findings == []


def test_finding_goes_to_tensorboard_text(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _buggy({"on_finding": "ignore", "logdir": str(tmp_path)})
    ea = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    ea.Reload()
    (event,) = ea.Tensors("gradwatch/findings/text_summary")
    assert event.step == 1
    text = event.tensor_proto.string_val[0].decode()
    assert "missing_zero_grad" in text and "step-0 gradient" in text


def test_zeroing_through_data_is_a_reset() -> None:
    # the old idiom p.grad.data.zero_() writes without bumping the version counter: the values decide
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt) as w:
        for _ in range(6):
            model(torch.randn(3, 4)).sum().backward()
            opt.step()
            for p in model.parameters():
                p.grad.data.zero_()
    assert w.findings == []


def test_zeroing_through_data_still_finds_a_forgotten_parameter() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt, on_finding="ignore") as w:
        for _ in range(4):
            model(torch.randn(3, 4)).sum().backward()
            opt.step()
            model.weight.grad.data.zero_()  # the bias is never zeroed
    found = [f for f in w.findings if f.kind == "missing_zero_grad"]
    assert [f.params for f in found] == [("bias",)]


# 20: every gradient in the small-model flag; 300: a 90000-entry weight, above the small-tensor limit
@pytest.mark.parametrize("width", [20, 300])
@pytest.mark.parametrize("zeroes", ["optimizer", "model"])
@pytest.mark.parametrize("set_to_none", [True, False])
def test_a_step_skipped_by_hand_on_a_nan_loss_is_not_discarded_gradients(
    width: int, zeroes: str, set_to_none: bool
) -> None:
    """A loop that skips optimizer.step() when the loss is not finite: a skip, not a discarded gradient.

    The pass's finite flag is computed late; zero_grad(set_to_none=False) zeroes the values in place, so
    the flag is read first (gradwatch wraps Optimizer.zero_grad and Module.zero_grad while attached).
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(width, width), nn.Linear(width, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    with gw.watch(model, opt, on_finding="ignore") as w:
        for step in range(4):
            (opt if zeroes == "optimizer" else model).zero_grad(set_to_none=set_to_none)
            x = torch.randn(4, width, generator=g)
            if step == 2:
                x[0, 0] = float("nan")
            loss = model(x).pow(2).mean()
            loss.backward()
            if torch.isfinite(loss):
                opt.step()
    assert w.skipped_steps == [2]
    assert w.findings == []


def test_the_zero_grad_methods_are_restored_at_close() -> None:
    originals = {cls: cls.__dict__["zero_grad"] for cls in (torch.optim.Optimizer, nn.Module)}
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = gw.watch(model, opt)
    w2 = gw.watch(model, opt, on_finding="ignore")
    assert all(cls.__dict__["zero_grad"] is not f for cls, f in originals.items())  # wrapped while watched
    w.close()
    assert all(cls.__dict__["zero_grad"] is not f for cls, f in originals.items())  # w2 still asks
    w2.close()
    assert all(cls.__dict__["zero_grad"] is f for cls, f in originals.items())
    assert "zero_grad" not in vars(opt) and "zero_grad" not in vars(model)  # nothing on instances
