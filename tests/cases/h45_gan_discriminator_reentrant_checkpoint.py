"""h45 - DCGAN-style loop (D zeroed right before its backward, G zeroed right before its backward, D
first), with D's hidden block under reentrant activation checkpointing (use_reentrant=True; the input
requires grad on G's pass only, so D's pass uses a non-checkpointed call on real data). w.step().
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

STEPS = 10
EXPECT = {}


class Disc(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 32)
        self.mid = nn.Sequential(nn.LeakyReLU(0.2), nn.Linear(32, 32), nn.LeakyReLU(0.2))
        self.out = nn.Linear(32, 1)

    def forward(self, x):
        h = self.inp(x)
        h = checkpoint(self.mid, h, use_reentrant=True)
        return self.out(h)


def run(watch):
    torch.manual_seed(38)
    G = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    D = Disc()
    model = nn.ModuleDict({"G": G, "D": D})
    optG = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optD = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    with watch(model, [optG, optD]) as w:
        for _ in range(STEPS):
            real = torch.randn(32, 4) + 1
            fake = G(torch.randn(32, 8))
            optD.zero_grad()
            (bce(D(real), torch.ones(32, 1)) + bce(D(fake.detach()), torch.zeros(32, 1))).backward()
            optD.step()
            optG.zero_grad()
            bce(D(fake), torch.ones(32, 1)).backward()
            optG.step()
            w.step()
    return w
