"""Attach/detach leave everything as found; no leaks; the model is not kept alive; disable switch."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tracemalloc
import weakref

import pytest
import torch
from conftest import MLP, ResCNN
from torch import nn

import gradwatch as gw


def hook_state(model: nn.Module, opts: list[torch.optim.Optimizer]) -> dict:
    """Every hook dictionary of every module, parameter and optimizer, and the global ones."""
    state: dict = {}
    for name, mod in model.named_modules():
        for attr, value in vars(mod).items():
            if "hook" in attr and isinstance(value, dict):
                state[("module", name, attr)] = list(value.items())
    for name, p in model.named_parameters():
        state[("param", name, "post_acc")] = p._post_accumulate_grad_hooks
        state[("param", name, "backward")] = p._backward_hooks
    for i, opt in enumerate(opts):
        for attr, value in vars(opt).items():
            if "hook" in attr:
                state[("optimizer", i, attr)] = list(value.items())
    import torch.nn.modules.module as M
    import torch.optim.optimizer as O

    for mod, attrs in (
        (M, ("_global_forward_hooks", "_global_backward_hooks", "_global_forward_pre_hooks")),
        (O, ("_global_optimizer_pre_hooks", "_global_optimizer_post_hooks")),
    ):
        for attr in attrs:
            state[("global", attr)] = list(getattr(mod, attr).items())
    return state


def _train(model, opt, steps=2):
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(2, 3, 8, 8) if isinstance(model, ResCNN) else torch.randn(4, 6)).sum().backward()
        opt.step()


@pytest.mark.parametrize("model_cls", [MLP, ResCNN], ids=["mlp", "cnn"])
def test_detach_restores_every_hook_dict(model_cls) -> None:
    model = model_cls()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = hook_state(model, [opt])
    w = gw.Watcher(model, opt)
    w.attach()
    assert hook_state(model, [opt]) != before
    _train(model, opt)
    w.detach()
    assert hook_state(model, [opt]) == before
    w.close()
    assert hook_state(model, [opt]) == before


def test_exception_in_with_block_restores_and_keeps_record() -> None:
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = hook_state(model, [opt])
    with pytest.raises(KeyboardInterrupt), gw.watch(model, opt) as w:
        _train(model, opt, 2)
        raise KeyboardInterrupt
    assert hook_state(model, [opt]) == before
    assert len(w.history) == 2
    assert not w.attached


def test_attach_twice_adds_nothing() -> None:
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    w = gw.Watcher(model, opt)
    w.attach()
    once = hook_state(model, [opt])
    w.attach()
    assert hook_state(model, [opt]) == once
    _train(model, opt, 3)
    assert len(w.history) == 3
    w.close()


def test_reattach_after_detach_records_again() -> None:
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    w = gw.Watcher(model, opt)
    w.attach()
    _train(model, opt, 2)
    w.detach()
    _train(model, opt, 2)  # not watched
    w.attach()
    _train(model, opt, 1)
    w.close()
    assert [r.step for r in w.history] == [0, 1, 2]
    with pytest.raises(gw.GradWatchError, match="closed"):
        w.attach()


def test_thousand_attach_detach_cycles_keep_memory_flat() -> None:
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = hook_state(model, [opt])

    def cycle(n):
        for _ in range(n):
            w = gw.Watcher(model, opt)
            w.attach()
            w.detach()
            w.close()

    cycle(50)
    gc.collect()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    cycle(1000)
    gc.collect()
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert after - base < 64 * 1024, f"memory grew by {after - base} bytes over 1000 cycles"
    assert hook_state(model, [opt]) == before


def test_memory_flat_over_many_steps() -> None:
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.001)
    x = torch.randn(4, 6)
    with gw.watch(model, opt, max_history=20, on_finding="ignore") as w:

        def run(n):
            for _ in range(n):
                opt.zero_grad()
                model(x).sum().backward()
                opt.step()

        tracemalloc.start()  # before warm-up: the bounded history's own records are traced both times
        run(100)
        gc.collect()
        base, _ = tracemalloc.get_traced_memory()
        run(500)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert len(w.history) == 20
    assert after - base < 64 * 1024, f"memory grew by {after - base} bytes over 500 steps"


@pytest.mark.parametrize("detach", [True, False], ids=["detached", "still-attached"])
def test_watcher_does_not_keep_model_alive(detach: bool) -> None:
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    w = gw.Watcher(model, opt)
    w.attach()
    _train(model, opt, 1)
    if detach:
        w.detach()
    ref_model, ref_opt = weakref.ref(model), weakref.ref(opt)
    del model, opt
    gc.collect()
    assert ref_model() is None
    assert ref_opt() is None
    assert len(w.history) == 1  # what was recorded stays readable
    w.close()  # (still attached: the global wrappers it installed stay until then, for later tests too)


def test_disable_env_registers_no_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADWATCH_DISABLE", "1")
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = hook_state(model, [opt])
    with gw.watch(model, opt, logdir=None) as w:
        assert hook_state(model, [opt]) == before
        _train(model, opt, 3)
        w.step()
    assert w.disabled and len(w.history) == 0 and w.findings == []
    assert "disabled" in w.report()

    calls = []

    @w.train_step
    def train_step():
        calls.append(1)
        return torch.tensor(1.0)

    train_step()
    assert calls == [1] and hook_state(model, [opt]) == before


def test_disable_env_writes_no_files(tmp_path) -> None:
    code = (
        "import torch, gradwatch as gw\n"
        "m = torch.nn.Linear(2, 1)\n"
        f"with gw.watch(m, logdir={str(tmp_path / 'runs')!r}) as w:\n"
        "    m(torch.ones(1, 2)).sum().backward(); w.step()\n"
        "import sys; print(len(w.history), 'tensorboard' in sys.modules)\n"
    )
    env = dict(os.environ, GRADWATCH_DISABLE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "False"]
    assert not (tmp_path / "runs").exists()


def test_internal_failure_is_logged_once_and_training_goes_on(monkeypatch, caplog) -> None:
    from gradwatch import stats

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(stats, "grad_stats", broken)
    monkeypatch.setattr(stats, "grad_and_param_stats", broken)  # (the small-CPU-model path)
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with caplog.at_level("ERROR", logger="gradwatch"), gw.watch(model, opt) as w:
        _train(model, opt, 5)
    errors = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert len(errors) == 1 and "simulated bug" in errors[0].getMessage()
    assert not w.attached


def test_reattach_errors_name_the_cause() -> None:
    model = MLP()
    w = gw.Watcher(model)
    model.net[0] = nn.Linear(6, 16)  # same names, new tensors: fine, they are watched from now on
    w.attach()
    w.detach()
    del model.net[4]  # a watched parameter disappears
    with pytest.raises(gw.GradWatchError, match=r"net\.4\.weight.*no longer in the model"):
        w.attach()
    model2 = MLP()
    w2 = gw.Watcher(model2)
    del model2
    gc.collect()
    with pytest.raises(gw.GradWatchError, match="model no longer exists"):
        w2.attach()


def test_history_index_out_of_range_says_what_it_holds() -> None:
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt) as w:
        for _ in range(2):
            opt.zero_grad()
            model(torch.ones(3, 2)).sum().backward()
            opt.step()
    assert w.history[-2].step == 0
    with pytest.raises(
        IndexError, match=r"history index 100 is out of range: it holds 2 records \(steps 0..1\)"
    ):
        w.history[100]


_STOP_PROBE = r"""
import sys, warnings, torch
import gradwatch as gw
model = torch.nn.Linear(3, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
if sys.argv[1] == "filter":
    warnings.simplefilter("error", gw.MissingZeroGradWarning)
with gw.watch(model, opt) as w:
    for step in range(4):
        model(torch.ones(2, 3)).sum().backward()  # no zero_grad: missing_zero_grad at step 1
        opt.step()
        print("stepped", step, flush=True)
"""


@pytest.mark.parametrize(
    ("env", "mode", "stops"),
    [
        ("raise", "-", True),
        ("RAISE ", "-", True),
        ("", "filter", True),
        ("", "-", False),
        ("ignore", "filter", False),
    ],
    ids=["env-raise", "env-raise-spaces", "warnings-filter", "default-warns", "env-ignore-wins"],
)
def test_stopping_at_the_first_finding_without_editing_the_script(
    tmp_path, env: str, mode: str, stops: bool
) -> None:
    # run from a folder outside the source tree, against the installed package
    out = subprocess.run(
        [sys.executable, "-c", _STOP_PROBE, mode],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
        env={**os.environ, "GRADWATCH_ON_FINDING": env},
    )  # fmt: skip
    if stops:
        assert out.returncode != 0 and "the gradient was not zeroed" in out.stderr
        assert "GradientError" in out.stderr or "MissingZeroGradWarning" in out.stderr
        assert "stepped 0" in out.stdout and "stepped 1" not in out.stdout
    else:
        assert out.returncode == 0, out.stderr
        assert "stepped 3" in out.stdout


def test_a_bad_gradwatch_on_finding_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("GRADWATCH_ON_FINDING", "loud")
    with pytest.raises(ValueError, match="GRADWATCH_ON_FINDING='loud' must be 'warn', 'raise' or 'ignore'"):
        gw.Watcher(torch.nn.Linear(2, 1))
