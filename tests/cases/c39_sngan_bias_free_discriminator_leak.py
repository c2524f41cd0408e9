"""c39 - GAN whose discriminator is an MLP of bias-free linear layers under
torch.nn.utils.parametrizations.spectral_norm (SN-GAN), D first, each optimizer zeroed right after its
step (leak). Steps not marked.
Source: https://github.com/leffff/FlowModels/issues/3 (the same leak); here with a spectrally normalised,
bias-free discriminator (SNGAN)
Category: missing zero_grad in a multi-optimizer loop (another loss's gradients leaking into an optimizer's step)
What gradwatch must report: missing_zero_grad on D.*.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

STEPS = 10
_D = [f"D.{i}.parametrizations.weight.original" for i in (0, 2, 4)]
EXPECT = {"missing_zero_grad": {"must": _D, "may": []}}


def run(watch):
    torch.manual_seed(302)
    G = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    D = nn.Sequential(spectral_norm(nn.Linear(4, 64, bias=False)), nn.LeakyReLU(0.1),
                      spectral_norm(nn.Linear(64, 64, bias=False)), nn.LeakyReLU(0.1),
                      spectral_norm(nn.Linear(64, 1, bias=False)))
    model = nn.ModuleDict({"G": G, "D": D})
    optG = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optD = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    with watch(model, [optG, optD]) as w:
        for _ in range(STEPS):
            real = torch.randn(32, 4) + 1
            fake = G(torch.randn(32, 8))
            (F.relu(1 - D(real)).mean() + F.relu(1 + D(fake.detach())).mean()).backward()
            optD.step()
            optD.zero_grad()
            (-D(fake).mean()).backward()
            optG.step()
            optG.zero_grad()
    return w
