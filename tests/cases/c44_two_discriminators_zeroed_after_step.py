"""c44 - GAN with two discriminators (e.g. multi-scale / pix2pixHD-style) in separate optimizers; G's
loss sums both adversarial terms. D1 and D2 updated first, each zeroed right after its step, then G.
G's loss leaks into both discriminators. Steps not marked.
Source: https://github.com/Lightning-AI/pytorch-lightning/issues/557 (the generator's gradients carried into
the discriminator's step; here two discriminators with their own optimizers)
Category: missing zero_grad in a multi-optimizer loop (another loss's gradients leaking into an optimizer's step)
What gradwatch must report: missing_zero_grad on D1.* and D2.*.
"""
import torch
import torch.nn as nn

STEPS = 10
_D = [f"{d}.{i}.{k}" for d in ("D1", "D2") for i in (0, 2) for k in ("weight", "bias")]
EXPECT = {"missing_zero_grad": {"must": _D, "may": []}}


def run(watch):
    torch.manual_seed(117)
    G = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    D1 = nn.Sequential(nn.Linear(4, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
    D2 = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    model = nn.ModuleDict({"G": G, "D1": D1, "D2": D2})
    optG = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optD1 = torch.optim.Adam(D1.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optD2 = torch.optim.Adam(D2.parameters(), lr=2e-4, betas=(0.5, 0.999))
    sp = nn.functional.softplus
    down = lambda x: x.view(-1, 2, 2).mean(-1)
    with watch(model, [optG, optD1, optD2]) as w:
        for _ in range(STEPS):
            real = torch.randn(32, 4) + 1
            fake = G(torch.randn(32, 8))
            (sp(-D1(real)).mean() + sp(D1(fake.detach())).mean()).backward()
            optD1.step()
            optD1.zero_grad()
            (sp(-D2(down(real))).mean() + sp(D2(down(fake.detach()))).mean()).backward()
            optD2.step()
            optD2.zero_grad()
            (sp(-D1(fake)).mean() + sp(-D2(down(fake))).mean()).backward()
            optG.step()
            optG.zero_grad()
    return w
