"""c74 - a hidden activation is sent through numpy for a custom nonlinearity
(torch.from_numpy(np.clip(h.detach().numpy(), ...))), cutting the graph between the encoder and the rest;
only the layers after the round trip train.
What gradwatch must report: no_grad on the layers before the round trip (pre.*); no other kind.
"""
import numpy as np
import torch
import torch.nn as nn

STEPS = 20
EXPECT = {"no_grad": {"must": ["pre.0.weight", "pre.0.bias", "pre.2.weight", "pre.2.bias"], "may": []}}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.pre = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32))
        self.post = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, x):
        h = self.pre(x)
        h = torch.from_numpy(np.clip(h.detach().numpy(), -1.0, 1.0))  # BUG: numpy round trip
        return self.post(h)


def run(watch):
    torch.manual_seed(174)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    X, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(X), y)
            loss.backward()
            opt.step()
    return w
