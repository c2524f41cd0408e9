"""h97 - two domain-specific encoders, each with its own optimizer, feed one shared classifier head that
has an optimizer of its own (stepped last). Each domain's loss reaches the head first, then its encoder;
the head's optimizer steps on the sum of both domains' gradients, which is the point of sharing it.
Every optimizer is zeroed at the start of the iteration. Steps are not marked.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 12
EXPECT = {}


def run(watch):
    torch.manual_seed(97)
    enc_a = nn.Sequential(nn.Linear(10, 24), nn.ReLU())
    enc_b = nn.Sequential(nn.Linear(6, 24), nn.ReLU())
    head = nn.Linear(24, 3)
    model = nn.ModuleDict({"enc_a": enc_a, "enc_b": enc_b, "head": head})
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (enc_a, enc_b, head)]
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
            opt_b.step()
            opt_head.step()
    return w
