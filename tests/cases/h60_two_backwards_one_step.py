"""h60 - two losses back-propagated separately (retain_graph) and accumulated into .grad on purpose
before one optimizer step; zero_grad before the first backward.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 20
EXPECT = {}


class AE(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(10, 4)
        self.dec = nn.Linear(4, 10)
        self.cls = nn.Linear(4, 2)


def run(watch):
    torch.manual_seed(30)
    m = AE()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    X, y = torch.randn(32, 10), torch.randint(0, 2, (32,))
    with watch(m, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            z = torch.tanh(m.enc(X))
            ((m.dec(z) - X) ** 2).mean().backward(retain_graph=True)
            nn.functional.cross_entropy(m.cls(z), y).backward()
            opt.step()
    return w
