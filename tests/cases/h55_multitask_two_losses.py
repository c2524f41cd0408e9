"""h55 - multi-task: shared trunk, two heads, losses summed with weights, one backward.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 25
EXPECT = {}


class MT(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(10, 24), nn.ReLU())
        self.cls = nn.Linear(24, 3)
        self.reg = nn.Linear(24, 1)


def run(watch):
    torch.manual_seed(25)
    m = MT()
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    X = torch.randn(64, 10)
    yc, yr = torch.randint(0, 3, (64,)), torch.randn(64, 1)
    with watch(m, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            h = m.trunk(X)
            loss = nn.functional.cross_entropy(m.cls(h), yc) + 0.3 * nn.functional.mse_loss(m.reg(h), yr)
            loss.backward()
            opt.step()
    return w
