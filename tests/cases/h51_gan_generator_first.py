"""h51 - GAN with the generator step first, then the discriminator step. G's backward fills D's .grad,
which opt_D.zero_grad() then clears before D's own backward: the G pass was used by opt_G, so nothing
is discarded, and D never steps on stale gradients.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 30
EXPECT = {}


def run(watch):
    torch.manual_seed(21)
    G = nn.Sequential(nn.Linear(3, 12), nn.Tanh(), nn.Linear(12, 2))
    D = nn.Sequential(nn.Linear(2, 12), nn.LeakyReLU(0.1), nn.Linear(12, 1))
    gan = nn.ModuleDict({"gen": G, "disc": D})
    opt_G = torch.optim.RMSprop(G.parameters(), lr=5e-4)
    opt_D = torch.optim.SGD(D.parameters(), lr=1e-2, momentum=0.5)
    real = torch.randn(128, 2) * 0.3 + 1.0
    bce = nn.BCEWithLogitsLoss()
    with watch(gan, [opt_D, opt_G]) as w:
        for s in range(STEPS):
            z = torch.randn(32, 3)
            opt_G.zero_grad()
            fake = G(z)
            g_loss = bce(D(fake), torch.ones(32, 1))
            g_loss.backward()
            opt_G.step()
            opt_D.zero_grad()
            xb = real[(s * 32) % 128:(s * 32) % 128 + 32]
            d_loss = bce(D(xb), torch.ones(32, 1)) + bce(D(fake.detach()), torch.zeros(32, 1))
            d_loss.backward()
            opt_D.step()
    return w
