"""h91 - AMP with gradient accumulation over 4 micro-batches: scaler.scale(loss / 4).backward() per
micro-batch, then scaler.unscale_(opt), clip_grad_norm_ on the unscaled gradients, scaler.step, update.
What gradwatch must report: nothing (the clip follows unscale_: PyTorch's recipe).
"""
import torch
import torch.nn as nn

STEPS = 8
EXPECT = {}


def run(watch):
    torch.manual_seed(91)
    net = nn.Sequential(nn.Linear(10, 64), nn.GELU(), nn.Linear(64, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    X, y = torch.randn(STEPS, 4, 16, 10), torch.randn(STEPS, 4, 16, 1)
    with watch(net, opt) as w:
        for s in range(STEPS):
            opt.zero_grad()
            for m in range(4):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = nn.functional.mse_loss(net(X[s, m]).float(), y[s, m]) / 4
                scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
            scaler.step(opt)
            scaler.update()
    return w
