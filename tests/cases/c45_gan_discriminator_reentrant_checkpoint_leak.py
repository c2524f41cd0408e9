"""c45 - c98-shape leak (D first, each optimizer zeroed right after its step) with D's hidden block under
reentrant activation checkpointing. Steps not marked.
Source: https://github.com/leffff/FlowModels/issues/3 (the c98 leak), with reentrant activation
checkpointing in the discriminator
Category: missing zero_grad in a multi-optimizer loop (another loss's gradients leaking into an optimizer's step)
What gradwatch must report: missing_zero_grad on D.*.
"""
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

STEPS = 10
_D = ["D.inp.weight", "D.inp.bias", "D.mid.1.weight", "D.mid.1.bias", "D.out.weight", "D.out.bias"]
EXPECT = {"missing_zero_grad": {"must": _D, "may": []}}


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
    torch.manual_seed(122)
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
            (bce(D(real), torch.ones(32, 1)) + bce(D(fake.detach()), torch.zeros(32, 1))).backward()
            optD.step()
            optD.zero_grad()
            bce(D(fake), torch.ones(32, 1)).backward()
            optG.step()
            optG.zero_grad()
    return w
