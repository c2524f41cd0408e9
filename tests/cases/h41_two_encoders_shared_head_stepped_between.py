"""h41 - h97 (two encoders with their own optimizers, one shared head with its own, all zeroed at the
top, head stepped last) with w.step() per iteration and the head stepped between the two encoders.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 12
EXPECT = {}


def run(watch):
    torch.manual_seed(34)
    enc_a = nn.Sequential(nn.Linear(10, 24), nn.ReLU())
    enc_b = nn.Sequential(nn.Linear(6, 24), nn.ReLU())
    head = nn.Linear(24, 3)
    model = nn.ModuleDict({"enc_a": enc_a, "enc_b": enc_b, "head": head})
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (enc_a, enc_b, head)]
    opt_a, opt_b, opt_head = opts
    with watch(model, opts) as w:
        for _ in range(STEPS):
            for opt in opts:
                opt.zero_grad()
            xa, ya = torch.randn(32, 10), torch.randint(0, 3, (32,))
            xb, yb = torch.randn(32, 6), torch.randint(0, 3, (32,))
            nn.functional.cross_entropy(head(enc_a(xa)), ya).backward()
            opt_a.step()
            nn.functional.cross_entropy(head(enc_b(xb)), yb).backward()
            opt_head.step()
            opt_b.step()
            w.step()
    return w
