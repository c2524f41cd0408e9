"""c90 - a soft-plus written as torch.where(x < th, log1p(exp(x)), x): the forward is finite, but exp(x)
of the unselected branch overflows for large x, and its backward (inf * 0) writes NaN into the gradient of
the layer producing x. The layer after the where keeps finite gradients.

Source: https://github.com/pytorch/pytorch/issues/156212 ("torch.where() can produce nan values for
unselected branch during backward")
Category: NaN/Inf born in a layer
What gradwatch must report: nonfinite_grad naming enc.weight and enc.bias (the origin) at the first step,
not dec.* (finite there); later steps, once the weights are NaN, name nothing new; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 8
EXPECT = {"nonfinite_grad": {"must": ["enc.weight", "enc.bias"], "may": []}}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(8, 16)
        self.dec = nn.Linear(16, 1)

    def forward(self, x):
        h = self.enc(x)
        h = torch.where(h < 20.0, torch.log1p(torch.exp(h)), h)  # BUG: exp(h) overflows where unselected
        return self.dec(h)


def run(watch):
    torch.manual_seed(90)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    X = torch.randn(32, 8) * 100  # some pre-activations land far above 88 (exp overflows in float32)
    y = torch.randn(32, 1)
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            nn.functional.mse_loss(net(X), y).backward()
            opt.step()
    return w
