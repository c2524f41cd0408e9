"""Every example in examples/ runs, in-process (checked against independent references) and as a script.

examples/ is not a package, so the scripts are imported by path. Each example's ``main(argv)`` returns the
numbers checked here. The models are tiny, so torch runs single-threaded here: with the default thread
pool a busy 2-core CI machine makes these runs 10x slower (OpenMP oversubscription), with identical results.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType

import pytest
import torch

import gradwatch as gw

pytest.importorskip("tensorboard")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# lr 0.1: the slowest mode contracts by 1 - 0.1 * 2 E[x^2] = 0.933 a step, and 0.933^150 ~ 3e-5
LINEAR_STEPS = 150
DIGITS_EPOCHS = 10  # 230 Adam steps; ~96-98% test accuracy over seeds 0-4 (5 epochs gives ~94%)
LINEAR_PARTS = ("tutorial", "decorator", "explicit")
PARAM_NAMES = {
    "tutorial": ("w", "b"),
    "decorator": ("0.weight", "0.bias"),
    "explicit": ("0.weight", "0.bias"),
}


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"gradwatch_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def linear_fit() -> ModuleType:
    return _load("linear_fit")


@pytest.fixture(scope="module")
def digits() -> ModuleType:
    pytest.importorskip("sklearn")
    return _load("digits_classifier")


@pytest.fixture(scope="module")
def linear_run(linear_fit, tmp_path_factory):
    logdir = tmp_path_factory.mktemp("linear_fit")
    return linear_fit.main(["--steps", str(LINEAR_STEPS), "--logdir", str(logdir)])


@pytest.fixture(scope="module")
def digits_run(digits, tmp_path_factory):
    logdir = tmp_path_factory.mktemp("digits")
    return digits.main(["--epochs", str(DIGITS_EPOCHS), "--logdir", str(logdir), "--seed", "0"])


def _scalars(logdir: str | Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of every scalar event with ``tag`` in the event files under ``logdir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list(Path(logdir).glob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file in {logdir}"
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    assert tag in acc.Tags()["scalars"], f"{tag!r} not in {acc.Tags()['scalars']}"
    return [(e.step, e.value) for e in acc.Scalars(tag)]


# ---------------------------------------------------------------------------- linear_fit.py
@pytest.mark.parametrize("part", LINEAR_PARTS)
def test_linear_fit_converges_to_the_true_line(linear_fit, linear_run, part):
    # Noise N(0, 0.05^2) on 200 points with x ~ U(-1, 1): least-squares error std ~0.006 (w), ~0.004 (b),
    # so 0.05 is ~8 standard deviations; the fit itself must also reach the least-squares optimum.
    fit = linear_run["parts"][part]
    assert abs(fit["w"] - 2.0) < 0.05
    assert abs(fit["b"] - 1.0) < 0.05
    x, y = linear_fit.make_data()
    design = torch.cat([x, torch.ones_like(x)], 1).double()
    w_ls, b_ls = torch.linalg.lstsq(design, y.double()).solution.flatten().tolist()
    assert fit["w"] == pytest.approx(w_ls, abs=1e-3)
    assert fit["b"] == pytest.approx(b_ls, abs=1e-3)


@pytest.mark.parametrize("part", LINEAR_PARTS)
def test_linear_fit_recorded_grads_equal_autograd(linear_run, part):
    fit = linear_run["parts"][part]
    history = fit["watcher"].history
    assert [r.step for r in history] == list(range(LINEAR_STEPS))
    for name in PARAM_NAMES[part]:
        pairs = fit["grad_pairs"][name]
        assert len(pairs) == LINEAR_STEPS
        autograd = torch.tensor([a for a, _ in pairs], dtype=torch.float64)
        recorded = torch.tensor([r for _, r in pairs], dtype=torch.float64)
        torch.testing.assert_close(recorded, autograd, rtol=1e-6, atol=0)
        norms = torch.tensor(
            [history.by_step(k).params[name].grad_norm for k in range(LINEAR_STEPS)], dtype=torch.float64
        )
        torch.testing.assert_close(norms, autograd.norm(dim=1), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("part", LINEAR_PARTS)
def test_linear_fit_update_ratio_is_the_sgd_step(linear_fit, linear_run, part):
    # SGD moves each parameter by lr * grad, so update_ratio * ||param before|| == lr * ||grad||
    # (float32 parameters: the difference of two float32 values is exact to ~1e-7 of |param|).
    history = linear_run["parts"][part]["watcher"].history
    for k in range(3):
        for s in history.by_step(k).params.values():
            assert s.has_grad
            assert s.update_ratio is not None
            assert s.update_ratio * s.param_norm == pytest.approx(linear_fit.LR * s.grad_norm, rel=1e-4)


def test_linear_fit_records_the_loss(linear_run):
    pairs = linear_run["parts"]["decorator"]["loss_pairs"]
    assert len(pairs) == LINEAR_STEPS
    for returned, recorded in pairs:
        assert recorded == pytest.approx(returned, rel=1e-6)
    for part in LINEAR_PARTS:  # record_loss() in the tutorial and explicit loops
        assert all(
            r.loss is not None and math.isfinite(r.loss) for r in linear_run["parts"][part]["watcher"].history
        )


@pytest.mark.parametrize("part", LINEAR_PARTS)
def test_linear_fit_writes_tensorboard(linear_run, part):
    fit = linear_run["parts"][part]
    assert Path(fit["logdir"]) == Path(linear_run["logdir"]) / part
    total = _scalars(fit["logdir"], "grad_norm/total")
    assert [step for step, _ in total] == list(range(LINEAR_STEPS))
    history = fit["watcher"].history
    expected = [history.by_step(step).total_grad_norm for step, _ in total]
    assert [v for _, v in total] == pytest.approx(expected, rel=1e-6)  # event files hold float32
    for name in PARAM_NAMES[part]:
        assert len(_scalars(fit["logdir"], f"grad_norm/{name}")) == LINEAR_STEPS


def test_linear_fit_report_and_detach(linear_run):
    for part in LINEAR_PARTS:
        watcher = linear_run["parts"][part]["watcher"]
        assert not watcher.attached
        report = watcher.report()
        assert f"step {LINEAR_STEPS - 1}" in report
        for name in PARAM_NAMES[part]:
            assert name in report


def test_linear_fit_forget_zero_grad_runs(linear_fit, tmp_path):
    steps = 40
    with pytest.warns(gw.MissingZeroGradWarning):
        out = linear_fit.main(["--steps", str(steps), "--forget-zero-grad", "--logdir", str(tmp_path)])
    assert set(out["parts"]) == {"forget_zero_grad"}
    fit = out["parts"]["forget_zero_grad"]
    assert len(fit["watcher"].history) == steps
    # Without zero_() each step's .grad is the running sum; gradwatch still records exactly that .grad.
    for name in ("w", "b"):
        autograd = torch.tensor([a for a, _ in fit["grad_pairs"][name]], dtype=torch.float64)
        recorded = torch.tensor([r for _, r in fit["grad_pairs"][name]], dtype=torch.float64)
        torch.testing.assert_close(recorded, autograd, rtol=1e-6, atol=0)
    (finding,) = fit["findings"]
    assert finding.kind == "missing_zero_grad" and finding.step == 1
    assert set(finding.params) == {"w", "b"} and "zero_grad" in finding.message
    assert [step for step, _ in fit["tensorboard_text"]] == [1]
    assert "missing_zero_grad" in fit["tensorboard_text"][0][1]


def test_linear_fit_forget_zero_grad_warns_and_the_correct_run_is_silent(linear_fit, tmp_path):
    with pytest.warns(gw.MissingZeroGradWarning, match="step 1"):
        linear_fit.main(["--steps", "5", "--forget-zero-grad", "--logdir", str(tmp_path / "bad")])
    with warnings.catch_warnings():
        warnings.simplefilter("error", gw.GradWatchWarning)
        out = linear_fit.main(["--steps", "5", "--logdir", str(tmp_path / "good")])
    assert all(part["watcher"].findings == [] for part in out["parts"].values())


def test_linear_fit_default_logdir(linear_fit, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = linear_fit.main(["--steps", "3"])
    logdir = Path(out["logdir"])
    assert logdir.parent == Path("runs") / "linear_fit"
    for part in LINEAR_PARTS:
        assert list((tmp_path / logdir / part).glob("events.out.tfevents.*"))


# ---------------------------------------------------------------------------- digits_classifier.py
def test_digits_accuracy_and_history(digits_run):
    assert digits_run["accuracy"] > 0.90
    n_train = 1437  # 80% of load_digits' 1797 images
    assert digits_run["steps"] == DIGITS_EPOCHS * math.ceil(n_train / 64)
    history = digits_run["watcher"].history
    assert len(history) == digits_run["steps"]
    assert [r.step for r in history] == list(range(digits_run["steps"]))
    assert all(math.isfinite(r.total_grad_norm) and r.loss is not None for r in history)


def test_digits_writes_tensorboard(digits_run):
    total = _scalars(digits_run["logdir"], "grad_norm/total")
    assert len(total) == digits_run["steps"]
    assert "gradwatch report" in digits_run["watcher"].report()


def test_digits_without_sklearn_says_what_to_install(digits, monkeypatch, tmp_path):
    for mod in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn...` raise ImportError
    with pytest.raises(SystemExit, match=r"pip install 'gradwatch\[examples\]'"):
        digits.main(["--epochs", "1", "--logdir", str(tmp_path)])


# ---------------------------------------------------------------------------- command line
@pytest.mark.parametrize(
    ("script", "args", "expect"),
    [
        ("linear_fit.py", ["--steps", "50"], "explicit: w ="),
        ("digits_classifier.py", ["--epochs", "2"], "test accuracy"),
    ],
    ids=["linear_fit", "digits_classifier"],
)
def test_example_runs_as_a_script(script, args, expect, tmp_path):
    if script == "digits_classifier.py":
        pytest.importorskip("sklearn")
    logdir = tmp_path / "logs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args, "--logdir", str(logdir)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert expect in proc.stdout
    assert list(logdir.rglob("events.out.tfevents.*"))
    assert not (tmp_path / "runs").exists()  # --logdir overrides the default folder
