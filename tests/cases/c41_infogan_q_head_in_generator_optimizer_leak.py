"""c41 - InfoGAN: the Q head sits on the discriminator's body and is optimized with the generator (one
optimizer for G and Q, as in many implementations); the discriminator (body + adversarial head) has its
own. D first, each optimizer zeroed right after its step: the G/Q loss (adversarial + mutual
information, both through D's body) leaves gradients in D that its next update applies.
Source: https://github.com/Lightning-AI/pytorch-lightning/issues/557 (the generator's gradients left in the
discriminator and applied by its next step; here the InfoGAN variant)
Category: missing zero_grad in a multi-optimizer loop (another loss's gradients leaking into an optimizer's step)
What gradwatch must report: missing_zero_grad on the discriminator's parameters (body.*, d_head.*).
"""
import torch
import torch.nn as nn

STEPS = 10
_D = ["body.0.weight", "body.0.bias", "d_head.weight", "d_head.bias"]
EXPECT = {"missing_zero_grad": {"must": _D, "may": []}}


def run(watch):
    torch.manual_seed(107)
    G = nn.Sequential(nn.Linear(8 + 3, 32), nn.ReLU(), nn.Linear(32, 4))
    body = nn.Sequential(nn.Linear(4, 32), nn.LeakyReLU(0.2))
    d_head, q_head = nn.Linear(32, 1), nn.Linear(32, 3)
    model = nn.ModuleDict({"G": G, "body": body, "d_head": d_head, "q_head": q_head})
    optG = torch.optim.Adam([*G.parameters(), *q_head.parameters()], lr=2e-4, betas=(0.5, 0.999))
    optD = torch.optim.Adam([*body.parameters(), *d_head.parameters()], lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    with watch(model, [optG, optD]) as w:
        for _ in range(STEPS):
            real = torch.randn(32, 4) + 1
            c = torch.randint(0, 3, (32,))
            fake = G(torch.cat([torch.randn(32, 8), nn.functional.one_hot(c, 3).float()], 1))
            (bce(d_head(body(real)), torch.ones(32, 1)) + bce(d_head(body(fake.detach())), torch.zeros(32, 1))).backward()
            optD.step()
            optD.zero_grad()
            h = body(fake)
            (bce(d_head(h), torch.ones(32, 1)) + nn.functional.cross_entropy(q_head(h), c)).backward()
            optG.step()
            optG.zero_grad()
    return w
