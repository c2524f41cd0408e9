"""c93 - WGAN: the critic is trained n_critic=5 times per generator step, with D_optim.zero_grad() only
once before the inner loop, so each critic step re-applies all earlier critic gradients of the round.

Source: https://github.com/ajbrock/BigGAN-PyTorch/issues/25 ("Any reason you don't zero optimizer
between Discriminator training steps?"; the author called it a typo and fixed it)
Category: missing zero_grad in a multi-optimizer loop
What gradwatch must report: missing_zero_grad naming the critic's weights and first bias (D.*) only; no
other kind. (D.2.bias's gradient is exactly 0 in a WGAN critic loss, mean(D(fake)) - mean(D(real)): what it
carries over is 0, so it may or may not be named.)
"""
import torch
import torch.nn as nn

ROUNDS = 6
_D = ["D.0.weight", "D.0.bias", "D.2.weight"]
EXPECT = {"missing_zero_grad": {"must": _D, "may": ["D.2.bias"]}}


def run(watch):
    torch.manual_seed(93)
    G = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
    D = nn.Sequential(nn.Linear(8, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    model = nn.ModuleDict({"G": G, "D": D})
    opt_g = torch.optim.RMSprop(G.parameters(), lr=5e-5)
    opt_d = torch.optim.RMSprop(D.parameters(), lr=5e-5)
    real = torch.randn(256, 8) + 2.0
    with watch(model, [opt_g, opt_d]) as w:
        for r in range(ROUNDS):
            opt_d.zero_grad()  # BUG: once per round, not once per critic step
            for k in range(5):
                fake = G(torch.randn(32, 4)).detach()
                (D(fake).mean() - D(real[32 * k : 32 * (k + 1)]).mean()).backward()
                opt_d.step()
            opt_g.zero_grad()
            (-D(G(torch.randn(32, 4))).mean()).backward()
            opt_g.step()
            w.step()
    return w
