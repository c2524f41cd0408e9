"""c46 - relativistic average GAN (RaGAN) trained generator-first, each optimizer zeroed right after its
step (the c99 shape), D not frozen. D(real) is computed once at the top of the iteration (before G's
forward) and reused, not detached, by G's relativistic loss and D's loss. G's loss backpropagates into D
(through D(fake) and D(real)) and is added to D's own loss in D's step. Steps not marked.
Source: https://github.com/Lightning-AI/pytorch-lightning/issues/557 (generator first, the
discriminator's zero_grad only after the generator's gradients were added; here a relativistic GAN)
Category: missing zero_grad in a multi-optimizer loop (another loss's gradients leaking into an optimizer's step)
What gradwatch must report: missing_zero_grad on D.*.
"""
import torch
import torch.nn as nn

STEPS = 10
_D = ["D.0.weight", "D.0.bias", "D.2.weight", "D.2.bias"]
EXPECT = {"missing_zero_grad": {"must": _D, "may": []}}


def run(watch):
    torch.manual_seed(210)
    G = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    D = nn.Sequential(nn.Linear(4, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
    model = nn.ModuleDict({"G": G, "D": D})
    optG = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optD = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    ones, zeros = torch.ones(32, 1), torch.zeros(32, 1)
    with watch(model, [optG, optD]) as w:
        for _ in range(STEPS):
            real = torch.randn(32, 4) + 1
            y_real = D(real)
            fake = G(torch.randn(32, 8))
            y_fake = D(fake)
            lossG = (bce(y_fake - y_real.mean(), ones) + bce(y_real - y_fake.mean(), zeros)) / 2
            lossG.backward(retain_graph=True)
            optG.step()
            optG.zero_grad()
            y_fake_d = D(fake.detach())
            lossD = (bce(y_real - y_fake_d.mean(), ones) + bce(y_fake_d - y_real.mean(), zeros)) / 2
            lossD.backward()
            optD.step()
            optD.zero_grad()
    return w
