"""Recorded statistics equal an independent reference computed from the .grad tensors by hand."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import (
    CPU_PATHS,
    MLP,
    ResCNN,
    TiedLM,
    assert_stats_close,
    half_dtypes,
    reference_stats,
    use_cpu_path,
)
from torch import nn

import gradwatch as gw
from gradwatch import stats
from gradwatch.stats import batched


@pytest.fixture(autouse=True, params=CPU_PATHS)
def cpu_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test on each CPU statistics path (see ``conftest.use_cpu_path``)."""
    return use_cpu_path(request.param, monkeypatch)


def _batch(kind: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(1)
    if kind == "mlp":
        return torch.randn(32, 6, generator=g, dtype=dtype), torch.randint(0, 3, (32,), generator=g)
    if kind == "cnn":
        return torch.randn(4, 3, 8, 8, generator=g, dtype=dtype), torch.randint(0, 4, (4,), generator=g)
    return torch.randint(0, 20, (6, 5), generator=g), torch.randint(0, 20, (6, 5), generator=g)


MODELS = {"mlp": MLP, "cnn": ResCNN, "tied": TiedLM}
TOL = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 1e-5, torch.float16: 1e-5}


@pytest.mark.parametrize(
    "dtype",
    half_dtypes(torch.float32, torch.float64, torch.bfloat16, torch.float16),
    ids=lambda d: str(d).replace("torch.", ""),
)
@pytest.mark.parametrize("kind", list(MODELS))
def test_module_stats_match_autograd(kind: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = MODELS[kind]().to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = _batch(kind, dtype)
    refs = []
    with gw.watch(model, opt, on_finding="ignore") as w:
        for _ in range(3):
            opt.zero_grad()
            out = model(x).float()
            loss = nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
            loss.backward()
            grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            opt.step()
            refs.append({n: reference_stats(grads[n], before[n], p) for n, p in model.named_parameters()})
    assert [r.step for r in w.history] == [0, 1, 2]
    names = [n for n, _ in model.named_parameters()]
    assert w.names == tuple(names)
    for record, ref in zip(w.history, refs):
        assert list(record.params) == names
        for name in names:
            assert record.params[name].has_grad
            assert_stats_close(record.params[name], ref[name], TOL[dtype], f"step {record.step} {name}")
        want_total = torch.stack(
            [torch.tensor(r["grad_norm"], dtype=torch.float64) for r in ref.values()]
        ).norm()
        assert record.total_grad_norm == pytest.approx(want_total.item(), rel=TOL[dtype])


def test_weight_tying_counts_both_uses_once() -> None:
    torch.manual_seed(0)
    model = TiedLM()
    names = [n for n, _ in model.named_parameters()]
    assert "out.weight" not in names  # named_parameters() deduplicates the tied weight
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _batch("tied", torch.float32)
    with gw.watch(model, opt) as w:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x).reshape(-1, 20), y.reshape(-1)).backward()
        g = model.emb.weight.grad.clone()
        opt.step()
    assert w.history[0].params["emb.weight"].grad_norm == pytest.approx(g.norm().item(), rel=1e-6)


def test_layers_group_parameters_by_owning_module() -> None:
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt) as w:
        model(torch.randn(4, 6)).sum().backward()
        g = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
    layers = w.history[0].layers
    assert set(layers) == {"net.0", "net.2", "net.4"}
    for layer in layers:
        want = torch.cat([g[f"{layer}.weight"].reshape(-1), g[f"{layer}.bias"]]).norm().item()
        assert layers[layer] == pytest.approx(want, rel=1e-6)


def test_seed_tensor_model_manual_updates() -> None:
    """The tutorial's raw-tensor model; boundaries come from the in-place updates."""
    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 50)
    y = 2 * x + 1 + 0.05 * torch.randn(50)
    w_ = torch.zeros(1, requires_grad=True)
    b_ = torch.zeros(1, requires_grad=True)
    refs = []
    with gw.watch({"w": w_, "b": b_}, None) as w:
        for _ in range(5):
            loss = ((w_ * x + b_ - y) ** 2).mean()
            loss.backward()
            before = {"w": w_.detach().clone(), "b": b_.detach().clone()}
            grads = {"w": w_.grad.clone(), "b": b_.grad.clone()}
            with torch.no_grad():
                w_ -= 0.1 * w_.grad
                b_ -= 0.1 * b_.grad
            refs.append({n: reference_stats(grads[n], before[n], t) for n, t in (("w", w_), ("b", b_))})
            w_.grad.zero_()
            b_.grad.zero_()
    assert [r.step for r in w.history] == list(range(5))
    for record, ref in zip(w.history, refs):
        for name in ("w", "b"):
            got = record.params[name]
            if ref[name]["param_norm"] == 0:  # update ratio is inf from a zero weight
                ref[name] = {k: v for k, v in ref[name].items() if k != "update_ratio"}
            assert_stats_close(got, ref[name], 1e-6, f"step {record.step} {name}")


@pytest.mark.parametrize(
    "dtype",
    [torch.float32, torch.float64, torch.bfloat16, torch.float16],
    ids=lambda d: str(d).replace("torch.", ""),
)
def test_grad_stats_nonfinite_and_zeros(dtype: torch.dtype) -> None:
    inf, nan = float("inf"), float("nan")
    grads = [
        torch.tensor([1.0, -2.0, 0.0, nan, inf, -inf, 0.0], dtype=dtype),
        torch.tensor([[0.0, 0.0], [3.0, -4.0]], dtype=dtype),
        torch.zeros(5, dtype=dtype),
        torch.tensor([nan, nan], dtype=dtype),
    ]
    ((idx, block),) = stats.grad_stats(grads)
    assert idx == [0, 1, 2, 3]
    got = block.tolist()
    for row, g in zip(got, grads):
        norm, max_abs, total, nonzero, nonfinite, n_nan, _centered = row
        ref = g.double()
        assert nonzero == int((ref != 0).sum())
        assert nonfinite == int((~torch.isfinite(ref)).sum())
        assert n_nan == int(torch.isnan(ref).sum())
        if torch.isfinite(ref).all():
            assert norm == pytest.approx(ref.norm().item(), rel=1e-6)
            assert max_abs == pytest.approx(ref.abs().max().item(), rel=1e-6)
            assert total == pytest.approx(ref.sum().item(), abs=1e-6)
        else:
            assert norm != norm or norm == inf  # NaN or Inf propagate, never a silent finite value


def test_grad_stats_chunking_matches_unchunked(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    grads = [torch.randn(n) for n in (100, 7, 300, 1, 64)]
    whole = stats.grad_stats(grads)[0][1]
    monkeypatch.setattr(batched, "CHUNK_ELEMENTS", 128)
    chunked = stats.grad_stats(grads)[0][1]
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)


def test_sparse_and_none_grads() -> None:
    dense = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    out = stats.grad_stats([None, dense.to_sparse(), torch.empty(0)])
    ((idx, block),) = out
    assert idx == [1]
    assert block[0, 0].item() == pytest.approx(dense.norm().item())
    assert block[0, 3].item() == 2


def test_keep_grads_keeps_cpu_copies_of_named_parameters() -> None:
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    kept = []
    with gw.watch(model, opt, keep_grads=["net.0.weight"]) as w:
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(4, 6)).sum().backward()
            kept.append(model.net[0].weight.grad.clone())
            opt.step()
    for k, record in enumerate(w.history):
        torch.testing.assert_close(record.params["net.0.weight"].grad, kept[k], rtol=0, atol=0)
        assert record.params["net.2.weight"].grad is None
    assert w.history.by_step(2).params["net.0.weight"].grad.device.type == "cpu"


@pytest.mark.parametrize("path", ["_cpu_chunk", "_device_chunk"], ids=["cpu-path", "foreach-path"])
def test_both_reduction_paths_match_reference(path: str) -> None:
    """The foreach path is what CUDA runs; here it runs on CPU tensors against the same reference."""
    g = torch.Generator().manual_seed(0)
    inf, nan = float("inf"), float("nan")
    grads = [
        torch.randn(300, generator=g),
        torch.randn(7, 5, generator=g) * 1e-3 + 2.0,
        torch.tensor([0.0, 0.0, 1.5, -2.5]),
        torch.tensor([1.0, nan, -inf, 0.0, 3.0]),
    ]
    rows = getattr(batched, path)(grads).tolist()
    for row, t in zip(rows, grads):
        norm, max_abs, total, nonzero, nonfinite, n_nan, centered = row
        ref = t.double()
        assert nonzero == int((ref != 0).sum())
        assert nonfinite == int((~torch.isfinite(ref)).sum()) and n_nan == int(torch.isnan(ref).sum())
        if torch.isfinite(ref).all():
            assert norm == pytest.approx(ref.norm().item(), rel=1e-6)
            assert max_abs == pytest.approx(ref.abs().max().item(), rel=1e-6)
            # the foreach path sums as 2 sum(g+) - sum|g|: float32 error relative to sum|g|
            assert total == pytest.approx(ref.sum().item(), rel=1e-5, abs=1e-6 * ref.abs().sum().item())
            mean = ref.mean().item()
            if centered >= 0:  # measured directly (the CPU path, where the mean dominates)
                assert centered == pytest.approx((ref - ref.mean()).norm().item(), rel=1e-5)
            else:  # derived from the sums: the CPU path only does so where that cannot cancel
                assert path == "_device_chunk" or t.numel() * mean * mean <= 0.25 * norm * norm
            if path == "_cpu_chunk":
                assert (centered >= 0) == (t.numel() * mean * mean > 0.25 * norm * norm)
        else:
            assert norm != norm or norm == inf
            assert max_abs != max_abs  # NaN propagates


def test_sum_of_squares_is_accurate_on_large_tensors() -> None:
    # all-positive squares: a single float32 accumulator (torch.dot, vector_norm) drifts by 1e-5..1e-4
    g = torch.Generator().manual_seed(1)
    x = 1000.0 + 0.01 * torch.randn(1_000_003, generator=g)
    (sq,) = batched._sum_squares([x])
    ref = torch.dot(x.double(), x.double()).item()
    assert sq.dtype == torch.float64
    assert sq.item() == pytest.approx(ref, rel=1e-8)


def test_cpu_path_stacks_same_shape_tensors_without_mixing_them() -> None:
    # many small tensors of one shape are reduced row-wise as one stacked tensor, larger ones one by one
    g = torch.Generator().manual_seed(3)
    nan, inf = float("nan"), float("inf")
    small = [torch.randn(40, 50, generator=g) * (k + 1) for k in range(6)]
    small[2][3, 4] = nan
    small[4][0, 0] = -inf
    small[5].zero_()
    small[1] += 100.0  # the mean dominates: centred norm measured directly
    large = [torch.randn(70_000, generator=g)]
    grads = [small[0], large[0], *small[1:]]
    strides = [stats.sample_stride(t.shape) for t in grads]
    rows = batched._cpu_chunk(grads, strides).tolist()
    for row, t, s in zip(rows, grads, strides):
        norm, max_abs, total, nonzero, nonfinite, n_nan, centered = row
        ref = t.double().reshape(-1)
        assert nonzero == int((ref[::s] != 0).sum())  # counted among the sampled entries
        assert nonfinite == int((~torch.isfinite(ref)).sum()) and n_nan == int(torch.isnan(ref).sum())
        if torch.isfinite(ref).all():
            assert norm == pytest.approx(ref.norm().item(), rel=1e-6)
            assert max_abs == pytest.approx(ref.abs().max().item(), rel=1e-7)
            assert total == pytest.approx(ref.sum().item(), rel=1e-5, abs=1e-6 * ref.abs().sum().item())
            if centered >= 0:
                assert centered == pytest.approx((ref - ref.mean()).norm().item(), rel=1e-5)
        else:
            assert not math.isfinite(norm)
    assert rows[2][6] >= 0  # small[1]: mean-dominated, measured directly
    assert rows[6][0] == 0 and rows[6][3] == 0  # the all-zero tensor


def test_foreach_path_counts_nonzero_among_sampled_entries() -> None:
    # what CUDA runs: the zero count of a large tensor over its sample, the other columns over all of it
    g = torch.Generator().manual_seed(4)
    grads = [torch.randn(300, 40, generator=g).relu(), torch.randn(20, generator=g).relu()]
    strides = [stats.sample_stride(t.shape) for t in grads]
    assert strides[0] > 1 and strides[1] == 1
    rows = batched._device_chunk(grads, strides).tolist()
    for row, t, s in zip(rows, grads, strides):
        ref = t.double().reshape(-1)
        assert row[3] == int((ref[::s] != 0).sum())
        assert row[0] == pytest.approx(ref.norm().item(), rel=1e-6)


def test_gradients_edited_through_data_are_read_as_they_are() -> None:
    # p.grad.data.clamp_() changes values without a new version: nothing computed earlier is reused
    import gradwatch as gw

    torch.manual_seed(0)
    model = torch.nn.Linear(300, 300)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    seen = []
    with gw.watch(model, opt) as w:
        for _ in range(2):
            opt.zero_grad()
            (model(torch.randn(8, 300)) * 50).sum().backward()
            for p in model.parameters():
                p.grad.data.clamp_(0.0, 1.0)
            seen.append(model.weight.grad.double().clone())
            opt.step()
    for record, g in zip(w.history, seen, strict=True):
        s = record.params["weight"]
        assert s.grad_mean == pytest.approx(g.mean().item(), rel=1e-6)
        assert s.grad_norm == pytest.approx(g.norm().item(), rel=1e-6)
        assert s.grad_std == pytest.approx(g.std(correction=0).item(), rel=1e-5)


def test_cpu_path_measures_mean_dominated_stacked_tensors_row_wise() -> None:
    # a stacked group where most rows are mean-dominated (their centred norm is measured on the stacked
    # copy, row-wise) and some are not; a second group whose centred norms overflow float32 (1e24 ** 2)
    g = torch.Generator().manual_seed(4)
    shifted = [3.0 + 0.01 * torch.randn(6, 7, generator=g) for _ in range(5)]
    plain = [torch.randn(6, 7, generator=g) for _ in range(2)]
    huge = [1e25 * (1.0 + 0.1 * torch.randn(9, generator=g)) for _ in range(4)]
    grads = [*shifted[:3], plain[0], *huge[:2], *shifted[3:], plain[1], *huge[2:]]
    rows = batched._cpu_chunk(grads).tolist()
    for row, t in zip(rows, grads):
        norm, max_abs, total, _, nonfinite, _, centered = row
        ref = t.double().reshape(-1)
        assert nonfinite == 0
        assert norm == pytest.approx(ref.norm().item(), rel=1e-6)
        assert max_abs == pytest.approx(ref.abs().max().item(), rel=1e-7)
        assert total == pytest.approx(ref.sum().item(), rel=1e-5)
        mean_dominates = ref.numel() * ref.mean().item() ** 2 > 0.25 * ref.norm().item() ** 2
        assert (centered >= 0) == mean_dominates
        if mean_dominates:
            assert centered == pytest.approx((ref - ref.mean()).norm().item(), rel=1e-5)
    assert sum(r[6] >= 0 for r in rows) == 9  # every shifted and every huge tensor


def _param_stats_reference(row: list[float], n: int, k: int) -> tuple:
    """ParamStats fields from one raw row, one float at a time (the documented formulas)."""
    norm, max_abs, total, nonzero, nonfinite, nan, centered, pn, un, moved = row
    scale = math.sqrt(n / k) if k else 1.0
    pn *= scale
    if n == 0 and math.isnan(pn):
        pn = 0.0
    mean = total / n if n else 0.0
    if not n:
        std = 0.0
    elif centered >= 0 or math.isinf(centered):
        std = centered / math.sqrt(n)
    elif math.isnan(centered) and not (math.isfinite(norm) and math.isfinite(mean)):
        std = math.nan
    else:
        var = norm * norm / n - mean * mean
        std = math.sqrt(var) if var > 0 else 0.0
    ratio = None
    if not un < 0:
        un *= scale
        ratio = un / pn if pn > 0 else (0.0 if un == 0 else math.inf)
    zeros = 1.0 - nonzero / k if k else 0.0
    unchanged = None if math.isnan(moved) else moved == 0
    return norm, max_abs, mean, std, zeros, int(nan), int(nonfinite - nan), pn, ratio, unchanged


def test_param_stats_derived_for_all_parameters_at_once_match_scalar_formulas() -> None:
    # raw rows with the edge values the derivation branches on: empty tensors, NaN/Inf, a measured
    # centred norm, an unmeasured (-1) or NaN update, zero weights, sampled tensors
    from gradwatch.records import StepRecord

    nan, inf = math.nan, math.inf
    rows = [
        [3.0, 1.0, 0.5, 8.0, 0, 0, -1.0, 2.0, 0.1, 0.0],
        [3.0, 1.0, 30.0, 8.0, 0, 0, 0.25, 2.0, -1.0, nan],
        [nan, nan, nan, 5.0, 3, 2, nan, 2.0, nan, 1.0],
        [inf, inf, inf, 5.0, 1, 0, nan, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0, 0, -1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0, 0, -1.0, nan, -1.0, nan],  # empty
        [math.sqrt(3.0), 1.0, 3.0000001, 3.0, 0, 0, -1.0, 0.0, 0.5, 2.0],  # var < 0 by rounding; pn = 0
        [5.0, 2.0, 1.0, 600.0, 0, 0, inf, 7.0, 0.3, 0.0],
    ]
    numels = [10, 10, 10, 10, 10, 0, 3, 5000]
    sizes = [10, 10, 10, 10, 10, 0, 3, 1000]
    names = [f"p{i}" for i in range(len(rows))]
    part = (list(range(len(rows))), 0, torch.tensor(rows, dtype=torch.float64))
    record = StepRecord(
        step=0,
        names=names,
        layer_of=names,
        numels=numels,
        parts=[part],
        has_grad=[True] * len(rows),
        sample_sizes=sizes,
    )
    for name, row, n, k in zip(names, rows, numels, sizes):
        s = record.params[name]
        got = (s.grad_norm, s.grad_max_abs, s.grad_mean, s.grad_std, s.zero_fraction, s.nan_count)
        got += (s.inf_count, s.param_norm, s.update_ratio, s.weights_unchanged)
        ref = _param_stats_reference(row, n, k)
        for field, a, b in zip(
            ("norm", "max", "mean", "std", "zeros", "nan", "inf", "pn", "ratio", "same"), got, ref
        ):
            if isinstance(b, float) and math.isnan(b):
                assert isinstance(a, float) and math.isnan(a), (name, field, a)
            else:
                assert a == b and type(a) is type(b), (name, field, a, b)


@pytest.mark.parametrize("with_optimizer", [True, False], ids=["optimizer", "manual-update"])
def test_channels_last_layers_of_one_shape_match_autograd(with_optimizer: bool) -> None:
    # four channels-last conv weights of one small shape are reduced stacked (one row each, in memory
    # order), at the end of the backward pass (finite check) and at the boundary (statistics)
    torch.manual_seed(8)
    convs = [nn.Conv2d(8, 8, 3, padding=1) for _ in range(4)]
    model = nn.Sequential(*[m for c in convs for m in (c, nn.Tanh())]).to(memory_format=torch.channels_last)
    assert not convs[0].weight.is_contiguous()
    opt = torch.optim.SGD(model.parameters(), lr=0.05) if with_optimizer else None
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    grads = []
    with gw.watch(model, opt, on_finding="ignore") as w:
        for _ in range(3):
            model.zero_grad()
            (model(x) - 0.3).square().mean().backward()
            grads.append({n: p.grad.detach().double().clone() for n, p in model.named_parameters()})
            if opt is not None:
                opt.step()
            else:
                with torch.no_grad():
                    for p in model.parameters():
                        p -= 0.05 * p.grad
                w.step()
    assert [r.step for r in w.history] == [0, 1, 2]
    for record, ref in zip(w.history, grads, strict=True):
        for name, g in ref.items():
            s = record.params[name]
            assert s.grad_norm == pytest.approx(g.norm().item(), rel=1e-6), name
            assert s.grad_max_abs == pytest.approx(g.abs().max().item(), rel=1e-6), name
            assert s.grad_mean == pytest.approx(g.mean().item(), rel=1e-5, abs=1e-9), name
            assert s.grad_std == pytest.approx(g.std(correction=0).item(), rel=1e-5), name
            assert s.zero_fraction == (g == 0).double().mean().item(), name


def test_complex_parameters_count_real_and_imaginary_parts_as_entries() -> None:
    # statistics of the torch.view_as_real view: mean, std and zero fraction over 2n real entries
    torch.manual_seed(11)
    small = nn.Parameter(torch.randn(3, 3, dtype=torch.complex64))
    large = nn.Parameter(torch.randn(40, 40, dtype=torch.complex64))  # 3200 real entries: sampled
    opt = torch.optim.SGD([small, large], lr=0.1)
    with gw.watch({"small": small, "large": large}, opt, on_finding="ignore") as w:
        opt.zero_grad()
        ((small.real * 3 + 100).sum() + (large * large.conj()).real.sum()).backward()
        grads = {n: torch.view_as_real(p.grad).double() for n, p in (("small", small), ("large", large))}
        opt.step()
    s = w.history[0].params
    for name, g in grads.items():
        assert s[name].grad_norm == pytest.approx(g.norm().item(), rel=1e-6)
        assert s[name].grad_mean == pytest.approx(g.mean().item(), rel=1e-5, abs=1e-9)
        assert s[name].grad_std == pytest.approx(g.std(correction=0).item(), rel=1e-5)
    assert s["small"].zero_fraction == 0.5  # the imaginary parts of small's gradient are all 0
    assert 0.0 <= s["large"].zero_fraction <= 1.0


@pytest.mark.parametrize("count", [1, 6], ids=["alone", "stacked"])
@pytest.mark.parametrize("shift", [0.0, 1.0], ids=["centred", "mean-dominated"])
def test_gradients_below_the_square_root_of_the_smallest_float32_have_nonzero_norms(
    count: int, shift: float
) -> None:
    # entries of 1e-30: their float32 squares underflow to 0, so the norm and std are taken in float64
    g = torch.Generator().manual_seed(12)
    grads = [1e-30 * (shift + torch.randn(5, 7, generator=g)) for _ in range(count)]
    rows = batched._cpu_chunk(grads).tolist()
    for row, t in zip(rows, grads):
        norm, max_abs, total, _, _, _, centered = row
        ref = t.double().reshape(-1)
        assert norm == pytest.approx(ref.norm().item(), rel=1e-6, abs=0)
        assert max_abs == pytest.approx(ref.abs().max().item(), rel=1e-6, abs=0)
        if centered >= 0:
            assert centered == pytest.approx((ref - ref.mean()).norm().item(), rel=1e-5, abs=0)
        else:  # derived from the sums
            n = ref.numel()
            std = math.sqrt(max(norm * norm / n - (total / n) ** 2, 0.0))
            assert std == pytest.approx(ref.std(correction=0).item(), rel=1e-4, abs=0)


def test_the_spread_of_mean_dominated_and_constant_gradients(cpu_path: str) -> None:
    """||g - mean|| where the mean dominates (1e4 + 1e-3 noise, 300k float32 entries) and for constant
    gradients (exactly 0): a float32 mean is off by up to half an ulp, which made the torch path's
    spread 40 % too large and a constant gradient's nonzero; every path is held to float64 here."""
    from gradwatch.stats import reference

    g = torch.Generator().manual_seed(0)
    tensors = [1e4 + 1e-3 * torch.randn(300_000, generator=g)] + [torch.full((8, 8), 0.37) for _ in range(8)]
    strides = [stats.sample_stride(t.shape) for t in tensors]
    rows = {
        i: row for pos, block in stats.grad_stats(tensors, strides) for i, row in zip(pos, block.tolist())
    }
    for i, t in enumerate(tensors):
        norm, _, total, _, _, _, centered = rows[i]
        n = t.numel()
        std = (
            centered / math.sqrt(n)
            if centered >= 0
            else math.sqrt(max(norm * norm / n - (total / n) ** 2, 0))
        )
        expected = reference.raw_stats(t)[6] / math.sqrt(n)
        assert std == pytest.approx(expected, rel=1e-6, abs=1e-12), (cpu_path, i)
