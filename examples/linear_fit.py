"""Fit a line by gradient descent and watch every gradient with gradwatch.

This is the fit from the classic PyTorch autograd tutorial: data from the known line ``y = 2x + 1`` plus
a little noise, a model ``y_hat = w * x + b``, the mean squared error, ``loss.backward()`` and an update.
It runs three times, each watched by gradwatch in a different way:

1. ``tutorial``: plain leaf tensors ``w``, ``b`` updated by hand under ``torch.no_grad()``, watched with
   ``gw.watch({"w": w, "b": b}, None, ...)`` in a ``with`` block. There is no optimizer, so gradwatch
   ends a step when it sees the parameters change in place (``w -= lr * w.grad``).
2. ``decorator``: ``nn.Sequential(nn.Linear(1, 1))`` with ``torch.optim.SGD``; one call of a function
   decorated with ``@watcher.train_step`` is one step, and the loss it returns is recorded.
3. ``explicit``: the same model with the explicit lifecycle ``attach()`` / ``detach()`` / ``close()``;
   the optimizer's ``step()`` ends each step.

Each part prints the gradients the way the tutorial does (``w.grad``, ``model[0].weight.grad``) next to
what gradwatch recorded for the same step (``keep_grads`` copies and ``grad_norm``), shows a record from
``watcher.history.by_step(k)``, prints ``watcher.report()``, and writes TensorBoard logs to
``<logdir>/<part>`` (default ``runs/linear_fit/<date-time>``; look at them with
``tensorboard --logdir runs/linear_fit``).

``--forget-zero-grad`` runs part 1's loop *without* ``w.grad.zero_()``/``b.grad.zero_()``: gradients
pile up across steps (``.grad`` accumulates), a classic bug; the watcher runs with ``on_finding="warn"``
and the script prints ``watcher.findings``.

Run::

    python examples/linear_fit.py                      # all three parts, a few seconds on a CPU
    python examples/linear_fit.py --steps 50 --logdir /tmp/lf
    python examples/linear_fit.py --forget-zero-grad

The tensor holding the slope is called ``w`` as in the tutorial, so the watcher is called ``watcher``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import gradwatch as gw

TRUE_W = 2.0
TRUE_B = 1.0
N_POINTS = 200
NOISE_STD = 0.05
LR = 0.1
SEED = 0
SHOW_STEPS = 3  # print the tutorial's .grad next to gradwatch's record for the first few steps


def make_data(seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``(x, y)`` of shape ``[N_POINTS, 1]``: x uniform in [-1, 1], y = 2x + 1 + N(0, 0.05^2)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N_POINTS, 1, generator=g) * 2 - 1
    y = TRUE_W * x + TRUE_B + NOISE_STD * torch.randn(N_POINTS, 1, generator=g)
    return x, y


def _show(step: int, label: str, autograd: torch.Tensor, rec: gw.StepRecord, name: str) -> None:
    s = rec.params[name]
    print(
        f"  step {step:3d}  {label:<24}= {autograd.flatten().tolist()}   "
        f"gradwatch: grad={s.grad.flatten().tolist() if s.grad is not None else None}, "
        f"grad_norm={s.grad_norm:.6g}"
    )


def _pairs(
    grads: list[torch.Tensor], watcher: gw.Watcher, name: str
) -> list[tuple[list[float], list[float]]]:
    """(autograd ``.grad`` as the loop saw it, gradwatch's kept copy) for every recorded step."""
    out = []
    for rec, g in zip(watcher.history, grads, strict=True):
        kept = rec.params[name].grad
        out.append((g.flatten().tolist(), kept.flatten().tolist() if kept is not None else []))
    return out


# ---------------------------------------------------------------------------- part 1: leaf tensors
def fit_tutorial(
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    logdir: Path,
    *,
    zero_grad: bool = True,
    verbose: bool = True,
) -> dict[str, Any]:
    """The tutorial loop on leaf tensors, watched through in-place update detection."""
    torch.manual_seed(SEED)
    w = torch.randn(1, requires_grad=True)
    b = torch.randn(1, requires_grad=True)
    seen_w: list[torch.Tensor] = []  # w.grad as the tutorial would print it, at each step
    seen_b: list[torch.Tensor] = []
    grad_norms: list[tuple[float, float]] = []  # (|w.grad|, gradwatch's grad_norm of "w")
    with gw.watch(
        {"w": w, "b": b},
        None,
        logdir=str(logdir),
        keep_grads=True,
        on_finding="warn",
    ) as watcher:
        for step in range(steps):
            y_hat = w * x + b
            loss = ((y_hat - y) ** 2).mean()
            loss.backward()
            watcher.record_loss(loss)  # optional: gives the record (and TensorBoard) the loss
            seen_w.append(w.grad.detach().clone())
            seen_b.append(b.grad.detach().clone())
            with torch.no_grad():  # the in-place update is what ends the step for gradwatch
                w -= LR * w.grad
                b -= LR * b.grad
            if verbose and step < SHOW_STEPS:
                rec = watcher.history.by_step(step)  # reading the history seals the step just ended
                _show(step, "w.grad", seen_w[-1], rec, "w")
                _show(step, "b.grad", seen_b[-1], rec, "b")
            if zero_grad:
                w.grad.zero_()
                b.grad.zero_()
    # after the with block: the watcher is closed and the last step recorded
    for rec, g in zip(watcher.history, seen_w, strict=True):
        grad_norms.append((g.norm().item(), rec.params["w"].grad_norm))
    return {
        "watcher": watcher,
        "w": w.item(),
        "b": b.item(),
        "grad_pairs": {"w": _pairs(seen_w, watcher, "w"), "b": _pairs(seen_b, watcher, "b")},
        "grad_norm_pairs": grad_norms,
        "steps": steps,
    }


# ---------------------------------------------------------------------------- part 2: nn.Module + SGD
def _model(seed: int = SEED) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, 1))


def fit_decorator(
    x: torch.Tensor, y: torch.Tensor, steps: int, logdir: Path, *, verbose: bool = True
) -> dict[str, Any]:
    """``@watcher.train_step``: one decorated call is one step; its returned loss is recorded."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    watcher = gw.Watcher(model, opt, logdir=str(logdir), keep_grads=True)

    @watcher.train_step  # the first call attaches the watcher
    def train_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    seen_w: list[torch.Tensor] = []
    seen_b: list[torch.Tensor] = []
    losses: list[tuple[float, float | None]] = []
    for step in range(steps):
        loss = train_step(x, y)
        seen_w.append(model[0].weight.grad.detach().clone())
        seen_b.append(model[0].bias.grad.detach().clone())
        rec = watcher.history.by_step(step)  # sealed when the decorated call returned
        losses.append((loss.item(), rec.loss))
        if verbose and step < SHOW_STEPS:
            _show(step, "model[0].weight.grad", seen_w[-1], rec, "0.weight")
            _show(step, "model[0].bias.grad", seen_b[-1], rec, "0.bias")
    watcher.close()
    return {**_linear_result(watcher, model, seen_w, seen_b, steps), "loss_pairs": losses}


def fit_explicit(
    x: torch.Tensor, y: torch.Tensor, steps: int, logdir: Path, *, verbose: bool = True
) -> dict[str, Any]:
    """Explicit lifecycle: ``attach()``, train, ``detach()``, ``close()``; ``opt.step()`` ends each step."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    watcher = gw.Watcher(model, opt, logdir=str(logdir), keep_grads=["0.weight", "0.bias"])
    watcher.attach()
    seen_w: list[torch.Tensor] = []
    seen_b: list[torch.Tensor] = []
    for step in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        watcher.record_loss(loss)
        opt.step()
        seen_w.append(model[0].weight.grad.detach().clone())
        seen_b.append(model[0].bias.grad.detach().clone())
        if verbose and step < SHOW_STEPS:
            rec = watcher.history.by_step(step)
            _show(step, "model[0].weight.grad", seen_w[-1], rec, "0.weight")
            _show(step, "model[0].bias.grad", seen_b[-1], rec, "0.bias")
    watcher.detach()  # records the last step; the model and optimizer are left as found
    watcher.close()  # flushes and closes the TensorBoard writer
    return _linear_result(watcher, model, seen_w, seen_b, steps)


def _linear_result(
    watcher: gw.Watcher, model: nn.Sequential, seen_w: list, seen_b: list, steps: int
) -> dict[str, Any]:
    """What the nn.Linear parts return: the fit, and the tutorial's .grad next to gradwatch's record."""
    return {
        "watcher": watcher,
        "w": model[0].weight.item(),
        "b": model[0].bias.item(),
        "grad_pairs": {
            "0.weight": _pairs(seen_w, watcher, "0.weight"),
            "0.bias": _pairs(seen_b, watcher, "0.bias"),
        },
        "steps": steps,
    }


# ---------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200, help="gradient-descent steps per part (default 200)")
    p.add_argument(
        "--logdir",
        type=Path,
        default=None,
        help="TensorBoard folder; each part writes to a subfolder (default runs/linear_fit/<date-time>)",
    )
    p.add_argument(
        "--forget-zero-grad",
        action="store_true",
        help="run part 1's loop WITHOUT w.grad.zero_() (the classic accumulation bug) and print the findings",
    )
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    return args


def _summary(label: str, part: dict[str, Any]) -> None:
    watcher: gw.Watcher = part["watcher"]
    k = min(SHOW_STEPS, part["steps"] - 1)
    print(f"  watcher.history: {watcher.history!r}")
    print(f"  watcher.history.by_step({k}): {watcher.history.by_step(k)!r}")
    print(watcher.report())
    print(
        f"  {label}: fitted w = {part['w']:.4f} (true {TRUE_W}), b = {part['b']:.4f} (true {TRUE_B}); "
        f"|w - 2| = {abs(part['w'] - TRUE_W):.2e}, |b - 1| = {abs(part['b'] - TRUE_B):.2e}"
    )


def _findings_text(logdir: Path) -> list[tuple[int, str]]:
    """The ``gradwatch/findings`` text entries of a run, read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    acc.Reload()
    if "gradwatch/findings/text_summary" not in acc.Tags()["tensors"]:
        return []
    return [
        (e.step, e.tensor_proto.string_val[0].decode())
        for e in acc.Tensors("gradwatch/findings/text_summary")
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the example; returns the numbers the tests check.

    Returns:
        ``{"logdir": str, "seconds": float, "parts": {part: {...}}}`` where each part has the fitted
        ``w`` and ``b``, ``grad_pairs`` (per parameter name, one ``(autograd .grad, gradwatch's kept
        grad)`` pair of lists per step), ``steps``, ``logdir`` and ``watcher`` (closed). The
        ``--forget-zero-grad`` run has one part, ``forget_zero_grad``, which also holds ``findings``.
    """
    args = parse_args(argv)
    logdir = args.logdir or Path("runs") / "linear_fit" / time.strftime("%Y%m%d-%H%M%S")
    x, y = make_data()
    t0 = time.perf_counter()
    parts: dict[str, dict[str, Any]] = {}

    if args.forget_zero_grad:
        print(f"== tutorial loop WITHOUT w.grad.zero_() ({args.steps} steps): gradients accumulate ==")
        part = fit_tutorial(x, y, args.steps, logdir / "forget_zero_grad", zero_grad=False)
        part["findings"] = part["watcher"].findings
        parts["forget_zero_grad"] = part
        _summary("forgot zero_grad", part)
        print(f"watcher.findings ({len(part['findings'])}):")
        for f in part["findings"]:
            print(f"  {f}")
        part["tensorboard_text"] = _findings_text(logdir / "forget_zero_grad")
        print("TensorBoard text entries under gradwatch/findings (read back from the event file):")
        for step, text in part["tensorboard_text"]:
            print(f"  step {step}: {text}")
    else:
        runs = (
            ("tutorial", "part 1: leaf tensors w, b, manual update under torch.no_grad()", fit_tutorial),
            ("decorator", "part 2a: nn.Linear + SGD, @watcher.train_step", fit_decorator),
            ("explicit", "part 2b: nn.Linear + SGD, watcher.attach() ... detach(); close()", fit_explicit),
        )
        for name, title, fit in runs:
            print(f"== {title} ({args.steps} steps) ==")
            parts[name] = fit(x, y, args.steps, logdir / name)
            _summary(name, parts[name])
            print()

    for name, part in parts.items():
        part["logdir"] = str(logdir / name)
    seconds = time.perf_counter() - t0
    print(f"TensorBoard logs in {logdir} (tensorboard --logdir {logdir}); {seconds:.2f} s")
    for name, part in parts.items():
        print(f"{name:>16}: w = {part['w']:.4f}  b = {part['b']:.4f}   (true w = {TRUE_W}, b = {TRUE_B})")
    return {"logdir": str(logdir), "seconds": seconds, "parts": parts}


if __name__ == "__main__":
    main()
