"""h77 - ALBERT-style weight sharing: one block registered under two names (self.first and self.second
are the same module) and applied three times; an output layer tied to the input projection's transpose.
Each shared parameter gets several gradient contributions per backward (accumulated by autograd).
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 25
EXPECT = {}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(10, 24, bias=False)
        self.first = nn.Sequential(nn.Linear(24, 24), nn.Tanh())
        self.second = self.first  # the same module again
        self.out_bias = nn.Parameter(torch.zeros(10))

    def forward(self, x):
        h = self.proj(x)
        h = h + self.first(h)
        h = h + self.second(h)
        h = h + self.first(h)
        return h @ self.proj.weight + self.out_bias  # tied: decode with the transposed projection


def run(watch):
    torch.manual_seed(77)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    X = torch.randn(64, 10)
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = ((net(X) - X) ** 2).mean()
            loss.backward()
            opt.step()
    return w
