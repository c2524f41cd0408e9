"""h73 - linear warm-up from lr = 0: LambdaLR with factor s/WARMUP, so the very first optimizer step
runs with lr exactly 0 (and only that one); lr reaches its peak at step WARMUP and then decays.
What gradwatch must report: nothing (one step with lr 0 is not a parameter that never moves).
"""
import torch
import torch.nn as nn

STEPS = 25
WARMUP = 8
EXPECT = {}


def run(watch):
    torch.manual_seed(73)
    net = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / WARMUP if s < WARMUP else max(0.1, 1 - (s - WARMUP) / STEPS))
    X, y = torch.randn(64, 12), torch.randint(0, 4, (64,))
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(X), y)
            loss.backward()
            opt.step()
            sched.step()
    return w
