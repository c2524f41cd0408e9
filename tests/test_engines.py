"""Every statistics engine against the plain float64 reference of gradwatch.stats.reference.

Engines: the numpy path for small CPU tensors (``host``), PyTorch's vectorised CPU reductions
(``batched-cpu``), the ``torch._foreach_*`` path used on accelerators without Triton (``foreach``, run
on CPU tensors), and the Triton kernels (``fused``, under ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from conftest import TRITON_INTERPRETER

from gradwatch import stats
from gradwatch.stats import binning, fused, host, reference

ENGINES = ["host", "batched-cpu", "foreach", "fused"]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    name = request.param
    if name == "batched-cpu":
        monkeypatch.setattr(host, "ENABLED", False)
    elif name == "foreach":
        monkeypatch.setattr(fused, "force_on_cpu", True)
        monkeypatch.setattr(fused, "broken", "tests: the torch foreach path")
    elif name == "fused":
        if not (
            fused.triton_available() and os.environ.get("TRITON_INTERPRET") == "1" and TRITON_INTERPRETER
        ):
            pytest.skip("needs Triton 3+ with TRITON_INTERPRET=1 (the dev extra installs Triton)")
        monkeypatch.setattr(fused, "force_on_cpu", True)
    return name


def _battery() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(128, 64, generator=g),
        torch.randn(64, generator=g),
        torch.randn(300, 400, generator=g),  # > host.MAX_TENSOR: the batched path even with host on
        torch.randn(5000, generator=g) * 1e-30,  # squares underflow float32
        torch.randn(3, 7, generator=g) * 1e30,  # squares overflow float32
        torch.tensor([1.0, float("nan"), 0.0, float("inf")]),
        torch.tensor([-float("inf"), 2.0, float("inf")]),
        torch.zeros(10),
        torch.full((33,), 2.5),
        torch.randn(100, 100, generator=g) + 40.0,  # the mean dominates the spread
        torch.randn(2, 3, 5, 4, generator=g).to(memory_format=torch.channels_last),
        torch.randn(12, 9, generator=g).t(),  # transposed: memory order differs from logical order
        torch.randn(1, generator=g),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_grad_stats_of_every_engine_match_the_reference(engine: str, dtype: torch.dtype) -> None:
    tensors = []
    for t in _battery():
        if dtype in (torch.bfloat16, torch.float16) and t.abs().nan_to_num(0, 0, 0).max() > 1e4:
            continue  # out of the half dtypes' range: it would be Inf there, tested in float32
        tensors.append(t.to(dtype))
    strides = [stats.sample_stride(t.shape) for t in tensors]
    assert max(strides) > 1  # some nonzero counts are among sampled entries only
    blocks = stats.grad_stats(tensors, strides)
    got: dict[int, list[float]] = {}
    for pos, block in blocks:
        got.update(zip(pos, block.tolist()))
    want = reference.grad_stats(tensors, strides).tolist()
    assert sorted(got) == list(range(len(tensors)))
    for k, (t, ref) in enumerate(zip(tensors, want)):
        row = got[k]
        norm, max_abs, total, nonzero, nonfinite, nan, centered = row
        assert (nonzero, nonfinite, nan) == (ref[3], ref[4], ref[5]), k
        if ref[4]:  # NaN/Inf propagate
            assert not math.isfinite(norm) and not math.isfinite(max_abs), k
            continue
        # norms right to 1e-5 relative anywhere in [1e-30, 1e30] (issue 13's target), sums to float32
        # rounding of the entries' magnitudes; max |g| is an entry, exactly
        assert norm == pytest.approx(ref[0], rel=1e-5, abs=0.0), (k, norm, ref[0])
        assert max_abs == ref[1], k
        scale = ref[0] * math.sqrt(t.numel())
        assert total == pytest.approx(ref[2], rel=1e-5, abs=1e-5 * scale), k
        if centered >= 0:  # measured directly (else -1: derived on the host from norm and sum)
            assert centered == pytest.approx(ref[6], rel=1e-5, abs=1e-6 * ref[0]), k


@pytest.mark.parametrize("counting", ["histc", "buckets", "buckets-paired"])
def test_histograms_of_every_engine_match_the_reference(
    engine: str, counting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if counting != "histc":
        monkeypatch.setattr(binning, "_HISTC_MAX", 0)
    if counting == "buckets-paired":
        monkeypatch.setattr(binning, "_PAIR_MIN", 2)
    tensors = [t for t in _battery() if t.numel()]
    for bins in (1, 7, 30):
        rows = stats.histograms(tensors, bins)
        assert rows.shape == (len(tensors), 5 + 2 * bins) and rows.dtype == torch.float64
        for k, (t, row) in enumerate(zip(tensors, rows)):
            ref = reference.histogram(t, bins)
            assert row[:3].tolist() == ref[:3].tolist(), (k, bins)  # min, max, num: exact
            torch.testing.assert_close(row[3:5], ref[3:5], rtol=1e-5, atol=1e-6 * float(ref[4]) ** 0.5)
            torch.testing.assert_close(row[5 : 5 + bins], ref[5 : 5 + bins], rtol=1e-12, atol=0)
            torch.testing.assert_close(row[-bins:], ref[-bins:], rtol=0, atol=0, msg=f"{k}, {bins} bins")


def test_the_reference_itself_on_hand_computed_values() -> None:
    # the reference is the definition: check it once by hand
    t = torch.tensor([[3.0, 0.0], [-4.0, float("nan")]])
    norm, max_abs, total, nonzero, nonfinite, nan, centered = reference.raw_stats(t)
    assert all(math.isnan(v) for v in (norm, max_abs, total, centered))
    assert (nonzero, nonfinite, nan) == (3.0, 1.0, 1.0)
    got = reference.raw_stats(torch.tensor([3.0, -4.0, 0.0]), 2)  # nonzero among entries 0 and 2
    assert got == [5.0, 4.0, -1.0, 1.0, 0.0, 0.0, pytest.approx(math.sqrt(9 + 16 - 1 / 3))]
    row = reference.histogram(torch.tensor([0.0, 1.0, 1.0, 4.0]), 4)
    assert row.tolist() == [0.0, 4.0, 4.0, 6.0, 18.0, 1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 0.0, 1.0]
    flat = reference.histogram(torch.full((3,), 2.0), 3)
    assert flat.tolist() == [2.0, 2.0, 3.0, 6.0, 12.0, 1.5 + 1 / 3, 1.5 + 2 / 3, 2.5, 0.0, 3.0, 0.0]
    assert reference.sample_entries(torch.arange(6.0).reshape(2, 3).t(), 2).tolist() == [0.0, 2.0, 4.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
def test_gradients_and_sample_norms_in_one_pass_match_the_reference(dtype: torch.dtype) -> None:
    """The small-CPU-model path: gradients and the parameters' samples reduced in the same numpy calls."""
    grads = [t.to(dtype) for t in _battery() if host.eligible(t) and t.abs().nan_to_num(0, 0, 0).max() < 1e4]
    g = torch.Generator().manual_seed(3)
    params = [torch.randn(t.shape, generator=g).to(dtype) * 3 for t in grads]
    params[1][0] = float("nan")  # NaN weights: a NaN norm, the others unaffected
    strides = [stats.sample_stride(t.shape) for t in grads]
    views = [stats.sample_view(p, s) for p, s in zip(params, strides)]
    samples = stats.take_samples(views)
    assert samples.layout.host_only
    block = stats.grad_and_param_stats(grads, strides, samples)
    assert block is not None and tuple(block.shape) == (len(grads), 8)
    want = reference.grad_stats(grads, strides).tolist()
    for k, (row, ref) in enumerate(zip(block.tolist(), want)):
        assert row[3:6] == ref[3:6], k
        if ref[4]:
            assert not math.isfinite(row[0]) and not math.isfinite(row[1]), k
        else:
            assert row[0] == pytest.approx(ref[0], rel=1e-5, abs=0.0), k
            assert row[1] == ref[1], k
            scale = ref[0] * math.sqrt(grads[k].numel())
            assert row[2] == pytest.approx(ref[2], rel=1e-5, abs=1e-5 * scale), k
            if row[6] >= 0:
                assert row[6] == pytest.approx(ref[6], rel=1e-5, abs=1e-6 * ref[0]), k
        norm = torch.linalg.vector_norm(views[k].double()).item()
        if k == 1:
            assert math.isnan(row[7])
        else:
            assert row[7] == pytest.approx(norm, rel=1e-12), k
    # where it does not apply, the caller measures both on their own
    assert stats.grad_and_param_stats([None, *grads[1:]], strides, samples) is None
    big = torch.randn(300, 400)  # above host.MAX_TENSOR
    assert stats.grad_and_param_stats([big, *grads[1:]], strides, samples) is None
