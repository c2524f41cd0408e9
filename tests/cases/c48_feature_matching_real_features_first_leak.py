"""c48 - GAN with a feature-matching generator loss (Salimans et al.): D = d_feat -> d_out. The real
batch's features are computed once at the top of the iteration (before G's forward) and reused by D's loss
and, not detached, by G's loss. Generator first, each optimizer zeroed right after its step (the c99
shape): G's loss backpropagates into d_feat both through the fakes and through the real features, and it
is added to D's own loss in D's step. Steps not marked.
Source: https://github.com/Lightning-AI/pytorch-lightning/issues/557 (the generator's gradients carried
into the discriminator's step; here a feature-matching loss)
Category: missing zero_grad in a multi-optimizer loop (another loss's gradients leaking into an optimizer's step)
What gradwatch must report: missing_zero_grad on d_feat.*.
"""
import torch
import torch.nn as nn

STEPS = 10
_F = ["d_feat.0.weight", "d_feat.0.bias", "d_feat.2.weight", "d_feat.2.bias"]
EXPECT = {"missing_zero_grad": {"must": _F, "may": []}}


def run(watch):
    torch.manual_seed(208)
    G = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    d_feat = nn.Sequential(nn.Linear(4, 32), nn.LeakyReLU(0.2), nn.Linear(32, 16), nn.LeakyReLU(0.2))
    d_out = nn.Linear(16, 1)
    model = nn.ModuleDict({"G": G, "d_feat": d_feat, "d_out": d_out})
    optG = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optD = torch.optim.Adam([*d_feat.parameters(), *d_out.parameters()], lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    with watch(model, [optG, optD]) as w:
        for _ in range(STEPS):
            real = torch.randn(32, 4) + 1
            f_real = d_feat(real)
            fake = G(torch.randn(32, 8))
            (d_feat(fake).mean(0) - f_real.mean(0)).pow(2).mean().backward(retain_graph=True)
            optG.step()
            optG.zero_grad()
            (bce(d_out(f_real), torch.ones(32, 1)) + bce(d_out(d_feat(fake.detach())), torch.zeros(32, 1))).backward()
            optD.step()
            optD.zero_grad()
    return w
