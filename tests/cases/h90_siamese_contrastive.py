"""h90 - a siamese encoder applied to both halves of each pair (two forward passes through the same
weights, one backward of a contrastive loss).
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 15
EXPECT = {}


def run(watch):
    torch.manual_seed(90)
    enc = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    opt = torch.optim.Adam(enc.parameters(), lr=1e-3)
    with watch(enc, opt) as w:
        for _ in range(STEPS):
            a = torch.randn(24, 16)
            b = a + 0.1 * torch.randn_like(a)
            same = torch.rand(24) < 0.5
            b[~same] = torch.randn(int((~same).sum()), 16)
            d = (enc(a) - enc(b)).norm(dim=1)
            loss = torch.where(same, d.pow(2), torch.relu(1.0 - d).pow(2)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return w
