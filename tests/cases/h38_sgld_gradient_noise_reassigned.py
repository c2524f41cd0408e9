"""h38 - stochastic gradient Langevin dynamics style gradient noise: after backward, each gradient is
replaced by a noisy copy (p.grad = p.grad + sigma * randn_like) before the optimizer steps; zero_grad at
the top. One optimizer. Steps not marked.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

STEPS = 12
EXPECT = {}


def run(watch):
    torch.manual_seed(413)
    net = nn.Sequential(nn.Linear(5, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            x = torch.randn(32, 5)
            F.mse_loss(net(x), x.sum(1, keepdim=True)).backward()
            for p in net.parameters():
                p.grad = p.grad + 1e-2 * torch.randn_like(p.grad)
            opt.step()
    return w
