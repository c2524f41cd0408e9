"""c59 - 20-layer tanh MLP initialised with std 0.02 (a BERT-style init copied into an MLP): each layer's
backward gain is about 0.02*sqrt(32) ~ 0.11, so the first layer's gradient is ~1e-18 of the last's.
What gradwatch must report: vanishing_grad naming l0.weight (others may be named); no other kind.
"""
import torch
import torch.nn as nn

STEPS = 20
EXPECT = {"vanishing_grad": {"must": ["l0.weight"], "may": "*"}}


class Deep(nn.Module):
    def __init__(self):
        super().__init__()
        for i in range(20):
            setattr(self, f"l{i}", nn.Linear(32, 32))
        self.out = nn.Linear(32, 2)

    def forward(self, x):
        for i in range(20):
            x = torch.tanh(getattr(self, f"l{i}")(x))
        return self.out(x)


def run(watch):
    torch.manual_seed(9)
    net = Deep()
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.normal_(m.bias, std=0.1)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    X = torch.randn(64, 32)
    y = (X[:, 0] > 0).long()
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(X), y)
            loss.backward()
            opt.step()
    return w
