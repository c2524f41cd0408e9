"""c58 - a 30-block Linear/BatchNorm/ReLU MLP without residual connections: batch normalisation keeps the
forward activations bounded but the backward gain compounds per block (mean-field result of Yang et al.,
ICLR 2019), so the first layer's gradient is hundreds of times the output layer's on every step.
What gradwatch must report: exploding_grad naming 0.weight (others may be named); no other kind.
"""
import torch
import torch.nn as nn

STEPS = 12
EXPECT = {"exploding_grad": {"must": ["0.weight"], "may": "*"}}


def run(watch):
    torch.manual_seed(0)
    layers = []
    for _ in range(30):
        layers += [nn.Linear(32, 32), nn.BatchNorm1d(32), nn.ReLU()]
    net = nn.Sequential(*layers, nn.Linear(32, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    X, y = torch.randn(64, 32), torch.randn(64, 1)
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = ((net(X) - y) ** 2).mean()
            loss.backward()
            opt.step()
    return w
