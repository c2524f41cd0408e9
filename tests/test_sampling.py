"""The update-to-weight ratio measured on a fixed sample of each large parameter.

Reference: the exact ratio ``||theta_after - theta_before|| / ||theta_before||`` from clones taken around
``optimizer.step()`` in float64. For parameters of at most ``SAMPLE_SIZE`` entries gradwatch measures
every entry, so the two agree to float32 rounding; for larger ones the sample of ``k <= 1024`` evenly
spread entries estimates ``||delta||^2`` with a relative standard error of about ``sqrt(2 / k)`` for
Gaussian-like updates (4.4 %), i.e. about 2.2 % on the norm; the tolerance below is four of those.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import CPU_PATHS, half_dtypes, use_cpu_path
from torch import nn

import gradwatch as gw
from gradwatch import stats
from gradwatch.stats import host


@pytest.fixture(autouse=True, params=CPU_PATHS)
def cpu_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test on each CPU statistics path (see ``conftest.use_cpu_path``)."""
    return use_cpu_path(request.param, monkeypatch)


SAMPLED_REL = 4 * math.sqrt(0.5 / stats.SAMPLE_SIZE)


def exact_ratios(
    model: nn.Module, opt: torch.optim.Optimizer, steps: int, make_batch
) -> list[dict[str, float]]:
    out = []
    for k in range(steps):
        x, y = make_batch(k)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        before = {n: p.detach().double().clone() for n, p in model.named_parameters()}
        opt.step()
        out.append(
            {
                n: (p.detach().double() - before[n]).norm().item() / before[n].norm().item()
                for n, p in model.named_parameters()
            }
        )
    return out


def step_ratios(params: dict[str, torch.Tensor], opt: torch.optim.Optimizer, loss) -> tuple[dict, dict]:
    """One step on ``loss()``: each parameter's exact update-to-weight ratio and its gradient (float64)."""
    opt.zero_grad()
    loss().backward()
    grads = {n: p.grad.detach().double().clone() for n, p in params.items()}
    before = {n: p.detach().double().clone() for n, p in params.items()}
    opt.step()
    ratios = {n: (p.double() - before[n]).norm().item() / before[n].norm().item() for n, p in params.items()}
    return ratios, grads


def batches(d_in: int, d_out: int):
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(32, d_in, generator=g), torch.randn(32, d_out, generator=g)) for _ in range(8)]
    return lambda k: data[k % len(data)]


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.Adam(ps, lr=1e-3),
        lambda ps: torch.optim.SGD(ps, lr=0.05),
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-2),
    ],
    ids=["adam", "sgd", "sgd-momentum-wd"],
)
def test_update_ratio_matches_exact_reference(make_opt) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 200), nn.Tanh(), nn.Linear(200, 7))  # 60000, 200, 1400, 7 entries
    opt = make_opt(model.parameters())
    batch = batches(300, 7)
    with gw.watch(model, opt, on_finding="ignore") as w:
        ref = exact_ratios(model, opt, 6, batch)
    for record, exact in zip(w.history, ref, strict=True):
        for name, p in model.named_parameters():
            got = record.params[name].update_ratio
            rel = 1e-5 if p.numel() <= stats.SAMPLE_SIZE else SAMPLED_REL
            assert got == pytest.approx(exact[name], rel=rel), (record.step, name, p.numel())


def test_sample_stride_is_coprime_to_every_row_length_and_bounds_the_sample() -> None:
    for shape in [
        (1024,),
        (1025,),
        (3000,),
        (1024, 3),
        (512, 384),
        (64, 3, 3, 3),
        (8000, 384),
        (7, 11, 13, 17),
    ]:
        numel = math.prod(shape)
        s = stats.sample_stride(shape)
        if numel <= stats.SAMPLE_SIZE:
            assert s == 1
            continue
        assert all(s % f for f in range(2, int(s**0.5) + 1)), (shape, s)  # prime
        assert -(-numel // s) <= stats.SAMPLE_SIZE, (shape, s)
        for k in range(1, len(shape)):
            row = math.prod(shape[k:])
            assert row == 1 or row % s != 0, (shape, s, row)
    # a [512, 384] weight: the sample visits every column (no aliasing with the row length)
    s = stats.sample_stride((512, 384))
    cols = {(i * s) % 384 for i in range(-(-512 * 384 // s))}
    assert len(cols) == 384


def test_sample_view_is_a_view_of_the_right_entries() -> None:
    t = torch.arange(5000.0).reshape(50, 100)
    s = stats.sample_stride(t.shape)
    v = stats.sample_view(t, s)
    assert v._is_view() and torch.equal(v, t.reshape(-1)[::s])
    cl = torch.randn(8, 16, 3, 3).to(memory_format=torch.channels_last)  # dense, not contiguous
    v = stats.sample_view(cl, stats.sample_stride(cl.shape))
    assert v._is_view()
    flat_memory = cl.permute(0, 2, 3, 1).reshape(-1)  # channels_last memory order
    assert torch.equal(v, flat_memory[:: stats.sample_stride(cl.shape)])


def test_update_ratio_of_channels_last_conv_weights() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(16, 32, 3), nn.Flatten(), nn.Linear(32 * 4 * 4, 3))
    model = model.to(memory_format=torch.channels_last)
    assert not model[0].weight.is_contiguous()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(2)
    data = [(torch.randn(4, 16, 6, 6, generator=g), torch.randn(4, 3, generator=g)) for _ in range(3)]
    with gw.watch(model, opt, on_finding="ignore") as w:
        ref = exact_ratios(model, opt, 3, lambda k: data[k])
    for record, exact in zip(w.history, ref, strict=True):
        got = record.params["0.weight"].update_ratio
        assert got == pytest.approx(exact["0.weight"], rel=SAMPLED_REL)


def test_update_ratio_follows_parameters_whose_storage_is_replaced() -> None:
    # model.double() and p.data = ... give parameters new storage: cached sample views must follow
    torch.manual_seed(3)
    model = nn.Linear(100, 50)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = batches(100, 50)
    with gw.watch(model, opt, on_finding="ignore") as w:
        exact_ratios(model, opt, 2, batch)
        model.double()
        batch64 = lambda k: tuple(t.double() for t in batch(k))  # noqa: E731
        ref = exact_ratios(model, opt, 2, batch64)
        with torch.no_grad():
            model.weight.data = model.weight.data.clone() * 2
        ref += exact_ratios(model, opt, 2, batch64)
    for record, exact in zip(list(w.history)[2:], ref, strict=True):
        assert record.params["weight"].update_ratio == pytest.approx(exact["weight"], rel=SAMPLED_REL)


def test_samples_kept_between_steps_are_bounded() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(1000, 1000), nn.Linear(1000, 10))  # 1 M entries in the first weight
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gw.watch(model, opt, on_finding="ignore") as w:
        exact_ratios(model, opt, 3, batches(1000, 10))
        kept = sum(s.nbytes for s in w._recorder.sampler.prev_samples.values())
    assert len(w._recorder.sampler.prev_samples) == 1  # one optimizer: one set of samples, of its 4 tensors
    assert kept <= 4 * 8 * stats.SAMPLE_SIZE  # at most 8 KiB per tensor (CPU samples: float64 copies)


def test_undone_update_of_a_large_parameter_is_found() -> None:
    # the weights are copied back after every step: bit-for-bit equal samples at each boundary
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(200, 100), nn.Tanh(), nn.Linear(100, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    frozen = model[0].weight.detach().clone()
    batch = batches(200, 1)
    with gw.watch(model, opt, on_finding="ignore") as w:
        for k in range(10):
            x, y = batch(k)
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            with torch.no_grad():
                model[0].weight.copy_(frozen)
    found = [f for f in w.findings if f.kind == "not_updated"]
    assert [f.params for f in found] == [("0.weight",)]
    assert "undone" in found[0].message


@pytest.mark.parametrize("groups_added", [False, True], ids=["fixed", "add_param_group-each-step"])
def test_undone_update_is_found_with_one_optimizer_per_parameter(groups_added: bool) -> None:
    # 40 optimizers (the optimizer-in-backward pattern), or one whose param groups keep changing: the
    # samples kept between steps, per list of parameters, must not be forgotten while in use
    torch.manual_seed(9)
    layers = nn.ModuleList([nn.Linear(4, 4, bias=False) for _ in range(40)])
    params = list(layers.parameters())
    if groups_added:
        opts = [torch.optim.SGD(params[:30], lr=1e-3)]
    else:
        opts = [torch.optim.SGD([p], lr=1e-3) for p in params]
    x = torch.randn(8, 4)
    victim = layers[3].weight
    with gw.watch(layers, opts, on_finding="ignore") as w:
        for k in range(12):
            if groups_added and 30 + k < 40:
                opts[0].add_param_group({"params": [params[30 + k]]})
            for o in opts:
                o.zero_grad()
            used = layers[: 31 + k] if groups_added else layers  # a layer joins the loss with its group
            sum(layer(x) for layer in used).square().mean().backward()
            saved = victim.detach().clone()
            for o in opts:
                o.step()
            with torch.no_grad():
                victim.copy_(saved)  # the update of 3.weight is undone after every step
    last = w.history[-1].params
    assert last["3.weight"].weights_unchanged is True
    assert last["0.weight"].weights_unchanged is False
    assert (
        len(w._recorder.sampler.prev_samples) <= 2 * len(opts) + 8
        and len(w._recorder.sampler.layouts) <= 2 * len(opts) + 8
    )
    found = [f for f in w.findings if f.kind == "not_updated"]
    assert [f.params for f in found] == [("3.weight",)]


def test_sparse_sgd_updates_the_sample_misses_are_not_reported() -> None:
    # plain SGD on an embedding: only the rows of this step's tokens move, and the sample of the
    # 200000-entry table sees none of them; that is not "not updated"
    torch.manual_seed(6)
    emb = nn.Embedding(10_000, 20)
    head = nn.Linear(20, 1)
    opt = torch.optim.SGD([*emb.parameters(), *head.parameters()], lr=0.1)
    model = nn.ModuleDict({"emb": emb, "head": head})
    with gw.watch(model, opt) as w:
        for k in range(12):
            tokens = torch.tensor([[3 + k, 17]])
            opt.zero_grad()
            head(emb(tokens)).pow(2).mean().backward()
            opt.step()
    assert [f for f in w.findings if f.kind == "not_updated"] == []
    ratios = [r.params["emb.weight"].update_ratio for r in w.history]
    assert all(r is not None and r >= 0 for r in ratios)


def test_zero_learning_rate_on_a_large_parameter_is_found() -> None:
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(200, 100), nn.Tanh(), nn.Linear(100, 1))
    opt = torch.optim.SGD(
        [{"params": model[0].parameters(), "lr": 0.0}, {"params": model[2].parameters(), "lr": 0.1}]
    )
    batch = batches(200, 1)
    with gw.watch(model, opt, on_finding="ignore") as w:
        exact_ratios(model, opt, 8, batch)
    found = [f for f in w.findings if f.kind == "not_updated"]
    assert len(found) == 1 and set(found[0].params) == {"0.weight", "0.bias"}
    assert "learning rate is 0" in found[0].message


def test_param_norm_and_zero_fraction_of_large_parameters_are_sample_estimates() -> None:
    # a ReLU layer with many dead units: about 40 % of the first weight's gradient entries are 0
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(300, 200), nn.ReLU(), nn.Linear(200, 7))
    with torch.no_grad():
        model[0].bias[:80] = -100.0  # 80 of 200 units never fire
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    batch = batches(300, 7)
    seen = []
    with gw.watch(model, opt, on_finding="ignore") as w:
        for k in range(3):
            x, y = batch(k)
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            seen.append({n: (p.detach().clone(), p.grad.clone()) for n, p in model.named_parameters()})
            opt.step()
    zero_tol = 4 * 0.5 / math.sqrt(stats.SAMPLE_SIZE)  # four standard errors of a proportion
    for record, params in zip(w.history, seen, strict=True):
        for name, (p, g) in params.items():
            s = record.params[name]
            exact_zero = (g == 0).double().mean().item()
            if p.numel() <= stats.SAMPLE_SIZE:
                assert s.param_norm == pytest.approx(p.double().norm().item(), rel=1e-6)
                assert s.zero_fraction == pytest.approx(exact_zero, abs=1e-12)
            else:
                assert s.param_norm == pytest.approx(p.double().norm().item(), rel=SAMPLED_REL)
                assert s.zero_fraction == pytest.approx(exact_zero, abs=zero_tol)
            assert s.grad_norm == pytest.approx(g.double().norm().item(), rel=1e-6)  # always exact
    assert record.params["0.weight"].zero_fraction > 0.3


@pytest.mark.parametrize("dtype", half_dtypes(torch.bfloat16, torch.float16, torch.float64), ids=str)
def test_sampled_statistics_in_other_dtypes(dtype) -> None:
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(100, 50), nn.Tanh(), nn.Linear(50, 3)).to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(10)
    data = [
        (torch.randn(16, 100, generator=g).to(dtype), torch.randn(16, 3, generator=g).to(dtype))
        for _ in range(3)
    ]
    with gw.watch(model, opt, on_finding="ignore") as w:
        ref = exact_ratios(model, opt, 3, lambda k: data[k])
    for record, exact in zip(w.history, ref, strict=True):
        got = record.params["0.weight"].update_ratio
        # bf16/fp16 weights round each update to their resolution: compare loosely there
        rel = SAMPLED_REL if dtype == torch.float64 else 0.25
        assert got == pytest.approx(exact["0.weight"], rel=rel)
        assert 0.0 <= record.params["0.weight"].zero_fraction <= 1.0


def test_empty_and_complex_parameters_are_recorded() -> None:
    empty = torch.zeros(0, 4, requires_grad=True)
    z = torch.randn(40, 40, dtype=torch.complex64, requires_grad=True)
    w_real = torch.randn(3, requires_grad=True)
    opt = torch.optim.SGD([empty, z, w_real], lr=0.1)
    before = z.detach().clone()
    with gw.watch({"empty": empty, "z": z, "w": w_real}, opt, on_finding="ignore") as w:
        opt.zero_grad()
        ((z.abs() ** 2).sum() + empty.sum() + w_real.sum()).backward()
        opt.step()
    s = w.history[0].params
    assert s["empty"].grad_norm == 0 and s["empty"].zero_fraction == 0.0
    exact = (z.detach() - before).abs().norm().item() / before.abs().norm().item()
    assert s["z"].update_ratio == pytest.approx(exact, rel=SAMPLED_REL)
    assert s["w"].update_ratio is not None


def test_lbfgs_closure_steps_read_the_weights_before_the_update() -> None:
    torch.manual_seed(11)
    model = nn.Linear(4, 1)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=3)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    expected = []
    with gw.watch(model, opt, on_finding="ignore") as w:
        for _ in range(3):

            def closure():
                opt.zero_grad()
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()
                return loss

            before = model.weight.detach().double().clone()
            opt.step(closure)
            after = model.weight.detach().double()
            expected.append((before.norm().item(), (after - before).norm().item() / before.norm().item()))
    assert len(w.history) == 3
    for record, (norm, ratio) in zip(w.history, expected, strict=True):
        s = record.params["weight"]
        assert s.param_norm == pytest.approx(norm, rel=1e-6)
        assert s.update_ratio == pytest.approx(ratio, rel=1e-5)


def test_huge_finite_values_give_finite_statistics() -> None:
    # float32 sums and squares overflow long before float64 ones: recomputed where they do
    torch.manual_seed(12)
    model = nn.Sequential(nn.Linear(4, 48), nn.Linear(48, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with torch.no_grad():
        model[1].weight.fill_(1e20).add_(torch.randn(2, 48) * 1e19)
    with gw.watch(model, opt, on_finding="ignore") as w:
        opt.zero_grad()
        model(torch.randn(3, 4)).sum().backward()
        model[0].bias.grad.fill_(2e37)  # the float32 sum of 48 of these overflows
        opt.step()
    s = w.history[0].params
    assert s["0.bias"].grad_mean == pytest.approx(2e37, rel=1e-6)
    assert s["0.bias"].grad_norm == pytest.approx(2e37 * math.sqrt(48), rel=1e-6)
    ref = model[1].weight.detach().double().norm().item()
    assert s["1.weight"].param_norm == pytest.approx(ref, rel=1e-6)
    assert (s["0.bias"].nan_count, s["0.bias"].inf_count) == (0, 0)


def test_weights_that_turn_nan_give_a_nan_update_ratio() -> None:
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt, on_finding="ignore") as w:
        opt.zero_grad()
        model(torch.randn(2, 3)).sum().backward()
        model.weight.grad[0, 0] = float("nan")
        opt.step()
    assert math.isnan(w.history[0].params["weight"].update_ratio)


def test_sampled_gappy_parameter_is_read_afresh_at_every_step() -> None:
    # 2560 entries laid out with gaps (the first 40 columns of 80): the sample is a strided view of a
    # fresh copy, which must not be kept between steps (it would freeze the weights' sample: an update
    # ratio of 0 and a false not_updated)
    torch.manual_seed(10)
    params = {"gappy": nn.Parameter(torch.randn(64, 80)[:, :40]), "dense": nn.Parameter(torch.randn(64, 40))}
    opt = torch.optim.SGD(params.values(), lr=0.1)
    with gw.watch(params, opt, on_finding="ignore") as w:
        exact = [
            step_ratios(params, opt, lambda: sum((p.sin() * 3).sum() for p in params.values()))[0]
            for _ in range(6)
        ]
    for record, ref in zip(w.history, exact, strict=True):
        s = record.params["gappy"]
        assert s.update_ratio == pytest.approx(ref["gappy"], rel=SAMPLED_REL)
        assert s.weights_unchanged is (False if record.step else None)
    assert not w.findings


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("ord", [2.0, 1.0], ids=["l2", "l1"])
@pytest.mark.parametrize("path", ["torch", "host"])
def test_stacked_sample_distances_match_float64(
    dtype: torch.dtype, ord: float, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torch path: six samples of one length (a stacked group: one [6, 33] copy) and two of other lengths
    # (copied one by one); host path (the CPU default): all eight in one float64 copy. An ordinary update,
    # entries whose difference overflows the dtype, NaN weights, an untouched sample
    monkeypatch.setattr(host, "ENABLED", path == "host")  # (overrides cpu_path)
    g = torch.Generator().manual_seed(5)
    big = torch.finfo(dtype).max * 0.75
    before = [torch.randn(33, generator=g).to(dtype) for _ in range(6)]
    before += [torch.randn(k, generator=g).to(dtype) for k in (5, 7)]
    before[1][:5] = big
    before[6][:2] = big
    now = [b + (0.01 * torch.randn(b.numel(), generator=g)).to(dtype) for b in before]
    now[1][:5] = -big  # now - before = -1.5 max: past the dtype's range
    now[6][:2] = -big
    now[2][3] = float("nan")
    now[3] = before[3].clone()  # no update: exactly 0
    layout = stats.SampleLayout(before)
    copies = stats.take_samples(before, layout)
    if path == "torch":
        assert layout.host == [] and layout.stacked == [list(range(6))] and layout.rest == [[6, 7]]
        assert len(copies.stacks) == 1 and copies.stacks[0].shape == (6, 33)
    else:
        assert layout.host == list(range(8)) and layout.stacked == [] and layout.rest == []
        assert copies.host is not None and copies.host.dtype == np.float64
    later = stats.take_samples(now, layout)
    for side in (now, later):  # views stacked on the fly, or copies read in place
        got = {}
        for pos, dist in stats.sample_distances(side, copies, layout, ord=ord):
            got.update(zip(pos, dist[:, 0].tolist()))
        assert sorted(got) == list(range(8))
        for i, d in got.items():
            ref = torch.linalg.vector_norm(now[i].double() - before[i].double(), ord).item()
            if i == 2:
                assert math.isnan(d)
            elif i == 3:
                assert d == 0.0
            elif math.isinf(ref):  # float64 samples: the float64 norm itself overflows
                assert dtype == torch.float64 and d == math.inf
            else:
                assert math.isfinite(d) and d == pytest.approx(ref, rel=1e-6), (i, d, ref)
    for pos, norms in stats.sample_norms(copies):
        for j, d in zip(pos, norms[:, 0].tolist()):
            assert d == pytest.approx(torch.linalg.vector_norm(before[j].double()).item(), rel=1e-6)
    size = 8 if path == "host" else before[0].element_size()
    assert copies.nbytes == sum(t.numel() * size for t in before)


def test_update_ratio_of_parameters_whose_sample_is_a_copy() -> None:
    # gappy strides (the first 30 columns of a wider tensor): each sample view is a fresh copy, rebuilt at
    # every use; the update ratio is still measured at every step, stacked with its like
    torch.manual_seed(6)
    params = {f"w{k}": nn.Parameter(torch.randn(20, 70)[:, :30]) for k in range(5)}  # 600 entries
    params["dense"] = nn.Parameter(torch.randn(20, 30))
    assert not params["w0"].is_contiguous()
    opt = torch.optim.SGD(params.values(), lr=0.05)
    x = torch.randn(30, 8)
    with gw.watch(params, opt, on_finding="ignore") as w:
        loss = lambda: sum(((p @ x).tanh() ** 2).sum() for p in params.values())  # noqa: E731
        exact = [step_ratios(params, opt, loss)[0] for _ in range(4)]
    for record, ref in zip(w.history, exact, strict=True):
        for name in params:
            assert record.params[name].update_ratio == pytest.approx(ref[name], rel=1e-5), name


def test_parameters_resized_during_training_are_measured_at_their_new_size() -> None:
    # a vocabulary that grows: p.data = torch.cat(...) between steps (a small parameter stacked with its
    # like, and one large enough to be sampled); entry counts and sample strides follow the new shape
    torch.manual_seed(13)
    params = {f"p{i}": nn.Parameter(torch.randn(10, 4)) for i in range(5)}
    params["big"] = nn.Parameter(torch.randn(600, 4))
    opt = torch.optim.SGD(params.values(), lr=0.1)
    grads, exact = [], []
    with gw.watch(params, opt, on_finding="ignore") as w:
        for step in range(5):
            if step == 2:
                for name in ("p0", "p1", "p2", "p3", "big"):
                    params[name].data = torch.cat([params[name].data, torch.randn(3, 4)])
            ratios, g = step_ratios(params, opt, lambda: sum((p.sin() * p).sum() for p in params.values()))
            exact.append(ratios)
            grads.append(g)
    for record, ref, ratios in zip(w.history, grads, exact, strict=True):
        for name, g in ref.items():
            s = record.params[name]
            assert s.grad_norm == pytest.approx(g.norm().item(), rel=1e-6), (record.step, name)
            assert s.grad_mean == pytest.approx(g.mean().item(), rel=1e-5, abs=1e-9), (record.step, name)
            assert s.grad_std == pytest.approx(g.std(correction=0).item(), rel=1e-5), (record.step, name)
            assert 0.0 <= s.zero_fraction <= 1.0
            rel = 1e-5 if g.numel() <= stats.SAMPLE_SIZE else SAMPLED_REL
            assert s.update_ratio == pytest.approx(ratios[name], rel=rel), (record.step, name)
    assert w.history.by_step(2).params["big"].weights_unchanged is None  # not comparable across sizes
    assert w.history.by_step(3).params["big"].weights_unchanged is False
    assert "603x4" in w.report()


@pytest.mark.parametrize("change", ["shrink-in-place", "make-complex"])
def test_parameters_shrunk_in_place_or_made_complex_are_measured_as_they_are(change: str) -> None:
    # p.data = p.data[:k] keeps the storage (and its address); p.data = p.data.to(complex64) keeps the
    # shape: the entry count follows both (complex: real and imaginary parts as entries)
    p = nn.Parameter(torch.linspace(1.0, 2.0, 10))
    others = {f"o{k}": nn.Parameter(torch.randn(10)) for k in range(4)}  # stacked with p until it changes
    opt = torch.optim.SGD([p, *others.values()], lr=0.1)
    grads = []
    with gw.watch({"p": p, **others}, opt, on_finding="ignore") as w:
        for step in range(3):
            if step == 1:
                p.data = p.data[:3] if change == "shrink-in-place" else p.data.to(torch.complex64)
            opt.zero_grad()
            ((p * p.conj()).real.sum() + sum(o.sin().sum() for o in others.values())).backward()
            grads.append(p.grad.clone())
            opt.step()
    for record, g in zip(w.history, grads, strict=True):
        real = torch.view_as_real(g).double() if g.is_complex() else g.double()
        s = record.params["p"]
        assert s.grad_mean == pytest.approx(real.mean().item(), rel=1e-6), record.step
        assert s.grad_std == pytest.approx(real.std(correction=0).item(), rel=1e-5, abs=1e-7), record.step
        assert s.zero_fraction == (real == 0).double().mean().item(), record.step
    if change == "make-complex":
        assert w.history.by_step(1).params["p"].zero_fraction == 0.5  # the imaginary parts are 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_update_and_change_in_one_pass_match_float64(dtype: torch.dtype, cpu_path: str) -> None:
    """Small CPU samples: update norm and change since the previous record, both from one numpy pass."""
    g = torch.Generator().manual_seed(6)
    prev_w = [torch.randn(k, generator=g).to(dtype) for k in (33, 5, 1024, 7)]
    before_w = [p + 0.1 * torch.randn(p.numel(), generator=g).to(dtype) for p in prev_w]
    before_w[1] = prev_w[1].clone()  # restored to the previous record's weights: change exactly 0
    now_w = [b + (1e-3 * torch.randn(b.numel(), generator=g)).to(dtype) for b in before_w]
    now_w[2] = before_w[2].clone()  # no update: exactly 0
    now_w[3][2] = float("nan")
    layout = stats.SampleLayout(prev_w)
    prev, before = stats.take_samples(prev_w, layout), stats.take_samples(before_w, layout)
    both = stats.update_and_change(now_w, before, prev)
    if cpu_path == "torch":  # (the numpy path switched off: sample_distances measures each column)
        assert not layout.host_only and both is None
        return
    assert layout.host_only
    assert both is not None and tuple(both.shape) == (4, 2)
    for i, (update, change) in enumerate(both.tolist()):
        ref_update = torch.linalg.vector_norm(now_w[i].double() - before_w[i].double()).item()
        ref_change = torch.linalg.vector_norm(before_w[i].double() - prev_w[i].double(), 1.0).item()
        if i == 3:
            assert math.isnan(update)
        else:
            assert update == pytest.approx(ref_update, rel=1e-12, abs=0.0), i
        assert change == pytest.approx(ref_change, rel=1e-12, abs=0.0), i
    assert both[2, 0].item() == 0.0 and both[1, 1].item() == 0.0
    other = stats.take_samples(prev_w, stats.SampleLayout(prev_w))  # another layout: not paired here
    assert stats.update_and_change(now_w, before, other) is None
