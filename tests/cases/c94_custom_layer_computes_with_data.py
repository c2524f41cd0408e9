"""c94 - a custom linear layer written from scratch computes with self.weight.data and self.bias.data,
so its output is not connected to its parameters: they never get a gradient, and nothing before the
layer does either (the input is used through .data too).

Source: https://github.com/d2l-ai/d2l-en/pull/2600 ("Fix pytorch version of custom-layer to allow auto
grad": the layer used self.weight.data, so backprop never reached the weight and bias)
Category: gradients cut by tensor tricks
What gradwatch must report: no_grad naming the custom layer's parameters and the layer before it; no other
kind.
"""
import torch
import torch.nn as nn

STEPS = 10
EXPECT = {"no_grad": {"must": ["0.weight", "0.bias", "2.weight", "2.bias"], "may": []}}


class MyLinear(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) * 0.1)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return torch.matmul(x.data, self.weight.data) + self.bias.data  # BUG: .data cuts the graph


def run(watch):
    torch.manual_seed(94)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), MyLinear(16, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    X, y = torch.randn(32, 8), torch.randn(32, 1)
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            nn.functional.mse_loss(net(X), y).backward()
            opt.step()
    return w
