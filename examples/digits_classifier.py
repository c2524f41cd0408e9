"""Train a small MLP on real data (scikit-learn's 8x8 digits) and watch its gradients with gradwatch.

``sklearn.datasets.load_digits`` ships inside scikit-learn (1797 images of 8x8 pixels, 10 classes), so
nothing is downloaded. The features are standardized with statistics of the training split, the split is
fixed by ``--seed``, and a 64-128-64-10 MLP is trained with Adam in mini-batches for a few seconds on a
CPU. ``gw.watch(model, opt, logdir=...)`` records every parameter's gradient statistics at every
optimizer step and writes them to TensorBoard (default ``runs/digits/<date-time>``; view them with
``tensorboard --logdir runs/digits``).

Run::

    pip install 'gradwatch[examples]'
    python examples/digits_classifier.py
    python examples/digits_classifier.py --epochs 5 --logdir /tmp/digits --seed 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import gradwatch as gw

BATCH_SIZE = 64
LR = 1e-3
HIDDEN = (128, 64)


def _require_sklearn() -> Any:
    try:
        import sklearn.datasets
        import sklearn.model_selection
    except ImportError as err:
        raise SystemExit(
            "examples/digits_classifier.py needs scikit-learn for its data set (load_digits); "
            "install the example extras with: pip install 'gradwatch[examples]'"
        ) from err
    return sklearn


def load_data(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standardized train/test tensors: x float32 ``[n, 64]``, y int64 ``[n]`` (80/20 stratified split)."""
    sklearn = _require_sklearn()
    digits = sklearn.datasets.load_digits()
    x_train, x_test, y_train, y_test = sklearn.model_selection.train_test_split(
        digits.data, digits.target, test_size=0.2, random_state=seed, stratify=digits.target
    )
    x_train = torch.as_tensor(x_train, dtype=torch.float32)
    x_test = torch.as_tensor(x_test, dtype=torch.float32)
    mean = x_train.mean(0)
    std = x_train.std(0).clamp_min(1e-6)  # some border pixels are always 0
    return (
        (x_train - mean) / std,
        torch.as_tensor(y_train, dtype=torch.int64),
        (x_test - mean) / std,
        torch.as_tensor(y_test, dtype=torch.int64),
    )


def make_model() -> nn.Sequential:
    layers: list[nn.Module] = []
    width = 64
    for h in HIDDEN:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=20, help="passes over the training split (default 20)")
    p.add_argument(
        "--logdir", type=Path, default=None, help="TensorBoard folder (default runs/digits/<date-time>)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the split, the init and the batches (default 0)"
    )
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error("--epochs must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, evaluate and report.

    Returns:
        ``{"accuracy": float in [0, 1], "steps": int (optimizer steps), "logdir": str, "seconds": float,
        "watcher": gw.Watcher (closed), "final_loss": float}``.
    """
    args = parse_args(argv)
    logdir = args.logdir or Path("runs") / "digits" / time.strftime("%Y%m%d-%H%M%S")
    x_train, y_train, x_test, y_test = load_data(args.seed)
    torch.manual_seed(args.seed)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(args.seed)
    print(
        f"digits: {len(x_train)} train / {len(x_test)} test images, model {model}, "
        f"{args.epochs} epochs of batches of {BATCH_SIZE}"
    )

    t0 = time.perf_counter()
    steps = 0
    with gw.watch(model, opt, logdir=str(logdir)) as w:
        for epoch in range(args.epochs):
            model.train()
            perm = torch.randperm(len(x_train), generator=g)
            total = 0.0
            for i in range(0, len(x_train), BATCH_SIZE):
                idx = perm[i : i + BATCH_SIZE]
                opt.zero_grad()
                loss = loss_fn(model(x_train[idx]), y_train[idx])
                loss.backward()
                w.record_loss(loss)
                opt.step()
                steps += 1
                total += loss.item() * len(idx)
            if epoch == 0 or (epoch + 1) % 5 == 0 or epoch + 1 == args.epochs:
                rec = w.history[-1]
                print(
                    f"  epoch {epoch + 1:3d}  train loss {total / len(x_train):.4f}  step {rec.step}  "
                    f"total grad norm {rec.total_grad_norm:.4f}"
                )
    seconds = time.perf_counter() - t0

    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    print(w.report())
    print(f"test accuracy {accuracy:.2%} after {steps} steps ({seconds:.2f} s); TensorBoard logs in {logdir}")
    return {
        "accuracy": accuracy,
        "steps": steps,
        "logdir": str(logdir),
        "seconds": seconds,
        "watcher": w,
        "final_loss": total / len(x_train),
    }


if __name__ == "__main__":
    main()
