"""c42 - SRGAN-style: G's loss = adversarial (through D) + perceptual (features of a fixed 'VGG' that was
not frozen: its parameters still require grad, though no optimizer holds them - it lives in the same
container module). D first, each optimizer zeroed right after its step: G's loss leaks into D.
Source: https://github.com/leffff/FlowModels/issues/3 (the generator's backward leaves gradients in the
discriminator, used by the next discriminator step; here with a perceptual term)
Category: missing zero_grad in a multi-optimizer loop (another loss's gradients leaking into an optimizer's step)
What gradwatch must report: missing_zero_grad on D.* (vgg.* is in no optimizer: not_updated on it is allowed).
"""
import torch
import torch.nn as nn

STEPS = 10
_D = ["D.0.weight", "D.0.bias", "D.2.weight", "D.2.bias"]
_VGG = ["vgg.0.weight", "vgg.0.bias", "vgg.2.weight", "vgg.2.bias"]
EXPECT = {"missing_zero_grad": {"must": _D, "may": []}, "not_updated": {"must": [], "may": _VGG}}


def run(watch):
    torch.manual_seed(126)
    G = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 6))
    D = nn.Sequential(nn.Linear(6, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
    vgg = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16))  # "pretrained", forgot requires_grad_(False)
    model = nn.ModuleDict({"G": G, "D": D, "vgg": vgg})
    optG = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.9, 0.999))
    optD = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.9, 0.999))
    bce = nn.BCEWithLogitsLoss()
    with watch(model, [optG, optD]) as w:
        for _ in range(STEPS):
            lr_img = torch.randn(16, 6)
            hr = lr_img * 2 + 0.1
            sr = G(lr_img)
            (bce(D(hr), torch.ones(16, 1)) + bce(D(sr.detach()), torch.zeros(16, 1))).backward()
            optD.step()
            optD.zero_grad()
            adv = bce(D(sr), torch.ones(16, 1))
            with torch.no_grad():
                f_hr = vgg(hr)
            perc = nn.functional.mse_loss(vgg(sr), f_hr)
            (1e-3 * adv + perc).backward()
            optG.step()
            optG.zero_grad()
    return w
