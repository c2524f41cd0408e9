"""c81 - activation checkpointing with use_reentrant=True on the FIRST block, whose input (the raw data)
does not require grad: the reentrant implementation then builds no graph through the block (PyTorch
only warns "None of the inputs have requires_grad=True"), so the checkpointed block never gets a
gradient. The later blocks train.
What gradwatch must report: no_grad on stem.* only; no other kind.
"""
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

STEPS = 20
EXPECT = {"no_grad": {"must": ["stem.0.weight", "stem.0.bias", "stem.2.weight", "stem.2.bias"], "may": []}}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.block = nn.Sequential(nn.Linear(32, 32), nn.ReLU())
        self.out = nn.Linear(32, 3)

    def forward(self, x):
        h = checkpoint(self.stem, x, use_reentrant=True)  # BUG: x does not require grad
        h = h + checkpoint(self.block, h, use_reentrant=False)
        return self.out(h)


def run(watch):
    torch.manual_seed(181)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    X, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(X), y)
            loss.backward()
            opt.step()
    assert net.stem[0].weight.grad is None and net.out.weight.grad is not None
    return w
