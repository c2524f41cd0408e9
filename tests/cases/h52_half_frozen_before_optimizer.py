"""h52 - transfer learning: the first two blocks are frozen with requires_grad_(False) and the optimizer is
built from the parameters that still require grad. The frozen blocks get no gradient by design.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 25
EXPECT = {}


def run(watch):
    torch.manual_seed(22)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                        nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    for layer in list(net)[:4]:
        layer.requires_grad_(False)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    X, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(X), y)
            loss.backward()
            opt.step()
    return w
