"""c87 - mixed precision with a GradScaler, and gradient clipping done on the scaled gradients: the clip
runs between backward() and scaler.step() (which unscales only afterwards), so the gradients are clipped
to max_norm / scale and training all but stops.

Source: https://github.com/Lightning-AI/pytorch-lightning/issues/9330 ("Gradient clip norm is called
before AMP's unscale leading to wrong gradients")
Category: clipping that does the wrong thing
What gradwatch must report: clip_before_unscale naming every parameter; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 10
_ALL = ["0.weight", "0.bias", "2.weight", "2.bias"]
EXPECT = {"clip_before_unscale": {"must": _ALL, "may": []}}


def run(watch):
    torch.manual_seed(87)
    net = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu")
    X, y = torch.randn(64, 12), torch.randn(64, 1)
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.mse_loss(net(X).float(), y)
            scaler.scale(loss).backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)  # BUG: scaler.unscale_(opt) belongs before this
            scaler.step(opt)
            scaler.update()
    return w
