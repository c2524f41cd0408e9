"""h36 - correct DCGAN-style loop in the pre-1.0 idiom: each network is zeroed with `p.grad.data.zero_()`
right before its own backward; G first (G zeroed, G's loss through D, G steps), then D (D zeroed, D's
loss on real and detached fakes, D steps). D's gradient from G's pass is wiped (through .data) before D's
own backward. Steps not marked.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 10
EXPECT = {}


def zero(module):
    for p in module.parameters():
        if p.grad is not None:
            p.grad.data.zero_()


def run(watch):
    torch.manual_seed(402)
    G = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    D = nn.Sequential(nn.Linear(4, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
    model = nn.ModuleDict({"G": G, "D": D})
    optG = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optD = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    with watch(model, [optG, optD]) as w:
        for _ in range(STEPS):
            real = torch.randn(32, 4) + 1
            fake = G(torch.randn(32, 8))
            zero(G)
            bce(D(fake), torch.ones(32, 1)).backward()
            optG.step()
            zero(D)
            (bce(D(real), torch.ones(32, 1)) + bce(D(fake.detach()), torch.zeros(32, 1))).backward()
            optD.step()
    return w
