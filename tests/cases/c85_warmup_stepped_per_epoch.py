"""c85 - a linear warm-up written for per-iteration stepping (factor = it / WARMUP) is stepped once per
epoch: the learning rate is exactly 0 for the whole first epoch (and tiny for the next ones), so the
weights do not move for an epoch while every parameter gets gradients.

Source: https://github.com/verl-project/verl/issues/3674 ("Learning is zero for the first iteration when
warmup enabled": where lr_scheduler.step() sits decides how long the lr stays 0)
Category: the optimizer steps with learning rate 0
What gradwatch must report: not_updated naming every parameter (lr 0 for 12 optimizer steps); no other
kind. A single step at lr 0 at the start of a per-step warm-up is healthy (h73).
"""
import torch
import torch.nn as nn

EPOCHS, PER_EPOCH = 2, 12
_ALL = ["0.weight", "0.bias", "2.weight", "2.bias"]
EXPECT = {"not_updated": {"must": _ALL, "may": []}}


def run(watch):
    torch.manual_seed(85)
    net = nn.Sequential(nn.Linear(10, 32), nn.GELU(), nn.Linear(32, 3))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: min(1.0, it / 500))  # warm-up in iterations
    X, y = torch.randn(PER_EPOCH, 16, 10), torch.randint(0, 3, (PER_EPOCH, 16))
    with watch(net, opt) as w:
        for _ in range(EPOCHS):
            for i in range(PER_EPOCH):
                opt.zero_grad()
                nn.functional.cross_entropy(net(X[i]), y[i]).backward()
                opt.step()
            sched.step()  # BUG: once per epoch
    return w
