"""h63 - head warm-up: for the first 12 steps the backbone's freshly computed gradients are dropped with
p.grad = None just before opt.step(), so only the head moves; afterwards everything trains. The backbone's
gradients are nonzero all along (nothing is dead), and each backward pass is used in part (by the head).
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 24
WARMUP = 12
EXPECT = {}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        return self.head(self.backbone(x))


def run(watch):
    torch.manual_seed(33)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    X, y = torch.randn(48, 6), torch.randint(0, 2, (48,))
    with watch(net, opt) as w:
        for s in range(STEPS):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(X), y)
            loss.backward()
            if s < WARMUP:
                for p in net.backbone.parameters():
                    p.grad = None  # head-only warm-up: the optimizer skips params without .grad
            opt.step()
    return w
