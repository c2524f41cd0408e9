"""h54 - LBFGS with a closure that zeroes, evaluates and back-propagates (several evaluations per step).
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 8
EXPECT = {}


def run(watch):
    torch.manual_seed(24)
    net = nn.Sequential(nn.Linear(2, 12), nn.Tanh(), nn.Linear(12, 1))
    opt = torch.optim.LBFGS(net.parameters(), lr=1.0, max_iter=5, history_size=5, line_search_fn="strong_wolfe")
    X = torch.rand(60, 2) * 2 - 1
    y = torch.sin(3 * X[:, :1]) * X[:, 1:]

    def closure():
        opt.zero_grad()
        loss = ((net(X) - y) ** 2).mean()
        loss.backward()
        return loss

    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.step(closure)
    return w
