"""benchmarks/gpu_overhead.py (issue 13) runs end to end on the CPU at its tiny scale.

The full benchmark needs a GPU; here every model, variant and measurement runs on shrunken models so
that the script cannot rot unnoticed between the sessions that are lent one.
"""

from __future__ import annotations

import json
import sys

import torch
from conftest import REPO


def _benchmark():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_overhead
    finally:
        sys.path.pop(0)
    return gpu_overhead


def test_gpu_benchmark_runs_every_model_variant_and_measurement_on_cpu(tmp_path) -> None:
    bench = _benchmark()
    threads = torch.get_num_threads()
    out = tmp_path / "out.json"
    # one thread: the tiny models gain nothing from two, and lose much on a machine busy with other work
    args = "--device cpu --threads 1 --scale tiny --steps 2 --warmup 1"
    returned = bench.main([*args.split(), "--json", str(out)])
    res = json.loads(out.read_text())
    assert res["models"].keys() == returned["models"].keys()
    env = res["environment"]
    assert env["device"] == "cpu" and env["device_name"] == "cpu" and env["torch"]
    assert torch.get_num_threads() == threads  # main restores the thread count
    assert set(res["models"]) == set(bench.MODELS)
    for name, model in res["models"].items():
        assert model["tensors"] > 0 and model["params"] > 0, name
        variants = model["overhead"]["variants"]
        assert set(variants) == set(bench.VARIANTS), name
        for variant, r in variants.items():
            assert "error" not in r, (name, variant, r)
            assert r["median_ms"] > 0 and r["ratio"] > 0 and r["ratio_of_medians"] > 0, (name, variant)
            assert r["steps"] == 2, (name, variant)
        assert variants["unwatched"]["ratio"] == 1.0
        assert variants["by_hand_hist"]["capped_at"] == 8
        assert not model["overhead"]["budget_hit"]
        # recorded gradient norms against float64 references of the gradients the optimizer used
        err = model["grad_norm_error"]
        assert err["norms_compared"] >= 2 * model["tensors"] and err["max_rel_error"] < 1e-4, (name, err)
        assert model["syncs_per_step"] is None and model["peak_memory"] is None  # CUDA only
    # a few layers' gradients around 1e-26: float32 squares underflow, the recorded norms must not
    tiny = res["models"]["mlp"]["grad_norm_error_tiny_grads"]
    assert tiny["tiny_grad_params"] and tiny["min_reference_norm"] < 1e-20
    assert tiny["max_rel_error"] < 1e-4, tiny
    launches = res["launches"]
    assert launches["cuda_kernels"] is None
    assert set(launches["aten_ops"]) == {"tensors_10", "tensors_1000"}
    for counts in launches["aten_ops"].values():
        assert counts["watched"] > counts["unwatched"] > 0
        assert counts["added"] == counts["watched"] - counts["unwatched"]


def test_gpu_benchmark_stops_adding_steps_past_its_budget(tmp_path) -> None:
    bench = _benchmark()
    args = "--device cpu --threads 1 --scale tiny --models mlp --variants stats,by_hand_hist --warmup 1"
    res = bench.main([*args.split(), "--steps", "50", "--budget-s", "0"])
    over = res["models"]["mlp"]["overhead"]
    assert over["budget_hit"] and over["rounds"] == 1
    assert set(over["variants"]) == {"unwatched", "stats", "by_hand_hist"}
    assert all(r["steps"] == 1 for r in over["variants"].values())
