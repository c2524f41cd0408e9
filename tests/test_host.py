"""The CPU path for small tensors (gradwatch/stats/host.py) against float64 references and the torch path."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch import compat, stats
from gradwatch.stats import host, reference

#: Whether the compiled pass was built (setup.py builds it where a C compiler exists).
BUILT = host._native is not None


@pytest.fixture(autouse=True, params=["native", "numpy"])
def host_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs on both CPU paths: the compiled pass and the numpy calls."""
    if request.param == "native" and not BUILT:
        pytest.skip("gradwatch.stats._native was not built (no C compiler at install)")
    monkeypatch.setattr(host, "NATIVE", request.param == "native")
    return str(request.param)


def check(raw: torch.Tensor, tensors: list[torch.Tensor], strides: list[int], rel: float) -> None:
    assert raw.shape == (len(tensors), 7) and raw.dtype == torch.float64
    for row, t, s in zip(raw.tolist(), tensors, strides):
        ref = reference.raw_stats(t, s)
        norm, max_abs, total, nonzero, nonfinite, nan, centered = row
        assert (nonzero, nonfinite, nan) == (ref[3], ref[4], ref[5])
        if ref[4]:  # NaN/Inf propagate
            assert not math.isfinite(norm) and not math.isfinite(max_abs) and math.isnan(centered)
            continue
        assert norm == pytest.approx(ref[0], rel=rel, abs=0.0)
        assert max_abs == ref[1]
        assert total == pytest.approx(ref[2], rel=rel, abs=1e-12 * ref[0])
        if centered >= 0:  # measured directly (else derived on the host from norm and sum)
            assert centered == pytest.approx(ref[6], rel=rel, abs=1e-12 * ref[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_grad_stats_match_float64_reference(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    shapes = [(128, 64), (128,), (64, 128), (64,), (10, 64), (10,), (3, 5, 7, 11), (1,)]
    tensors = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    tensors[3].zero_()
    tensors[5] += 1e4  # the mean dominates: the centred norm is measured directly
    tensors[2][::3] = 0.0
    strides = [stats.sample_stride(t.shape) for t in tensors]
    assert max(strides) > 1  # some nonzero counts are among sampled entries only
    raw, extremes = host.grad_stats(tensors, strides, extremes=True)
    check(raw, tensors, strides, rel=1e-12)
    assert raw[5, 6] >= 0 and raw[0, 6] == -1  # measured where the mean dominates, derived elsewhere
    assert extremes is not None
    for k, t in enumerate(tensors):
        assert extremes[:, k].tolist() == [t.double().min().item(), t.double().max().item()]


def test_grad_stats_nonfinite_complex_and_strided_layouts() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(40, 30, generator=g)
    a[3, 4], a[5, 6], a[7, 8] = math.nan, math.inf, -math.inf
    b = torch.randn(8, 6, 5, 5, generator=g).to(memory_format=torch.channels_last)  # 1200: sampled
    c = torch.randn(20, 30, generator=g).t()  # transposed
    d = torch.randn(17, generator=g, dtype=torch.complex64)
    e = torch.full((33,), math.nan)
    tensors = [a, b, c, d, e]
    strides = [stats.sample_stride(t.shape) for t in tensors]
    raw, _ = host.grad_stats(tensors, strides)
    check(raw, tensors, strides, rel=1e-12)
    assert raw[0, 4:6].tolist() == [3.0, 1.0] and raw[4, 4:6].tolist() == [33.0, 33.0]


def test_float32_extremes_and_float64_rescaling() -> None:
    # float32 entries near 1e-30 and 1e30: float64 squares neither underflow nor overflow; float64
    # entries near 1e-200 and 1e200 are rescaled by max |g|
    g = torch.Generator().manual_seed(2)
    tensors = [
        torch.randn(500, generator=g) * 1e-30,
        torch.randn(500, generator=g) * 1e30,
        torch.randn(500, generator=g, dtype=torch.float64) * 1e-200,
        torch.randn(500, generator=g, dtype=torch.float64) * 1e200,
        torch.full((50,), 1e-200, dtype=torch.float64)
        + torch.randn(50, generator=g, dtype=torch.float64) * 1e-205,
    ]
    raw, _ = host.grad_stats(tensors, [1] * 5)
    for row, t in zip(raw.tolist(), tensors):
        x = t.double()
        scale = x.abs().max()
        ref_norm = (scale * (x / scale).norm()).item()
        assert row[0] == pytest.approx(ref_norm, rel=1e-12)
        assert row[6] == -1 or row[6] == pytest.approx(
            (scale * ((x - x.mean()) / scale).norm()).item(), rel=1e-9
        )
    assert raw[4, 6] > 0  # the mean-dominated float64 one: measured after rescaling, not 0


def test_all_finite_and_the_deferred_flag() -> None:
    a, b = torch.randn(100), torch.randn(7, 9).to(torch.bfloat16)
    assert host.all_finite([a, b]) and host.all_finite([a * 1e30, torch.full((3,), 3e38)])
    for bad in (math.nan, math.inf, -math.inf):
        x = a.clone()
        x[17] = bad
        assert not host.all_finite([x, b]) and not host.all_finite(
            [a, b.index_fill(0, torch.tensor([2]), bad)]
        )
    x = a.clone()
    x[0] = math.nan
    flag = host.DeferredFinite([x])
    x.zero_()  # written in place after the flag was made (zero_grad(set_to_none=False)): no evidence left
    assert compat.version_counter(x) > 0 and bool(flag) is True
    y = a.clone()
    y[1] = math.inf
    late = host.DeferredFinite([y])
    assert not bool(late) and late._tensors == []  # computed on first read, references dropped
    assert not bool(late)  # and kept


@pytest.mark.parametrize("case", ["few small", "with a None", "one too large", "many"])
def test_stats_all_finite_flags_agree_with_torch_isfinite(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "MAX_TENSOR", 1000)
    g = torch.Generator().manual_seed(5)
    count = 70 if case == "many" else 4  # (more than a few tensors: the chunked path)
    tensors: list[torch.Tensor | None] = [torch.randn(30, generator=g) for _ in range(count)]
    if case == "with a None":
        tensors[1] = None
    if case == "one too large":
        tensors[2] = torch.randn(2000, generator=g)  # not a host tensor: a 0-dim flag of its own
    few = case == "few small"
    for bad in (None, math.nan, math.inf):
        ts = [t.clone() if t is not None else None for t in tensors]
        if bad is not None:
            ts[-1][3] = bad  # type: ignore[index]
        flags = stats.all_finite(ts)
        assert (len(flags) == 1) if few else (len(flags) >= 1)
        expected = all(bool(torch.isfinite(t).all()) for t in ts if t is not None)
        assert all(bool(f) for f in flags) == expected


def test_stats_dispatch_sends_only_small_cpu_tensors_to_the_host_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(host, "MAX_TENSOR", 1000)
    monkeypatch.setattr(host, "MAX_GROUP", 1500)
    tensors = [torch.randn(900), torch.randn(2000), None, torch.randn(900), torch.randn(0), torch.randn(10)]
    chunks, rest = stats._host_chunks(tensors)
    assert chunks == [[0], [3, 5]]  # at most MAX_GROUP entries per copy
    assert [t is not None for t in rest] == [False, True, False, False, True, False]
    blocks = stats.grad_stats(tensors)
    assert sorted(i for pos, _ in blocks for i in pos) == [0, 1, 3, 5]


def _train(model: nn.Module, steps: int, seed: int) -> list[gw.StepRecord]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    with gw.watch(model, opt, on_finding="ignore") as w:
        for _ in range(steps):
            x = torch.randn(16, 12, generator=g)
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    return list(w.history)


def test_watcher_records_match_between_host_and_torch_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(3)
    base = nn.Sequential(nn.Linear(12, 40), nn.Tanh(), nn.Linear(40, 1200), nn.Tanh(), nn.Linear(1200, 3))
    records = {}
    for path in ("host", "torch"):
        monkeypatch.setattr(host, "ENABLED", path == "host")
        records[path] = _train(copy.deepcopy(base), 6, seed=4)
    for a, b in zip(records["host"], records["torch"], strict=True):
        for name, s in a.params.items():
            t = b.params[name]
            for field in ("grad_norm", "grad_max_abs", "grad_mean", "grad_std", "param_norm", "update_ratio"):
                x, y = getattr(s, field), getattr(t, field)
                assert x == pytest.approx(y, rel=2e-5, abs=1e-9), (a.step, name, field)
            assert (s.zero_fraction, s.nan_count, s.inf_count) == (t.zero_fraction, t.nan_count, t.inf_count)


@pytest.mark.parametrize("host_path", ["numpy"], indirect=True)
def test_the_compiled_pass_is_built_where_a_compiler_exists(host_path: str) -> None:
    """``optional=True`` in setup.py hides a failed build: where a C compiler exists, it must be built."""
    import shutil
    import sys

    if sys.platform == "win32" or not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler here: the numpy path is the one in use")
    assert BUILT, (
        "gradwatch.stats._native is missing although a C compiler is here: rebuild with `rm -rf build && "
        "pip install -v -e .` and read why it failed (the Python headers, python3-dev, are needed too)"
    )


@pytest.mark.parametrize("host_path", ["native"], indirect=True)  # (it switches between the two itself)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
def test_both_paths_give_the_same_columns_and_extremes(dtype: torch.dtype, host_path: str) -> None:
    """The compiled pass against the numpy calls entry for entry, on what a training run hands them."""
    g = torch.Generator().manual_seed(7)
    tensors = [
        torch.randn(300, 40, generator=g).to(dtype),  # 12000 entries: sampled nonzero count
        torch.randn(40, generator=g).to(dtype) + 100,  # the mean dominates: centred norm measured
        torch.zeros(33, dtype=dtype),
        torch.randn(6, 7, generator=g).to(dtype).t(),  # not contiguous: memory order
        torch.randn(64, generator=g).to(dtype)[::3],  # a strided 1-D view
        torch.tensor(2.5, dtype=dtype),  # 0-dim
    ]
    tensors[0][5, :7] = 0
    strides = [stats.sample_stride(t.shape) for t in tensors]
    values = torch.randn(sum(t.numel() for t in tensors), generator=g, dtype=torch.float64).numpy()
    value_starts = host.starts(tensors)
    out = {}
    for native in (True, False):
        host.NATIVE = native
        out[native] = host.grad_stats(tensors, strides, extremes=True, norms_of=(values, value_starts))
    host.NATIVE = True
    (a, ea), (b, eb) = out[True], out[False]
    assert a.shape == b.shape == (len(tensors), 8)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(ea, eb, rtol=0.0, atol=0.0)
    before = host.gather(tensors)
    prev = before + np.random.default_rng(0).standard_normal(before.shape)
    now = [t * 2 for t in tensors]
    u_native = host.update_and_change(now, before, prev, value_starts)
    host.NATIVE = False
    u_numpy = host.update_and_change(now, before, prev, value_starts)
    host.NATIVE = True
    np.testing.assert_allclose(u_native, u_numpy, rtol=1e-12, atol=0.0)
    np.testing.assert_array_equal(
        host.gather(tensors), np.concatenate([host._flat(t).double().numpy() for t in tensors])
    )


@pytest.mark.parametrize("host_path", ["native"], indirect=True)
def test_the_compiled_pass_rejects_what_it_cannot_read(host_path: str) -> None:
    """Bad buffers are refused with a clear error (the Python side never sends them: a safety net)."""
    native = host._native
    raw = np.empty((1, 7))
    with pytest.raises(TypeError, match="float32/float64/float16"):
        native.grad_stats([np.arange(4)], [1], raw, None, None, None)  # integers
    with pytest.raises(ValueError, match="shape"):
        native.grad_stats([np.ones(4)], [1], np.empty((1, 6)), None, None, None)
    with pytest.raises(ValueError, match="stride"):
        native.grad_stats([np.ones(4)], [0], raw, None, None, None)
    with pytest.raises(ValueError, match="one stride per array"):
        native.grad_stats([np.ones(4)], [1, 1], raw, None, None, None)
    with pytest.raises(ValueError, match="out"):
        native.gather([np.ones(4)], np.empty(3))
    with pytest.raises(ValueError, match="out"):
        native.gather([np.ones(4)], np.empty(5))  # (exactly as long: a longer one is a caller's bug)
    with pytest.raises(ValueError, match="before"):  # segments misaligned with the samples
        native.update_and_change([np.ones(4)], np.ones(5), np.ones(5), np.empty((1, 2)))


@pytest.mark.parametrize("step", [True, False], ids=["training", "probe-without-step"])
def test_deferred_finite_flags_do_not_keep_old_gradients_alive(step: bool) -> None:
    """The finite flag of a backward pass keeps its gradients until read or the pass is used (1 step)."""
    import gc
    import weakref

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 300), nn.Tanh(), nn.Linear(300, 1))  # 90000 entries: large
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    old: list[weakref.ref[torch.Tensor]] = []
    with gw.watch(model, opt, on_finding="ignore"):
        for _ in range(12):
            opt.zero_grad(set_to_none=True)
            model(torch.randn(8, 300)).square().mean().backward()
            old.append(weakref.ref(model[0].weight.grad))  # type: ignore[arg-type]
            if step:
                opt.step()
        gc.collect()
        alive = sum(r() is not None for r in old)
    # the current gradient, and in the probe loop at most the previous pass's until the next one resets it
    assert alive <= (1 if step else 2), alive


def test_centred_norm_of_a_mean_dominated_tensor_is_right_to_1e_9() -> None:
    """The direct second pass: 1 + 1e-13 noise over 65536 float64 entries, against an exact sum (fsum).

    (The mean's own rounding, n * 1e-16 relative for a naive sum, would be 1e-6 of this centred norm;
    the corrected two-pass algorithm cancels it.)
    """
    import math

    g = torch.Generator().manual_seed(0)
    for noise in (1e-13, 1e-10):
        t = 1 + noise * torch.randn(65536, generator=g, dtype=torch.float64)
        x = t.tolist()
        mean = math.fsum(x) / len(x)
        exact = math.sqrt(math.fsum((v - mean) ** 2 for v in x))
        raw, _ = host.grad_stats([t], [1])
        assert raw[0, 6].item() == pytest.approx(exact, rel=1e-9)
    constant = torch.full((65536,), 0.1, dtype=torch.float64)
    assert host.grad_stats([constant], [1])[0][0, 6].item() == pytest.approx(0.0, abs=1e-14)


def test_max_abs_of_an_all_zero_gradient_is_plus_zero() -> None:
    raw, _ = host.grad_stats([torch.zeros(7), torch.zeros(3, 2, dtype=torch.float64)], [1, 1])
    assert [math.copysign(1.0, v) for v in raw[:, 1].tolist()] == [1.0, 1.0]


@pytest.mark.parametrize("host_path", ["native"], indirect=True)
def test_the_unchecked_one_call_path_refuses_what_it_cannot_read(host_path: str) -> None:
    """native_grad_and_norms reads the gradients without checking them first: anything it cannot read
    must make it return None (the caller's general path), never a wrong row."""
    g = torch.Generator().manual_seed(3)
    good = [torch.randn(5, 4, generator=g), torch.randn(4, generator=g)]
    values = torch.randn(24, generator=g, dtype=torch.float64).numpy()
    starts = host.starts(good)
    raw = host.native_grad_and_norms(good, [1, 1], values, starts)
    host.NATIVE = False
    expected, _ = host.grad_stats(good, [1, 1], norms_of=(values, starts))
    host.NATIVE = True
    assert raw is not None
    torch.testing.assert_close(raw, expected, rtol=1e-12, atol=0.0)
    odd = {
        "None": None,
        "bf16": torch.randn(4, generator=g).to(torch.bfloat16),
        "requires grad": torch.randn(4, generator=g, requires_grad=True),
        "complex": torch.randn(2, generator=g, dtype=torch.complex64),
        "empty": torch.randn(0),
        "transposed": torch.randn(2, 2, generator=g).t(),
        "sparse": torch.randn(4, generator=g).to_sparse(),
        "meta": torch.empty(4, device="meta"),
    }
    for name, t in odd.items():
        assert host.native_grad_and_norms([good[0], t], [1, 1], values, starts) is None, name
