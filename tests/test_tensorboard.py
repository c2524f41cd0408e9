"""TensorBoard output of gradwatch, read back with TensorBoard's own readers (DESIGN section 3).

Every check compares what gradwatch wrote with an independent reference computed in the test: the
``.grad``/parameter tensors cloned by hand inside the training loop, ``torch.histc``/``numpy.histogram``
for bucket counts, and TensorBoard's ``EventAccumulator`` (and, in one test, a real TensorBoard server)
for reading the event files.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import half_dtypes

import gradwatch
from gradwatch import at_steps, every
from gradwatch.stats import histograms

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing import event_accumulator
from torch.utils.tensorboard import SummaryWriter

NAN, INF = math.nan, math.inf

#: Scalar values travel as float32 (``Summary.Value.simple_value``); references are float64.
SCALAR_RTOL = 1e-5
#: Histogram min/max/sum/sum_squares travel as float64 (``HistogramProto``); gradwatch sums in a
#: different order than the reference, so allow a few float64 ulps of accumulated rounding.
HIST_RTOL, HIST_ATOL = 1e-12, 1e-15


# --------------------------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def no_gradwatch_errors(caplog):
    """gradwatch swallows its own failures (logs them and stops recording): make them fail the test."""
    caplog.set_level("WARNING", logger="gradwatch")
    yield
    errors = [r for r in caplog.records if r.name == "gradwatch" and r.levelname in ("ERROR", "CRITICAL")]
    assert not errors, [r.getMessage() for r in errors]


def read_events(logdir: Path) -> event_accumulator.EventAccumulator:
    """Load every event under ``logdir`` (size guidance 0 = keep all)."""
    acc = event_accumulator.EventAccumulator(
        str(logdir),
        size_guidance={
            event_accumulator.SCALARS: 0,
            event_accumulator.HISTOGRAMS: 0,
            event_accumulator.TENSORS: 0,
            event_accumulator.COMPRESSED_HISTOGRAMS: 0,
        },
    )
    acc.Reload()
    return acc


def scalars(acc: event_accumulator.EventAccumulator, tag: str) -> dict[int, float]:
    events = acc.Scalars(tag)
    steps = [e.step for e in events]
    assert len(steps) == len(set(steps)), f"{tag}: a step was written twice: {steps}"
    return {e.step: e.value for e in events}


def hists(acc: event_accumulator.EventAccumulator, tag: str) -> dict[int, object]:
    events = acc.Histograms(tag)
    steps = [e.step for e in events]
    assert len(steps) == len(set(steps)), f"{tag}: a step was written twice: {steps}"
    return {e.step: e.histogram_value for e in events}


def check_histogram(hv: object, values: torch.Tensor, bins: int, where: str) -> None:
    """``hv`` (a HistogramValue) describes the finite entries of ``values`` with ``bins`` buckets."""
    # binned in the tensor's own dtype (bf16/fp16 upcast to float32), as torch.histc on it would
    x = values.detach().reshape(-1)
    x = x.double() if x.dtype == torch.float64 else x.float()
    finite = x[torch.isfinite(x)]
    if finite.numel() and not torch.isfinite(finite.max() - finite.min()):  # range overflows float32
        x, finite = x.double(), finite.double()
    n = finite.numel()
    assert n > 0, where
    lo, hi = finite.min().item(), finite.max().item()
    assert hv.num == n, where
    assert sum(hv.bucket) == n, where
    assert len(hv.bucket) == len(hv.bucket_limit) == bins, where
    assert hv.min == lo, where  # exact: both are the float64 value of one entry
    assert hv.max == hi, where
    # sums accumulated in the tensor's dtype: float32 rounding, relative to the sum of |x|
    f64 = finite.double()
    rel = HIST_RTOL if x.dtype == torch.float64 else 1e-6
    assert hv.sum == pytest.approx(f64.sum().item(), rel=rel, abs=rel * f64.abs().sum().item()), where
    assert hv.sum_squares == pytest.approx((f64 * f64).sum().item(), rel=rel, abs=HIST_ATOL), where
    # torch.histc's rule, exactly: bucket floor((x - lo) * bins / (hi - lo)), the maximum in the last one
    if lo == hi:  # a constant tensor: numpy's range [v - 0.5, v + 0.5], everything in the middle bucket
        ref = torch.zeros(bins)
        ref[bins // 2] = n
        edges = np.linspace(lo - 0.5, hi + 0.5, bins + 1)[1:]
    else:
        ref = torch.histc(finite, bins, lo, hi)
        edges = np.linspace(lo, hi, bins + 1)[1:]
    assert list(hv.bucket) == ref.tolist(), where
    np.testing.assert_allclose(hv.bucket_limit, edges, rtol=1e-12, atol=1e-15 * max(1.0, abs(lo), abs(hi)))


def make_mlp(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).to(dtype)


def train(model, opt, steps, *, dtype=torch.float32, seed=1, after_step=None):
    """A plain training loop; returns, per step, the ``.grad`` and the parameters before/after ``step()``."""
    gen = torch.Generator().manual_seed(seed)
    grads, before, after = [], [], []
    for i in range(steps):
        opt.zero_grad()
        x = torch.randn(16, 4, generator=gen).to(dtype)
        model(x).float().pow(2).mean().backward()
        grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})
        before.append({n: p.detach().clone() for n, p in model.named_parameters()})
        opt.step()
        after.append({n: p.detach().clone() for n, p in model.named_parameters()})
        if after_step is not None:
            after_step(i)
    return grads, before, after


def norm(t: torch.Tensor) -> float:
    return torch.linalg.vector_norm(t.double()).item()


# ------------------------------------------------------------------------------ 1. tags, steps, values
@pytest.mark.parametrize(
    ("histogram_every", "hist_steps"),
    # the last recorded step (6) always gets its histograms at close, unless histograms are off
    [(3, [0, 3, 6]), (1, list(range(7))), (at_steps(1, 4), [1, 4, 6]), (None, [])],
    ids=["every-3", "every-step", "at-steps-1-4", "never"],
)
def test_training_loop_tags_steps_and_values(tmp_path, histogram_every, hist_steps):
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    names = [n for n, _ in model.named_parameters()]
    with gradwatch.watch(model, opt, logdir=tmp_path, histogram_every=histogram_every) as w:
        grads, before, after = train(model, opt, 7)
    steps = [r.step for r in w.history]
    assert steps == list(range(7))

    acc = read_events(tmp_path)
    tags = acc.Tags()
    design_scalars = {"grad_norm/total"} | {f"{k}/{n}" for n in names for k in ("grad_norm", "update_ratio")}
    # documented additions of the sink: per-layer gradient norms and update-to-weight ratios
    extra_scalars = {"layer_grad_norm/0", "layer_grad_norm/2", "layer_update_ratio/0", "layer_update_ratio/2"}
    assert set(tags["scalars"]) == design_scalars | extra_scalars
    expected_hists = {f"{k}/{n}" for n in names for k in ("gradients", "parameters")} if hist_steps else set()
    assert set(tags["histograms"]) == expected_hists

    for tag in tags["scalars"]:
        assert sorted(scalars(acc, tag)) == steps, tag
    for tag in tags["histograms"]:
        assert sorted(hists(acc, tag)) == hist_steps, tag

    total = scalars(acc, "grad_norm/total")
    for s in steps:
        for n in names:
            ref = norm(grads[s][n])
            assert scalars(acc, f"grad_norm/{n}")[s] == pytest.approx(ref, rel=SCALAR_RTOL), (n, s)
            ratio = norm(after[s][n] - before[s][n]) / norm(before[s][n])
            assert scalars(acc, f"update_ratio/{n}")[s] == pytest.approx(ratio, rel=SCALAR_RTOL), (n, s)
        ref_total = math.sqrt(sum(norm(g) ** 2 for g in grads[s].values()))
        assert total[s] == pytest.approx(ref_total, rel=SCALAR_RTOL), s
        layer0 = math.hypot(norm(grads[s]["0.weight"]), norm(grads[s]["0.bias"]))
        assert scalars(acc, "layer_grad_norm/0")[s] == pytest.approx(layer0, rel=SCALAR_RTOL), s
        # the layer's update ratio: its parameters taken as one vector
        moved = torch.cat([(after[s][n] - before[s][n]).reshape(-1) for n in ("0.weight", "0.bias")])
        size = torch.cat([before[s][n].reshape(-1) for n in ("0.weight", "0.bias")])
        ratio0 = norm(moved) / norm(size)
        assert scalars(acc, "layer_update_ratio/0")[s] == pytest.approx(ratio0, rel=SCALAR_RTOL), s


def test_each_event_file_gradwatch_opens_has_the_overview_layout(tmp_path):
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradwatch.watch(model, opt, logdir=tmp_path):
        train(model, opt, 2)
    acc = read_events(tmp_path)
    [event] = acc.Tensors(metadata.CONFIG_SUMMARY_TAG)
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert charts["gradient norm per layer"] == ["layer_grad_norm/.*"]
    assert charts["update-to-weight ratio per layer (about 1e-3 is healthy)"] == ["layer_update_ratio/.*"]
    assert charts["total gradient norm (and before clipping)"] == [
        "grad_norm/total",
        "grad_norm/total_unclipped",
    ]


# --------------------------------------------------------------------------------- 2. histogram values
@pytest.mark.parametrize("bins", [1, 7, 30], ids=lambda b: f"bins-{b}")
def test_gradient_and_parameter_histograms_match_histc(tmp_path, bins):
    model = make_mlp(seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with gradwatch.watch(model, opt, logdir=tmp_path, histogram_every=every(2), histogram_bins=bins):
        grads, _, after = train(model, opt, 5, seed=4)
    acc = read_events(tmp_path)
    for n, _ in model.named_parameters():
        g_hist, p_hist = hists(acc, f"gradients/{n}"), hists(acc, f"parameters/{n}")
        assert sorted(g_hist) == sorted(p_hist) == [0, 2, 4]
        for s in (0, 2, 4):
            # gradients: .grad as the optimizer saw it (cloned before opt.step())
            check_histogram(g_hist[s], grads[s][n], bins, f"gradients/{n} step {s}")
            # parameters: the weights at the end of the step, after the optimizer's update
            # (unlike ParamStats.param_norm, which is read before the update)
            check_histogram(p_hist[s], after[s][n], bins, f"parameters/{n} step {s}")


def _cases() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    mixed = torch.randn(50, generator=g)
    mixed[[3, 10, 11]] = torch.tensor([NAN, INF, -INF])
    return {
        "randn-f32": torch.randn(1000, generator=g),
        "randn-f64-2d": torch.randn(13, 17, generator=g, dtype=torch.float64),
        "ties-on-edges": torch.arange(-30, 31, dtype=torch.float32) / 30,  # many values exactly on edges
        "small-ints": torch.randint(-3, 4, (200,), generator=g).float(),
        "constant": torch.full((9,), 2.5),
        "constant-f64": torch.full((5,), 0.1, dtype=torch.float64),  # (0.1 - 0.5) + 0.5 != 0.1
        "single": torch.tensor([-4.0]),
        "nan-inf-mixed": mixed,
        "only-inf-and-one-value": torch.tensor([INF, -INF, 1.5, INF]),
        "bf16": torch.randn(300, generator=g).to(torch.bfloat16),
        "fp16": (torch.randn(300, generator=g) * 100).to(torch.float16),
        "huge-f32": torch.tensor([3e38, -3e38, 1.0, 0.0]),
        "constant-large-f32": torch.full((7,), 3e7),  # v +- 0.5 rounds back to v in float32
        "constant-huge-f32": torch.full((3,), -1e30),
    }


CASES = _cases()


@pytest.fixture(params=["histc", "buckets", "buckets-paired"])
def binning(request, monkeypatch):
    """Run a test through each way ``histograms`` counts on the CPU: ``torch.histc`` itself (small
    tensors), the bucket passes, and the bucket passes with int8 indices counted two at a time."""
    from gradwatch.stats import binning as module

    if request.param != "histc":
        monkeypatch.setattr(module, "_HISTC_MAX", 0)
    if request.param == "buckets-paired":
        monkeypatch.setattr(module, "_PAIR_MIN", 2)
    return request.param


@pytest.mark.parametrize("bins", [1, 2, 30], ids=lambda b: f"bins-{b}")
@pytest.mark.parametrize("case", list(CASES), ids=str)
def test_histograms_function_matches_torch_histc(case, bins, binning):
    x = CASES[case]
    row = histograms([x], bins)
    assert row.shape == (1, 5 + 2 * bins) and row.dtype == torch.float64
    lo, hi, num, total, sum_sq = row[0, :5].tolist()
    limits, counts = row[0, 5 : 5 + bins], row[0, 5 + bins :]
    hv = type("HV", (), {})()
    hv.min, hv.max, hv.num, hv.sum, hv.sum_squares = lo, hi, num, total, sum_sq
    hv.bucket_limit, hv.bucket = limits.tolist(), counts.tolist()
    check_histogram(hv, x, bins, case)


@pytest.mark.parametrize("case", ["randn-f32", "randn-f64-2d", "bf16", "nan-inf-mixed"], ids=str)
def test_histograms_function_matches_numpy_histogram(case, binning):
    # numpy.histogram decides bucket membership by comparing with its edge array, torch.histc (and
    # gradwatch) by floor((x - lo) * bins / (hi - lo)); the two rules disagree only for values within
    # an ulp of an inner edge (see the "ties-on-edges" case above, where gradwatch follows histc).
    # These cases are continuous random data, where no value lies on an inner edge, so counts must
    # agree exactly.
    bins = 30
    x = CASES[case].double().reshape(-1)
    finite = x[torch.isfinite(x)].numpy()
    ref_counts, ref_edges = np.histogram(finite, bins)
    row = histograms([CASES[case]], bins)[0]
    np.testing.assert_array_equal(row[5 + bins :].numpy(), ref_counts)
    np.testing.assert_allclose(row[5 : 5 + bins].numpy(), ref_edges[1:], rtol=1e-12, atol=1e-15)
    assert row[2].item() == finite.size
    # sums accumulated in float32 (the tensors' compute dtype): rounding relative to the sum of |x|
    np.testing.assert_allclose(row[3].item(), finite.sum(), rtol=1e-6, atol=1e-6 * np.abs(finite).sum())
    np.testing.assert_allclose(row[4].item(), (finite * finite).sum(), rtol=1e-6)


@pytest.mark.parametrize(
    ("values", "bins"),
    [
        (torch.arange(0, 101, dtype=torch.float64) / 10, 100),
        (torch.linspace(-0.3, 0.7, 61, dtype=torch.float64), 30),
        (torch.linspace(0.0, 1.0, 31, dtype=torch.float64), 10),
    ],
    ids=["tenths-100-bins", "linspace-61-30-bins", "linspace-31-10-bins"],
)
def test_histograms_values_on_bucket_edges_follow_torch_histc(values, bins, binning):
    # Values that sit on inner bucket edges. gradwatch bins as torch.histc does (the DESIGN names
    # torch.histc as the device-side binning), i.e. floor((x - lo) * bins / (hi - lo)) in float64,
    # so counts must match histc exactly. numpy.histogram compares against its edge array instead and
    # puts some of these values in the neighbouring bucket; the precondition below checks that each
    # case really exercises that difference (else it would not test the edge rule at all).
    ref = torch.histc(values, bins, values.min().item(), values.max().item())
    assert not np.array_equal(np.histogram(values.numpy(), bins)[0], ref.numpy())
    row = histograms([values], bins)[0]
    assert row[5 + bins :].tolist() == ref.tolist()
    assert row[5 + bins :].sum().item() == values.numel()


@pytest.mark.parametrize("bins", [126, 127, 128, 254, 255, 256, 300], ids=lambda b: f"bins-{b}")
def test_histograms_with_many_bins_match_torch_histc(bins, binning):
    # the bucket index (0..bins, the top edge folded afterwards) is int8 up to 127 buckets, uint8 up to
    # 255, int64 above
    x = torch.randn(20_000, generator=torch.Generator().manual_seed(11))
    row = histograms([x], bins)[0]
    ref = torch.histc(x, bins, x.min().item(), x.max().item())
    assert row[5 + bins :].tolist() == ref.tolist()


@pytest.mark.parametrize("bins", [30, 255, 256, 1000], ids=lambda b: f"bins-{b}")
@pytest.mark.parametrize(
    "case", ["f32-near-max", "f32-1e36", "f32-small-near-max", "f64-near-max", "f64-2e305"], ids=str
)
def test_histograms_whose_bucket_arithmetic_overflows_are_binned_without_overflow(case, bins, binning):
    # (max - min) * bins overflows the dtype: histc's own arithmetic gives inf there (and a bucket
    # index from inf is meaningless); gradwatch bins such tensors in float64, float64 ones first
    # scaled by a power of two, which changes no rounding. Reference: histc on that exact data in
    # float64 (scaled down by 2^-60 for float64 input, where the scaling is exact).
    g = torch.Generator().manual_seed(13)
    x = {
        "f32-near-max": torch.rand(9_001, generator=g) * 3e38,
        "f32-1e36": torch.randn(70_001, generator=g) * 1e36,
        "f32-small-near-max": torch.rand(101, generator=g) * 3e38 - 1e38,
        "f64-near-max": torch.rand(9_001, generator=g, dtype=torch.float64) * 1.7e308 - 0.8e308,
        "f64-2e305": torch.rand(9_001, generator=g, dtype=torch.float64) * 4e305 - 2e305,
    }[case]
    scale = 2.0**-60 if x.dtype == torch.float64 else 1.0
    ref_x = x.double() * scale
    ref = torch.histc(ref_x, bins, ref_x.min().item(), ref_x.max().item())
    row = histograms([x], bins)[0]
    assert row[5 + bins :].tolist() == ref.tolist()
    assert row[2].item() == x.numel() and row[5 + bins :].sum().item() == x.numel()
    # min, max and the sum describe the data itself, not the scaled copy that was binned (the sum of
    # entries near 1e308 overflows float64 itself: checked where it does not)
    assert row[0].item() == x.min().item() and row[1].item() == x.max().item()
    total = x.double().sum().item()
    if math.isfinite(total):
        largest = x.double().abs().max().item()
        assert row[3].item() == pytest.approx(total, rel=1e-9, abs=1e-6 * largest * x.numel())


def test_histograms_reuse_the_ranges_the_statistics_computed(monkeypatch, binning):
    # gradient histograms take each gradient's min and max from grad_stats (the CPU path computes them
    # anyway) instead of another aminmax pass; the rows must be identical, NaN/Inf and dtypes included
    from gradwatch.stats import grad_stats

    xs = list(CASES.values())
    ranges: dict = {}
    grad_stats(xs, (), ranges)
    assert sorted(ranges) == list(range(len(xs)))
    expected = histograms(xs, 30)
    calls = []
    aminmax = torch.aminmax
    monkeypatch.setattr(torch, "aminmax", lambda *a, **k: calls.append(1) or aminmax(*a, **k))
    got = histograms(xs, 30, ranges=[ranges[i] for i in range(len(xs))])
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
    # aminmax runs again only on the finite part of the tensors that hold NaN/Inf
    assert len(calls) == sum(not bool(torch.isfinite(x.float()).all()) for x in xs)


def test_exploding_gradient_with_many_bins_keeps_recording(tmp_path):
    # a gradient of 1e36 with 256 buckets overflowed the bucket arithmetic and stopped recording
    torch.manual_seed(0)
    model = torch.nn.Linear(100, 100)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(8, 100)
    options = {"logdir": tmp_path, "histogram_every": 1, "histogram_bins": 256, "on_finding": "ignore"}
    with gradwatch.watch(model, opt, **options) as w:
        for s in range(3):
            opt.zero_grad()
            (model(x).sum() * (1e36 if s == 1 else 1.0)).backward()
            opt.step()
    assert [r.step for r in w.history] == [0, 1, 2]
    g_hist = hists(read_events(tmp_path), "gradients/weight")
    assert sorted(g_hist) == [0, 1, 2] and sum(g_hist[1].bucket) == 100 * 100


def test_histograms_of_tensors_larger_than_one_chunk_match_torch_histc(monkeypatch, binning):
    # tensors are binned HIST_CHUNK entries at a time into reused buffers; a small chunk makes this one
    # span 7 chunks, the last one partial
    from gradwatch.stats import binning as module

    monkeypatch.setattr(module, "HIST_CHUNK", 1000)
    x = torch.randn(6_543, generator=torch.Generator().manual_seed(12)) ** 3
    row = histograms([x], 30)[0]
    ref = torch.histc(x, 30, x.min().item(), x.max().item())
    assert row[35:].tolist() == ref.tolist()
    assert row[2].item() == x.numel()


def test_histograms_function_batches_rows_and_handles_no_finite_value(binning):
    xs = [CASES["randn-f32"], torch.full((4,), NAN), CASES["constant"], torch.tensor([INF, -INF])]
    rows = histograms(xs, 5)
    assert rows.shape == (4, 15)
    np.testing.assert_array_equal(rows[0].numpy(), histograms([xs[0]], 5)[0].numpy())
    np.testing.assert_array_equal(rows[2].numpy(), histograms([xs[2]], 5)[0].numpy())
    for r in (rows[1], rows[3]):  # nothing finite: num 0, all buckets empty, finite (not NaN) sums
        assert r[2].item() == 0 and r[3].item() == 0 and r[4].item() == 0
        assert r[10:].sum().item() == 0
        assert torch.isfinite(r).all()
    # the constant tensor: numpy's [v - 0.5, v + 0.5] range, everything in the middle bucket
    np.testing.assert_allclose(rows[2, 5:10].numpy(), np.histogram(np.full(9, 2.5), 5)[1][1:], rtol=1e-15)
    assert rows[2, 10:].tolist() == [0, 0, 9, 0, 0]


# --------------------------------------------------------------------------- 3. NaN/Inf, dtypes, empty
def test_nonfinite_gradients_counted_and_left_out_of_buckets(tmp_path):
    w_ = torch.zeros(6, requires_grad=True)
    b_ = torch.zeros(3, requires_grad=True)
    # gradient of w at each step, injected through a tensor hook (runs before accumulation into .grad)
    planned = [
        torch.tensor([1.0, NAN, INF, -INF, 2.0, 3.0]),  # step 0: 1 NaN, 2 Inf
        torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),  # step 1: clean
        torch.full((6,), NAN),  # step 2: nothing finite
        torch.tensor([-INF, 0.5, 0.5, 0.25, INF, INF]),  # step 3: 3 Inf
        torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]),  # step 4: clean
        torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]),  # step 5: clean
    ]
    current = [0]
    w_.register_hook(lambda g: planned[current[0]].clone())
    with gradwatch.watch(
        {"w": w_, "b": b_}, None, logdir=tmp_path, histogram_every=1, on_finding="ignore"
    ) as w:
        for i in range(len(planned)):
            current[0] = i
            (w_.sum() + (b_ * float(i + 1)).sum()).backward()
            w.step()
            w_.grad = None
            b_.grad = None
    assert [r.step for r in w.history] == list(range(6))

    acc = read_events(tmp_path)
    nan_ref = {s: int(g.isnan().sum()) for s, g in enumerate(planned)}
    inf_ref = {s: int(g.isinf().sum()) for s, g in enumerate(planned)}
    # written at the bad steps and at the first clean step after them (back to 0), nowhere else
    written = [0, 1, 2, 3, 4]
    assert scalars(acc, "nan_count/w") == {s: float(nan_ref[s]) for s in written}
    assert scalars(acc, "inf_count/w") == {s: float(inf_ref[s]) for s in written}
    assert "nan_count/b" not in acc.Tags()["scalars"] and "inf_count/b" not in acc.Tags()["scalars"]

    gn = scalars(acc, "grad_norm/w")
    assert sorted(gn) == list(range(6))
    for s, g in enumerate(planned):
        if g.isfinite().all():
            assert gn[s] == pytest.approx(norm(g), rel=SCALAR_RTOL)
        else:
            assert not math.isfinite(gn[s])  # NaN or Inf: the norm of a non-finite gradient
    assert math.isnan(scalars(acc, "grad_norm/total")[0])
    assert scalars(acc, "grad_norm/total")[1] == pytest.approx(
        math.hypot(norm(planned[1]), norm(torch.full((3,), 2.0))), rel=SCALAR_RTOL
    )

    g_hist = hists(acc, "gradients/w")
    assert sorted(g_hist) == [0, 1, 3, 4, 5]  # step 2 had no finite entry: no histogram at all
    for s in g_hist:
        check_histogram(g_hist[s], planned[s], 30, f"gradients/w step {s}")
    b_hist = hists(acc, "gradients/b")
    assert sorted(b_hist) == list(range(6))
    for s in b_hist:  # a constant gradient (i + 1 everywhere)
        check_histogram(b_hist[s], torch.full((3,), float(s + 1)), 30, f"gradients/b step {s}")


@pytest.mark.parametrize("dtype", half_dtypes(torch.bfloat16, torch.float16, torch.float64), ids=str)
def test_low_and_high_precision_models(tmp_path, dtype):
    model = make_mlp(seed=5, dtype=dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradwatch.watch(model, opt, logdir=tmp_path, histogram_every=1) as w:
        grads, _, after = train(model, opt, 3, dtype=dtype, seed=6)
    assert [r.step for r in w.history] == [0, 1, 2]
    acc = read_events(tmp_path)
    for n, p in model.named_parameters():
        assert p.grad.dtype == dtype
        gn = scalars(acc, f"grad_norm/{n}")
        g_hist, p_hist = hists(acc, f"gradients/{n}"), hists(acc, f"parameters/{n}")
        assert sorted(gn) == sorted(g_hist) == sorted(p_hist) == [0, 1, 2]
        for s in range(3):
            # bf16/fp16 upcast exactly to float32, where gradwatch reduces
            assert gn[s] == pytest.approx(norm(grads[s][n]), rel=SCALAR_RTOL), (n, s)
            check_histogram(g_hist[s], grads[s][n], 30, f"gradients/{n} step {s}")
            check_histogram(p_hist[s], after[s][n], 30, f"parameters/{n} step {s}")


class WithEmptyParameter(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(8)
        self.lin = torch.nn.Linear(3, 2)
        self.empty = torch.nn.Parameter(torch.zeros(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + self.empty.sum()


def test_empty_parameter_writes_valid_events(tmp_path):
    model = WithEmptyParameter()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradwatch.watch(model, opt, logdir=tmp_path, histogram_every=1, on_finding="ignore") as w:
        grads = []
        for _ in range(3):
            opt.zero_grad()
            model(torch.ones(5, 3)).pow(2).mean().backward()
            assert model.empty.grad is not None and model.empty.grad.numel() == 0
            grads.append(model.lin.weight.grad.clone())
            opt.step()
    assert [r.step for r in w.history] == [0, 1, 2]
    acc = read_events(tmp_path)
    assert scalars(acc, "grad_norm/empty") == {0: 0.0, 1: 0.0, 2: 0.0}
    hist_tags = set(acc.Tags()["histograms"])
    assert "gradients/empty" not in hist_tags and "parameters/empty" not in hist_tags  # nothing to bin
    assert {"gradients/lin.weight", "parameters/lin.bias"} <= hist_tags
    for s, g in enumerate(grads):
        assert scalars(acc, "grad_norm/lin.weight")[s] == pytest.approx(norm(g), rel=SCALAR_RTOL)
        check_histogram(hists(acc, "gradients/lin.weight")[s], g, 30, f"lin.weight step {s}")


# -------------------------------------------------------------------------------- 4. the user's writer
class SpyWriter(SummaryWriter):
    """A real SummaryWriter that counts flush() and close() calls."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.flushes = 0
        self.closes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()

    def close(self) -> None:
        self.closes += 1
        super().close()


def test_user_writer_is_flushed_not_closed_and_steps_start_at_start_step(tmp_path):
    # flush_secs/max_queue large: nothing reaches the disk unless somebody flushes
    writer = SpyWriter(str(tmp_path), flush_secs=10_000, max_queue=10_000)
    writer.add_scalar("user/before", 1.0, 0)
    model = make_mlp(seed=9)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradwatch.watch(model, opt, writer=writer, start_step=100, histogram_every=2) as w:
        grads, _, _ = train(model, opt, 4, seed=10)
    assert [r.step for r in w.history] == [100, 101, 102, 103]
    assert writer.closes == 0
    assert writer.flushes >= 1

    acc = read_events(tmp_path)  # what is on disk right now, without any flush from the test
    total = scalars(acc, "grad_norm/total")
    assert sorted(total) == [100, 101, 102, 103]
    for k, s in enumerate(sorted(total)):
        ref = math.sqrt(sum(norm(g) ** 2 for g in grads[k].values()))
        assert total[s] == pytest.approx(ref, rel=SCALAR_RTOL)
    # every(2) counts watcher steps; the last step (103) gets its histograms at close
    assert sorted(hists(acc, "gradients/0.weight")) == [100, 102, 103]
    check_histogram(hists(acc, "gradients/0.weight")[103], grads[3]["0.weight"], 30, "step 103 (close)")
    check_histogram(hists(acc, "gradients/0.weight")[102], grads[2]["0.weight"], 30, "step 102")
    assert scalars(acc, "user/before") == {0: 1.0}

    # the writer is still the user's, open: more writes land in the same event file
    writer.add_scalar("user/after", 2.0, 7)
    writer.close()
    assert writer.closes == 1
    files = list(tmp_path.glob("events.out.tfevents.*"))
    assert len(files) == 1, files  # a closed SummaryWriter would have opened a second file
    acc = read_events(tmp_path)
    assert scalars(acc, "user/after") == {7: 2.0}
    assert sorted(scalars(acc, "grad_norm/total")) == [100, 101, 102, 103]


def test_start_step_with_logdir(tmp_path):
    w_ = torch.ones(4, requires_grad=True)
    with gradwatch.watch([w_], None, logdir=tmp_path, start_step=100, histogram_every=at_steps(101)) as w:
        for i in range(3):
            (w_ * float(i + 1)).sum().backward()
            w.step()
            w_.grad = None
    acc = read_events(tmp_path)
    assert scalars(acc, "grad_norm/0") == pytest.approx({100: 2.0, 101: 4.0, 102: 6.0}, rel=SCALAR_RTOL)
    assert sorted(hists(acc, "gradients/0")) == [101]


# --------------------------------------------------------------------------------------- 5. exceptions
def test_events_are_flushed_when_the_with_block_raises(tmp_path):
    model = make_mlp(seed=11)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def boom(i: int) -> None:
        if i == 3:
            raise RuntimeError("boom in step 3")

    with (
        pytest.raises(RuntimeError, match="boom in step 3"),
        gradwatch.watch(model, opt, logdir=tmp_path, histogram_every=1),
    ):
        train(model, opt, 10, seed=12, after_step=boom)
    acc = read_events(tmp_path)
    # step 3 ended (optimizer.step ran) but was only sealed by close() on the way out
    total = scalars(acc, "grad_norm/total")
    assert sorted(total) == [0, 1, 2, 3]
    assert sorted(hists(acc, "gradients/2.weight")) == [0, 1, 2, 3]
    assert sorted(hists(acc, "parameters/2.weight")) == [0, 1, 2, 3]
    assert scalars(acc, "grad_norm/2.weight")[3] == pytest.approx(norm(model[2].weight.grad), rel=SCALAR_RTOL)


# ------------------------------------------------------------------------ 6. a real TensorBoard server
def _get_json(opener, url: str, timeout: float = 5.0):
    assert urllib.parse.urlsplit(url).hostname == "127.0.0.1"
    with opener.open(url, timeout=timeout) as resp:
        return json.loads(resp.read().decode("utf-8"))


def test_tensorboard_server_serves_gradwatch_data(tmp_path):
    logdir = tmp_path / "logs"
    model = make_mlp(seed=13)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradwatch.watch(model, opt, logdir=logdir, histogram_every=2):
        grads, _, _ = train(model, opt, 3, seed=14)

    log_file = tmp_path / "tensorboard.log"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
             "--port", "0", "--load_fast", "false", "--reload_interval", "1"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        base = None
        while base is None:  # the server prints its URL once it listens (port 0: the OS picks one)
            m = re.search(r"http://127\.0\.0\.1:(\d+)/", log_file.read_text(errors="replace"))
            if m:
                base = f"http://127.0.0.1:{m.group(1)}"
            elif proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"TensorBoard did not start:\n{log_file.read_text(errors='replace')}")
            else:
                time.sleep(0.1)

        def poll(path: str, ready):
            last = None
            while time.monotonic() < deadline:  # files are loaded asynchronously
                try:
                    last = _get_json(opener, base + path)
                    if ready(last):
                        return last
                except (OSError, ValueError) as err:  # not listening yet / not loaded yet
                    last = err
                time.sleep(0.2)
            pytest.fail(f"{path}: no data within 30 s; last answer {last!r}")

        stags = poll("/data/plugin/scalars/tags", lambda d: "grad_norm/total" in d.get(".", {}))
        assert {"grad_norm/total", "grad_norm/0.weight", "update_ratio/0.weight"} <= set(stags["."])
        q = urllib.parse.urlencode({"run": ".", "tag": "grad_norm/total"})
        series = poll(f"/data/plugin/scalars/scalars?{q}", lambda d: len(d) == 3)
        assert [step for _, step, _ in series] == [0, 1, 2]
        for (_, _, value), g in zip(series, grads, strict=True):
            assert value == pytest.approx(math.sqrt(sum(norm(t) ** 2 for t in g.values())), rel=SCALAR_RTOL)

        htags = poll("/data/plugin/histograms/tags", lambda d: "gradients/0.weight" in d.get(".", {}))
        assert {"gradients/0.weight", "parameters/2.bias"} <= set(htags["."])
        q = urllib.parse.urlencode({"run": ".", "tag": "gradients/0.weight"})
        events = poll(f"/data/plugin/histograms/histograms?{q}", lambda d: len(d) == 2)
        assert [step for _, step, _ in events] == [0, 2]
        for _, step, buckets in events:
            # TensorBoard drops empty outer buckets and uses min/max as the outer edges (float32)
            g = grads[step]["0.weight"].double().reshape(-1)
            counts = torch.histc(g, 30, g.min().item(), g.max().item()).tolist()
            nz = [i for i, c in enumerate(counts) if c]
            assert [c for _, _, c in buckets] == counts[nz[0] : nz[-1] + 1]
            assert buckets[0][0] == pytest.approx(g.min().item(), rel=1e-6)
            assert buckets[-1][1] == pytest.approx(g.max().item(), rel=1e-6)
            assert sum(c for _, _, c in buckets) == g.numel()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# -------------------------------------------------------------------------------------- 7. lazy import
_IMPORT_PROBE = """
import json, sys, torch
import gradwatch

def tb_modules():
    return sorted(
        m for m in sys.modules if m.split(".")[0] == "tensorboard" or m.startswith("torch.utils.tensorboard")
    )

after_import = tb_modules()
model = torch.nn.Linear(3, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
with gradwatch.watch(model, opt, histogram_every=1, **json.loads(sys.argv[1])) as w:
    for _ in range(2):
        opt.zero_grad()
        model(torch.ones(2, 3)).sum().backward()
        opt.step()
after_watch = tb_modules()
steps = [r.step for r in w.history]
print(json.dumps({"after_import": after_import, "after_watch": after_watch, "steps": steps}))
"""


@pytest.mark.parametrize("with_logdir", [False, True], ids=["no-sink", "logdir-control"])
def test_tensorboard_is_imported_only_when_needed(tmp_path, with_logdir):
    opts = {"logdir": str(tmp_path)} if with_logdir else {}
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, json.dumps(opts)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["steps"] == [0, 1]
    assert res["after_import"] == []
    if with_logdir:  # the control: the probe does see tensorboard once gradwatch needs it
        assert "tensorboard" in res["after_watch"] and "torch.utils.tensorboard" in res["after_watch"]
    else:
        assert res["after_watch"] == []


_CRC_PROBE = r"""
import json, sys, warnings, torch
if sys.argv[2].startswith("no-c-extension"):  # google-crc32c falls back to Python (and warns) without it
    sys.modules["google_crc32c.cext"] = None
if sys.argv[2] == "no-c-extension-strict":
    warnings.simplefilter("error")  # as under pytest's filterwarnings = ["error"]
import gradwatch
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
from tensorboard.summary.writer import record_writer
from torch.utils.tensorboard import SummaryWriter
model = torch.nn.Linear(3, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
theirs = SummaryWriter(sys.argv[1] + "/theirs")  # the user's own writer, in the same process
with gradwatch.watch(model, opt, logdir=sys.argv[1] + "/ours", histogram_every=1) as w:
    for _ in range(3):
        opt.zero_grad()
        model(torch.ones(2, 3)).sum().backward()
        opt.step()
        theirs.add_scalar("x", 1.0, 0)
    ours = w._recorder.board.writer
    kind = lambda writer: type(writer._get_file_writer().event_writer._async_writer._writer).__name__
    print(json.dumps({
        "ours": kind(ours),
        "theirs": kind(theirs),
        "module_function_kept": record_writer.masked_crc32c is pywrap_tensorflow.masked_crc32c,
    }))
theirs.close()
"""


@pytest.mark.parametrize(
    ("env", "mode", "native"),
    [
        ("", "", True),
        ("0", "", False),
        (" Off ", "", False),
        ("false", "", False),
        ("", "no-c-extension", False),
        ("", "no-c-extension-strict", False),
    ],
    ids=["native", "opted-out", "opted-out-off", "opted-out-false", "no-c-extension", "strict-warnings"],
)
def test_event_checksums_in_c_only_for_gradwatchs_own_writer(tmp_path, env, mode, native):
    pytest.importorskip("google_crc32c")
    out = subprocess.run(
        [sys.executable, "-c", _CRC_PROBE, str(tmp_path), mode or "-"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**__import__("os").environ, "GRADWATCH_NATIVE_CRC": env},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["ours"] == ("NativeChecksumRecordWriter" if native else "RecordWriter")
    # no process-wide side effect: the user's writer and TensorBoard's module are untouched
    assert res["theirs"] == "RecordWriter"
    assert res["module_function_kept"] is True
    assert "google-crc32c" not in out.stderr  # no warning about a package the user never imported
    # TensorBoard's own reader checks every record's header and data checksums with its own Python code
    from tensorboard.compat.tensorflow_stub import errors
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New

    for folder, least in (("ours", 1 + 3 * 2), ("theirs", 1 + 3)):
        (events,) = (tmp_path / folder).glob("events.out.tfevents.*")
        reader = PyRecordReader_New(str(events))
        records = 0
        while True:
            try:
                reader.GetNext()
            except errors.OutOfRangeError:
                break
            records += 1
        assert records >= least, folder  # the file header, then per step the scalars (and histograms)


def test_native_checksum_writes_the_bytes_tensorboards_own_writer_writes(tmp_path, monkeypatch):
    from tensorboard.summary.writer.record_writer import RecordWriter
    from torch.utils.tensorboard import SummaryWriter

    from gradwatch.sinks.tensorboard import native_event_checksums

    pytest.importorskip("google_crc32c")
    monkeypatch.delenv("GRADWATCH_NATIVE_CRC", raising=False)
    writer = SummaryWriter(str(tmp_path))
    try:
        records = writer._get_file_writer().event_writer._async_writer._writer
        assert native_event_checksums(writer) is True
        assert type(records) is not RecordWriter and isinstance(records, RecordWriter)
        assert native_event_checksums(writer) is True  # a second call: still native, nothing stacked
        gen = torch.Generator().manual_seed(0)

        class Sink:
            def __init__(self) -> None:
                self.data = b""

            def write(self, data: bytes) -> None:
                self.data += data

        for n in (0, 1, 7, 8, 9, 63, 64, 1000, 4097):
            data = bytes(torch.randint(0, 256, (n,), generator=gen, dtype=torch.uint8).tolist())
            stock, native = RecordWriter(Sink()), RecordWriter(Sink())
            native.__class__ = type(records)
            stock.write(data)
            native.write(data)
            assert native._writer.data == stock._writer.data, n
    finally:
        writer.close()
    assert native_event_checksums(object()) is False  # an unknown writer layout: left alone, no raise
