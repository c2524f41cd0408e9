"""c50 - backbone and head have separate optimizers; only the head's optimizer is zeroed.
What gradwatch must report: missing_zero_grad on every backbone.* parameter, none of head.*; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 30
_B = ["backbone.0.weight", "backbone.0.bias", "backbone.2.weight", "backbone.2.bias"]
EXPECT = {"missing_zero_grad": {"must": _B, "may": []}}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(12, 24), nn.GELU(), nn.Linear(24, 24), nn.GELU())
        self.head = nn.Linear(24, 3)

    def forward(self, x):
        return self.head(self.backbone(x))


def run(watch):
    torch.manual_seed(1)
    net = Net()
    opt_b = torch.optim.SGD(net.backbone.parameters(), lr=1e-3, momentum=0.9)
    opt_h = torch.optim.AdamW(net.head.parameters(), lr=1e-3)
    X, y = torch.randn(96, 12), torch.randint(0, 3, (96,))
    with watch(net, [opt_b, opt_h]) as w:
        for s in range(STEPS):
            idx = torch.arange(32) + 32 * (s % 3)
            opt_h.zero_grad()  # BUG: opt_b.zero_grad() forgotten
            loss = nn.functional.cross_entropy(net(X[idx]), y[idx])
            loss.backward()
            opt_b.step()
            opt_h.step()
    return w
