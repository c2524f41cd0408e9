"""h99 - a GAN whose discriminator loss uses the fakes without .detach(), so the discriminator's backward
also reaches the generator; each optimizer is zeroed before its own backward, so the generator's step
sees only its own loss's gradient and the discriminator's only its own. Wasteful, not wrong. Steps are
not marked.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 10
EXPECT = {}


def run(watch):
    torch.manual_seed(199)
    gen = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    disc = nn.Sequential(nn.Linear(3, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
    model = nn.ModuleDict({"gen": gen, "disc": disc})
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    with watch(model, [opt_g, opt_d]) as w:
        for _ in range(STEPS):
            real, fake = torch.randn(32, 3) + 1.0, gen(torch.randn(32, 8))
            opt_d.zero_grad()
            (bce(disc(real), torch.ones(32, 1)) + bce(disc(fake), torch.zeros(32, 1))).backward(retain_graph=True)
            opt_d.step()
            opt_g.zero_grad()  # clears what the discriminator's backward left in the generator
            bce(disc(fake), torch.ones(32, 1)).backward()
            opt_g.step()
    return w
