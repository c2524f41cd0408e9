"""h40 - two optimizers at different rates: the backbone is stepped every iteration, the head (its own
optimizer, a larger effective batch) accumulates over 2 iterations and is stepped every second one. At
the head's step, the head is stepped (and zeroed) before the backbone. Each optimizer zeroed right after
its step. Steps not marked.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 12
EXPECT = {}


def run(watch):
    torch.manual_seed(28)
    backbone = nn.Sequential(nn.Linear(10, 32), nn.ReLU())
    head = nn.Linear(32, 3)
    model = nn.ModuleDict({"backbone": backbone, "head": head})
    o_b = torch.optim.SGD(backbone.parameters(), lr=1e-2)
    o_h = torch.optim.SGD(head.parameters(), lr=1e-2)
    with watch(model, [o_b, o_h]) as w:
        for k in range(STEPS):
            x, y = torch.randn(32, 10), torch.randint(0, 3, (32,))
            (nn.functional.cross_entropy(head(backbone(x)), y) / 2).backward()
            if k % 2 == 1:
                o_h.step()
                o_h.zero_grad()
            o_b.step()
            o_b.zero_grad()
    return w
