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
