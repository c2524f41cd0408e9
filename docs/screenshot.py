"""Make docs/img/overview.png: a real TensorBoard, in headless Chromium, showing gradwatch's overview.

Trains a small MLP for 300 steps with gradwatch (logdir under a temporary folder), starts TensorBoard on
it, and screenshots the Custom Scalars tab with Chromium (``apt-get install -y chromium``). Run by hand:
``.venv/bin/python docs/screenshot.py``; not part of the tests.
"""

from __future__ import annotations

import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn

import gradwatch as gw

HERE = pathlib.Path(__file__).resolve().parent


def train(logdir: str) -> None:
    """300 AdamW steps of a 4-layer MLP with clipping, watched with ``logdir``."""
    torch.manual_seed(0)
    layers = [nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(32, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.randn(512, 16)
    y = (x[:, :4].sum(1, keepdim=True)).sin()
    with gw.watch(model, opt, logdir=logdir) as w:
        for _ in range(300):
            idx = torch.randint(0, 512, (64,))
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x[idx]), y[idx])
            w.record_loss(loss)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()


def main() -> int:
    """Train, serve the run with TensorBoard, screenshot it; returns the exit status."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("needs chromium (apt-get install -y chromium)", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp()
    train(f"{tmp}/run")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tb = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            tmp,
            "--port",
            str(port),
            "--host",
            "localhost",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(8)
        out = HERE / "img" / "overview.png"
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--window-size=1400,790",
                "--virtual-time-budget=20000",
                f"--screenshot={out}",
                f"http://127.0.0.1:{port}/?darkMode=false#custom_scalars",
            ],
            check=True,
            timeout=120,
        )
        print(out)
    finally:
        tb.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
