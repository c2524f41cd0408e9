"""c38 - GAN whose discriminator is built from StyleGAN2-style EqualLinear layers (equalized learning rate:
the weight is read as `weight * scale`, the bias as `bias * lr_mul`, as in rosinality/stylegan2-pytorch),
D first, each optimizer zeroed right after its step (the leffff/FlowModels#3 leak): G's loss through D
stays in D's .grad and D applies it with its own gradient at the next step. Steps not marked.
Source: https://github.com/leffff/FlowModels/issues/3 (the generator's backward leaves gradients in the
discriminator, used by the next discriminator step); here with StyleGAN2's equalized-learning-rate layers
Category: missing zero_grad in a multi-optimizer loop (another loss's gradients leaking into an optimizer's step)
What gradwatch must report: missing_zero_grad on D.*.
"""
import math
import torch
import torch.nn as nn
import torch.nn.functional as F

STEPS = 10


class EqualLinear(nn.Module):
    def __init__(self, i, o, lr_mul=1.0, activation=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(o, i) / lr_mul)
        self.bias = nn.Parameter(torch.zeros(o))
        self.scale = (1 / math.sqrt(i)) * lr_mul
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x):
        if self.activation:
            out = F.linear(x, self.weight * self.scale)
            return F.leaky_relu(out + self.bias * self.lr_mul, 0.2) * math.sqrt(2)  # fused_leaky_relu
        return F.linear(x, self.weight * self.scale, bias=self.bias * self.lr_mul)


_D = [f"D.{i}.{k}" for i in range(3) for k in ("weight", "bias")]
EXPECT = {"missing_zero_grad": {"must": _D, "may": []}}


def run(watch):
    torch.manual_seed(301)
    G = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    D = nn.Sequential(EqualLinear(4, 32, activation=True), EqualLinear(32, 32, activation=True), EqualLinear(32, 1))
    model = nn.ModuleDict({"G": G, "D": D})
    optG = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.0, 0.99))
    optD = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.0, 0.99))
    with watch(model, [optG, optD]) as w:
        for _ in range(STEPS):
            real = torch.randn(32, 4) + 1
            fake = G(torch.randn(32, 8))
            (F.softplus(-D(real)).mean() + F.softplus(D(fake.detach())).mean()).backward()
            optD.step()
            optD.zero_grad()
            F.softplus(-D(fake)).mean().backward()
            optG.step()
            optG.zero_grad()
    return w
