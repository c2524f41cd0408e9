"""c70 - zero_grad() missing, hidden behind gradient clipping: clip_grad_norm_ rescales .grad in place
between backward and step every iteration, so the step size stays bounded, but the direction is the
running sum of every gradient so far.
What gradwatch must report: missing_zero_grad on every parameter; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 25
_ALL = ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
EXPECT = {"missing_zero_grad": {"must": _ALL, "may": []}}


def run(watch):
    torch.manual_seed(170)
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    X, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    with watch(net, opt) as w:
        for _ in range(STEPS):
            # BUG: no opt.zero_grad()
            loss = nn.functional.cross_entropy(net(X), y)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 0.5)
            opt.step()
    return w
