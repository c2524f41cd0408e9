"""c43 - CycleGAN, generators first (one optimizer for both), then D_A and D_B (separate optimizers),
every optimizer zeroed right after its step, discriminators not frozen during the generators' update:
the generators' adversarial terms leak into both discriminators. w.step() per iteration.
Source: https://github.com/Lightning-AI/pytorch-lightning/issues/557 (generator first, the discriminators'
zero_grad only after the generator's gradients were added; here CycleGAN's two discriminators)
Category: missing zero_grad in a multi-optimizer loop (another loss's gradients leaking into an optimizer's step)
What gradwatch must report: missing_zero_grad on D_A.* and D_B.*.
"""
import itertools
import torch
import torch.nn as nn

STEPS = 10
_D = [f"{d}.{i}.{k}" for d in ("D_A", "D_B") for i in (0, 2) for k in ("weight", "bias")]
EXPECT = {"missing_zero_grad": {"must": _D, "may": []}}


def run(watch):
    torch.manual_seed(118)
    def net(i, o):
        return nn.Sequential(nn.Linear(i, 24), nn.ReLU(), nn.Linear(24, o))
    G_AB, G_BA, D_A, D_B = net(5, 5), net(5, 5), net(5, 1), net(5, 1)
    model = nn.ModuleDict({"G_AB": G_AB, "G_BA": G_BA, "D_A": D_A, "D_B": D_B})
    opt_G = torch.optim.Adam(itertools.chain(G_AB.parameters(), G_BA.parameters()), lr=2e-4, betas=(0.5, 0.999))
    opt_DA = torch.optim.Adam(D_A.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_DB = torch.optim.Adam(D_B.parameters(), lr=2e-4, betas=(0.5, 0.999))
    mse, l1 = nn.MSELoss(), nn.L1Loss()
    with watch(model, [opt_G, opt_DA, opt_DB]) as w:
        for _ in range(STEPS):
            a, b = torch.randn(16, 5), torch.randn(16, 5) * 2 + 1
            fb, fa = G_AB(a), G_BA(b)
            loss_G = (mse(D_B(fb), torch.ones(16, 1)) + mse(D_A(fa), torch.ones(16, 1))
                      + 10 * (l1(G_BA(fb), a) + l1(G_AB(fa), b)))
            loss_G.backward()
            opt_G.step()
            opt_G.zero_grad()
            (0.5 * (mse(D_A(a), torch.ones(16, 1)) + mse(D_A(fa.detach()), torch.zeros(16, 1)))).backward()
            opt_DA.step()
            opt_DA.zero_grad()
            (0.5 * (mse(D_B(b), torch.ones(16, 1)) + mse(D_B(fb.detach()), torch.zeros(16, 1)))).backward()
            opt_DB.step()
            opt_DB.zero_grad()
            w.step()
    return w
