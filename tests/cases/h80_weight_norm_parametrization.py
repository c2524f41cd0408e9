"""h80 - weight normalisation via torch.nn.utils.parametrizations.weight_norm on two layers: the trained
leaves are parametrizations.weight.original0 (g) and original1 (v); module.weight is recomputed from them
at each forward and is not a parameter.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import weight_norm

STEPS = 25
EXPECT = {}


def run(watch):
    torch.manual_seed(80)
    net = nn.Sequential(weight_norm(nn.Linear(8, 32)), nn.ReLU(), weight_norm(nn.Linear(32, 32)), nn.ReLU(),
                        nn.Linear(32, 2))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    X, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(X), y)
            loss.backward()
            opt.step()
    return w
