"""First contact (issue 18): two watchers on one model, errors that name the option and the fix."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from torch import nn

import gradwatch as gw


def _model() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def _hook_dicts(model: nn.Module) -> list:
    return [(p._post_accumulate_grad_hooks, p._backward_hooks) for p in model.parameters()]


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))), ids=str)
def test_watchers_of_one_model_restore_the_hook_dicts_in_any_close_order(order: tuple[int, ...]) -> None:
    model, opt = _model()
    before = _hook_dicts(model)
    assert before == [(None, None)] * 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        watchers = [gw.watch(model, opt, on_finding="ignore") for _ in range(3)]
    again = [w for w in caught if issubclass(w.category, gw.GradWatchWarning)]
    assert len(again) == 2  # once at each later attach, none at the first
    assert "already watched by another watcher" in str(again[0].message)
    assert again[0].filename == __file__  # attributed to the caller
    for k in order:
        watchers[k].close()
    assert _hook_dicts(model) == before


def test_a_watcher_reattached_after_close_does_not_warn() -> None:
    model, opt = _model()
    with gw.watch(model, opt):
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gw.watch(model, opt).close()


@pytest.mark.parametrize("shape", ["a file", "below a file"])
def test_an_unwritable_logdir_names_the_option_the_path_and_the_fix(tmp_path, shape: str) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    logdir = blocker if shape == "a file" else blocker / "run1"
    model, opt = _model()
    with pytest.raises(gw.GradWatchError) as err:
        gw.watch(model, opt, logdir=logdir)
    text = str(err.value)
    assert f"logdir={str(logdir)!r}" in text and "Pass logdir= a folder you can write to" in text
    assert _hook_dicts(model) == [(None, None)] * 4  # nothing left registered


def test_logdir_without_tensorboard_names_the_extra_to_install(tmp_path) -> None:
    import subprocess
    import sys

    code = f"""
import sys, torch
sys.modules["tensorboard"] = None  # as if it were not installed: importing it raises ImportError
import gradwatch as gw
model = torch.nn.Linear(2, 1)
try:
    gw.watch(model, logdir={str(tmp_path / "tb")!r})
except gw.GradWatchError as err:
    print("ERROR:", err)
print("HOOKS:", model.weight._post_accumulate_grad_hooks, model.weight._backward_hooks)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ERROR: logdir=" in out.stdout and "pip install 'gradwatch[tensorboard]'" in out.stdout
    assert "HOOKS: None None" in out.stdout


def test_a_forked_child_exits_at_once_and_leaves_the_parents_event_file_alone(tmp_path) -> None:
    import subprocess
    import sys

    code = f"""
import os, sys, time, torch
import gradwatch as gw
model = torch.nn.Linear(3, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
w = gw.watch(model, opt, logdir={str(tmp_path / "tb")!r})
def step():
    opt.zero_grad(); model(torch.randn(4, 3)).pow(2).mean().backward(); opt.step()
for _ in range(3):
    step()
pid = os.fork()
if pid == 0:  # the child trains a little, then exits normally (atexit runs)
    for _ in range(5):
        step()
    print("CHILD-RECORDED", len(w.history), flush=True)
    sys.exit(0)
t0 = time.monotonic()
os.waitpid(pid, 0)
print("CHILD-EXIT-S", round(time.monotonic() - t0, 2))
for _ in range(3):
    step()
w.close()
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator({str(tmp_path / "tb")!r}).Reload()
print("STEPS", [e.step for e in acc.Scalars("grad_norm/total")])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert float(lines["CHILD-EXIT-S"]) < 10  # (it waited 60 s for the parent's writer thread before)
    assert int(lines["CHILD-RECORDED"]) >= 7  # the child records in memory
    assert lines["STEPS"] == str(list(range(6)))  # the parent's steps only, none of the child's


_SIGTERM_SCRIPT = """
import os, signal, sys, torch
import gradwatch as gw
if sys.argv[2] == "user":
    signal.signal(signal.SIGTERM, lambda s, f: print("USER-HANDLER", flush=True))
model = torch.nn.Linear(3, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
w = gw.watch(model, opt, logdir=sys.argv[1])
for k in range(5):
    opt.zero_grad(); model(torch.randn(4, 3)).pow(2).mean().backward(); opt.step()
    if k == 2:
        os.kill(os.getpid(), signal.SIGTERM)  # a cluster pre-empting the job
print("SURVIVED", flush=True)
w.close()
after = signal.getsignal(signal.SIGTERM)
print("HANDLER-AFTER-CLOSE", getattr(after, "__module__", after))
"""


@pytest.mark.parametrize("handler", ["default", "user"])
def test_sigterm_writes_the_last_step_and_keeps_the_users_handler(tmp_path, handler: str) -> None:
    import signal
    import subprocess
    import sys

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = str(tmp_path / "tb")
    out = subprocess.run(
        [sys.executable, "-c", _SIGTERM_SCRIPT, logdir, handler], capture_output=True, text=True, timeout=120
    )
    steps = [e.step for e in EventAccumulator(logdir).Reload().Scalars("grad_norm/total")]
    if handler == "default":
        assert out.returncode == -signal.SIGTERM, (out.returncode, out.stderr)  # still killed by it
        assert "SURVIVED" not in out.stdout
        assert steps == [0, 1, 2]  # up to the step in progress, whose boundary was seen
    else:
        assert out.returncode == 0, out.stderr
        assert (
            "USER-HANDLER" in out.stdout and "SURVIVED" in out.stdout
        )  # the user's handler ran, training went on
        assert steps == [0, 1, 2, 3, 4]
        assert "HANDLER-AFTER-CLOSE __main__" in out.stdout  # the user's handler is back after close


def test_a_clean_run_writes_a_summary_and_the_last_steps_histograms(tmp_path, caplog) -> None:
    import logging

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, opt = _model()
    with caplog.at_level(logging.INFO, logger="gradwatch"), gw.watch(model, opt, logdir=tmp_path) as w:
        for _ in range(69):
            opt.zero_grad()
            model(torch.randn(8, 4)).pow(2).mean().backward()
            opt.step()
    acc = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0, "tensors": 0}).Reload()
    # the default schedule (every 20 steps) and the last step at close
    assert [e.step for e in acc.Histograms("gradients/0.weight")] == [0, 20, 40, 60, 68]
    assert [e.step for e in acc.Histograms("parameters/1.bias")] == [0, 20, 40, 60, 68]
    # the last step's gradient histogram holds .grad as it was at close (the step's gradient): its count
    last = acc.Histograms("gradients/0.weight")[-1].histogram_value
    assert last.num == 16 and last.sum == pytest.approx(float(model[0].weight.grad.sum()), rel=1e-5, abs=1e-7)
    [summary] = acc.Tensors("gradwatch/summary/text_summary")
    text = summary.tensor_proto.string_val[0].decode()
    from gradwatch.findings import FINDING_KINDS

    checks = len(FINDING_KINDS)
    want = f"gradwatch: 69 step(s) recorded (steps 0-68), 4 parameter(s) watched, {checks} checks run, "
    want += "0 findings."
    assert text == want
    assert summary.step == 68
    assert any(r.getMessage() == text for r in caplog.records)
    assert w.findings == []


def test_history_exports_to_dicts_and_a_dataframe() -> None:
    import json
    import math

    model, opt = _model()
    with gw.watch(model, opt) as w:
        for _ in range(3):
            opt.zero_grad()
            loss = model(torch.randn(8, 4)).pow(2).mean()
            w.record_loss(loss)
            loss.backward()
            opt.step()
    dicts = w.history.to_dicts()
    assert json.loads(json.dumps(dicts)) == dicts  # plain data
    assert [d["step"] for d in dicts] == [0, 1, 2]
    for d, r in zip(dicts, w.history):
        assert d["loss"] == r.loss and d["total_grad_norm"] == r.total_grad_norm
        assert d["layers"] == dict(r.layers)
        assert set(d["params"]) == set(model.state_dict())
        assert d["params"]["0.weight"]["grad_norm"] == r.params["0.weight"].grad_norm
        assert "grad" not in d["params"]["0.weight"]
    df = w.history.to_dataframe()
    assert len(df) == 3 * 4 and list(df.columns[:4]) == ["step", "param", "layer", "loss"]
    row = df[(df.step == 1) & (df.param == "1.bias")].iloc[0]
    want = w.history.by_step(1).params["1.bias"]
    assert row.layer == "1" and math.isclose(row.grad_norm, want.grad_norm) and row.has_grad == want.has_grad
    assert math.isclose(row.update_ratio, want.update_ratio)


@pytest.mark.parametrize("lr", [10.0, 30.0, 3.0])
def test_a_learning_rate_far_too_high_is_named_within_a_couple_of_steps(lr: float) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x = torch.randn(64, 8)
    y = x.sum(1, keepdim=True)
    with gw.watch(model, opt, on_finding="ignore") as w:
        for _ in range(12):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            w.record_loss(loss)
            loss.backward()
            opt.step()
    first = w.findings[0]
    assert (first.kind, first.step) == ("lr_too_high", 0)  # before any other finding
    assert f"the learning rate ({lr:g}) is far too high" in first.message and "CS231n" in first.message
    assert set(first.params) <= {"0.weight", "2.weight", "4.weight"}  # weight matrices only


@pytest.mark.parametrize("lr", [0.1, 0.01])
def test_a_working_learning_rate_is_not_reported(lr: float) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x = torch.randn(64, 8)
    with gw.watch(model, opt, on_finding="ignore") as w:
        for _ in range(40):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), x.sum(1, keepdim=True)).backward()
            opt.step()
    assert w.findings == []


def _grad_norm(model: nn.Module) -> float:
    return float(torch.linalg.vector_norm(torch.stack([p.grad.double().norm() for p in model.parameters()])))


@pytest.mark.parametrize("clip", ["norm", "value", "none"])
def test_the_unclipped_total_norm_is_recorded_beside_what_the_optimizer_used(clip: str) -> None:
    model, opt = _model()
    before, after = [], []
    with gw.watch(model, opt, on_finding="ignore") as w:
        for k in range(4):
            opt.zero_grad()
            (10.0**k * model(torch.randn(8, 4)).pow(2).mean()).backward()
            before.append(_grad_norm(model))
            if clip == "norm":
                returned = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
                assert float(returned) == pytest.approx(before[-1], rel=1e-6)
            elif clip == "value":
                torch.nn.utils.clip_grad_value_(model.parameters(), 0.01)
            after.append(_grad_norm(model))
            opt.step()
    for record, b, a in zip(w.history, before, after):
        assert record.total_grad_norm == pytest.approx(a, rel=1e-6)  # what the optimizer used
        if clip == "none":
            assert record.unclipped_total_grad_norm is None
        else:
            assert record.unclipped_total_grad_norm == pytest.approx(b, rel=1e-6)
    if clip == "norm":
        assert [round(r.total_grad_norm, 4) for r in w.history][1:] == [0.5] * 3  # pinned at the threshold


def test_explosions_are_judged_on_the_unclipped_norm_and_written_to_tensorboard(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, opt = _model()
    with gw.watch(model, opt, on_finding="ignore", logdir=tmp_path) as w:
        for k in range(8):
            opt.zero_grad()
            (3.0**k * model(torch.randn(8, 4)).pow(2).mean()).backward()  # gradients x3 a step
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    assert "exploding_grad" in {f.kind for f in w.findings}  # (the clipped total stays at 1.0)
    acc = EventAccumulator(str(tmp_path)).Reload()
    unclipped = [e.value for e in acc.Scalars("grad_norm/total_unclipped")]
    assert unclipped == pytest.approx([r.unclipped_total_grad_norm for r in w.history], rel=1e-6)


def test_without_an_optimizer_grad_norm_is_also_after_clipping() -> None:
    model, _ = _model()
    before, after = [], []
    with gw.watch(model, on_finding="ignore") as w:
        for _ in range(3):
            model(torch.randn(8, 4)).pow(2).mean().mul(100).backward()
            before.append(_grad_norm(model))
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            after.append(_grad_norm(model))
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.01 * p.grad
                    p.grad = None
    assert [r.step for r in w.history] == [0, 1, 2]
    for record, b, a in zip(w.history, before, after):
        assert record.total_grad_norm == pytest.approx(a, rel=1e-6)  # the same meaning as with an optimizer
        assert record.unclipped_total_grad_norm == pytest.approx(b, rel=1e-6)


@pytest.mark.parametrize("how", ["twice", "part", "inf-norm", "l1-norm"])
def test_the_unclipped_norm_is_the_whole_l2_norm_before_the_first_clip(how: str) -> None:
    model, opt = _model()
    before = []
    with gw.watch(model, opt, on_finding="ignore") as w:
        for _ in range(3):
            opt.zero_grad()
            (10 * model(torch.randn(8, 4)).pow(2).sum()).backward()
            before.append(_grad_norm(model))
            if how == "twice":  # the second clip must not replace the first measurement
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            elif how == "part":  # the unclipped layer counts with its own norm
                torch.nn.utils.clip_grad_norm_(model[0].parameters(), 0.1)
            else:
                torch.nn.utils.clip_grad_norm_(
                    model.parameters(), 1.0, norm_type=float("inf") if how == "inf-norm" else 1
                )
            opt.step()
    for record, b in zip(w.history, before):
        assert record.unclipped_total_grad_norm == pytest.approx(b, rel=1e-6)
    dicts = w.history.to_dicts()
    assert [d["unclipped_total_grad_norm"] for d in dicts] == [r.unclipped_total_grad_norm for r in w.history]
    df = w.history.to_dataframe()
    assert set(df.unclipped_total_grad_norm) == {r.unclipped_total_grad_norm for r in w.history}
    assert set(df.total_grad_norm) == {r.total_grad_norm for r in w.history}


def test_a_head_added_mid_run_is_reported_within_ten_steps_or_at_close() -> None:
    for steps, want in ((15, 10), (7, 6)):  # found at the 10th backward pass, or at close (last step 6)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(10, 8), nn.ReLU())
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        with gw.watch(model, opt, on_finding="ignore") as w:
            for s in range(steps):
                if s == 5:
                    model.add_module("head", nn.Linear(8, 1))
                    opt.add_param_group({"params": model.head.parameters()})
                opt.zero_grad()
                model(torch.randn(4, 10)).pow(2).mean().backward()
                opt.step()
        assert [(f.kind, f.params) for f in w.findings] == [("new_param", ("head.weight", "head.bias"))]
        assert w.findings[0].step <= want


def test_every_takes_numpy_integers_and_says_its_own_range() -> None:
    import numpy as np

    assert gw.Watcher(nn.Linear(2, 2), every=np.int64(2)).config.every == gw.every(2)
    with pytest.raises(ValueError, match=r"every must be an int >= 1 \(1 = every step\), got -1"):
        gw.Watcher(nn.Linear(2, 2), every=-1)
