"""h70 - activation checkpointing with torch.utils.checkpoint(use_reentrant=False) on two middle blocks.
The checkpointed blocks re-run their forward inside backward; gradients reach every parameter once.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

STEPS = 25
EXPECT = {}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 32)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 32)) for _ in range(2)])
        self.out = nn.Linear(32, 3)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        for b in self.blocks:
            h = h + checkpoint(b, h, use_reentrant=False)
        return self.out(h)


def run(watch):
    torch.manual_seed(70)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    X, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(X), y)
            loss.backward()
            opt.step()
    return w
