"""c99 - GAN trained generator-first, each optimizer zeroed right after its own step (the loop of an early
Lightning GAN template: for each optimizer in turn, its loss's backward, step(), zero_grad()). The
generator's adversarial loss backpropagates through the discriminator and leaves gradients in it; the
discriminator's own backward then adds to them, and its step applies both: every discriminator update
also pushes it to call the generator's fakes real. Steps are not marked (no w.step()).

Source: https://github.com/Lightning-AI/pytorch-lightning/issues/557 ("The gan template does not seem to
set properly the gradients of the discriminator to zero": zero_grad() for the discriminator is only
called once all the gradients are accumulated, including the ones from the generator's update)
Category: missing zero_grad in a multi-optimizer loop (generator gradients leaking into the discriminator)
What gradwatch must report: missing_zero_grad naming the discriminator's parameters (disc.*); no gen.*
parameter; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 10
_DISC = ["disc.0.weight", "disc.0.bias", "disc.2.weight", "disc.2.bias", "disc.4.weight", "disc.4.bias"]
EXPECT = {"missing_zero_grad": {"must": _DISC, "may": []}}


def run(watch):
    torch.manual_seed(99)
    gen = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    disc = nn.Sequential(nn.Linear(3, 32), nn.LeakyReLU(0.2), nn.Linear(32, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    model = nn.ModuleDict({"gen": gen, "disc": disc})
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    data = torch.randn(320, 3) @ torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    with watch(model, [opt_g, opt_d]) as w:
        for k in range(STEPS):
            real = data[32 * k : 32 * (k + 1)]
            fake = gen(torch.randn(32, 8))
            # optimizer 0: the generator
            g_loss = bce(disc(fake), torch.ones(32, 1))
            g_loss.backward()  # also fills disc's gradients...
            opt_g.step()
            opt_g.zero_grad()
            # optimizer 1: the discriminator
            d_loss = bce(disc(real), torch.ones(32, 1)) + bce(disc(fake.detach()), torch.zeros(32, 1))
            d_loss.backward()  # BUG: ...which this adds to
            opt_d.step()
            opt_d.zero_grad()
    return w
