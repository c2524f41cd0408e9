"""c95 - a quantiser whose straight-through estimator is written right (x + (round(x) - x).detach()),
followed by a second, plain torch.round on its output: round's gradient is 0 everywhere, so the
encoder before it gets all-zero gradients and never trains.

Source: https://github.com/Justin-Tan/generative-compression/issues/51 ("Question about quantizer": the
round applied after the straight-through expression blocks the gradient; TensorFlow there, the same in
PyTorch)
Category: gradients cut by tensor tricks
What gradwatch must report: all_zero_grad naming the encoder's parameters; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 12
EXPECT = {"all_zero_grad": {"must": ["enc.weight", "enc.bias"], "may": []}}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(10, 6)
        self.dec = nn.Linear(6, 10)

    def forward(self, x):
        z = self.enc(x) * 4
        z = z + (torch.round(z) - z).detach()  # straight-through: gradient 1
        z = torch.round(z)  # BUG: a second, plain round: gradient 0
        return self.dec(z)


def run(watch):
    torch.manual_seed(95)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    X = torch.randn(64, 10)
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            nn.functional.mse_loss(net(X), X).backward()
            opt.step()
    return w
