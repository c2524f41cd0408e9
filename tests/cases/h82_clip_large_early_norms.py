"""h82 - regression onto targets of scale ~100 with a fresh net: the first gradient norms are in the
thousands and fall as the output scale is learned; clip_grad_norm_(max_norm=1.0) returns those large
norms and clips every early step. Healthy (clipping is doing its job).
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 30
EXPECT = {}


def run(watch):
    torch.manual_seed(82)
    net = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.Adam(net.parameters(), lr=5e-2)
    X = torch.randn(128, 5)
    y = 100.0 * (X[:, :1] + 0.5 * X[:, 1:2]) + 50.0
    norms = []
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = ((net(X) - y) ** 2).mean()
            loss.backward()
            norms.append(float(nn.utils.clip_grad_norm_(net.parameters(), 1.0)))
            opt.step()
    return w
