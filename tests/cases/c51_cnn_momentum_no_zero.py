"""c51 - small CNN with SGD+momentum+weight decay, zero_grad never called (it is commented out).
What gradwatch must report: missing_zero_grad on every parameter; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 20
_ALL = ["0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias"]
EXPECT = {"missing_zero_grad": {"must": _ALL, "may": []}}


def run(watch):
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    X, y = torch.randn(32, 1, 12, 12), torch.randint(0, 5, (32,))
    with watch(net, opt) as w:
        for _ in range(STEPS):
            # opt.zero_grad()   BUG: commented out while debugging and never restored
            loss = nn.functional.cross_entropy(net(X), y)
            loss.backward()
            opt.step()
    return w
