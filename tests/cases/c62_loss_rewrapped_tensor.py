"""c62 - the loss is re-wrapped as torch.tensor(loss.item(), requires_grad=True) to "make backward work"
after a custom metric; the graph to the model is cut and no parameter ever receives a gradient.
What gradwatch must report: no_grad on every parameter; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 20
_ALL = ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]
EXPECT = {"no_grad": {"must": _ALL, "may": []}}


def run(watch):
    torch.manual_seed(12)
    net = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    X, y = torch.randn(32, 6), torch.randn(32, 1)
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            err = (net(X) - y).abs()
            metric = err.sort(0).values[:24].mean()   # trimmed mean, differentiable
            loss = torch.tensor(metric.item(), requires_grad=True)  # BUG: cuts the graph
            loss.backward()
            opt.step()
    return w
