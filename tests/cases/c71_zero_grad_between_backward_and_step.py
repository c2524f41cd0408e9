"""c71 - zero_grad(set_to_none=True) placed between backward() and step() (a refactor moved it down a
line): every .grad is None when Adam steps, so Adam skips every parameter and nothing ever trains.
What gradwatch must report: discarded_grad on every parameter (each backward's gradients are reset
before any optimizer used them). not_updated is tolerated (nothing moves) but not required; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 20
_ALL = ["0.weight", "0.bias", "2.weight", "2.bias"]
EXPECT = {"discarded_grad": {"must": _ALL, "may": []}, "not_updated": {"must": [], "may": _ALL}}


def run(watch):
    torch.manual_seed(171)
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    X, y = torch.randn(48, 6), torch.randn(48, 1)
    w0 = net[0].weight.detach().clone()
    with watch(net, opt) as w:
        for _ in range(STEPS):
            loss = ((net(X) - y) ** 2).mean()
            loss.backward()
            opt.zero_grad(set_to_none=True)  # BUG: between backward and step
            opt.step()
    assert torch.equal(w0, net[0].weight)  # the bug is real: no parameter moved
    return w
