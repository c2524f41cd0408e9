"""c78 - a residual adapter branch gated by a constant 0 (the gate's warm-up schedule was never turned on):
out = trunk(x) + 0.0 * adapter(x). The adapter is connected, so it receives gradients, but every entry is
exactly 0 on every step.
What gradwatch must report: all_zero_grad on adapter.* only; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 20
EXPECT = {"all_zero_grad": {"must": ["adapter.0.weight", "adapter.0.bias", "adapter.2.weight", "adapter.2.bias"],
                            "may": []}}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 10))
        self.adapter = nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 10))
        self.head = nn.Linear(10, 2)
        self.gate = 0.0  # BUG: never scheduled up

    def forward(self, x):
        return self.head(self.trunk(x) + self.gate * self.adapter(x))


def run(watch):
    torch.manual_seed(178)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    X, y = torch.randn(64, 10), torch.randint(0, 2, (64,))
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(X), y)
            loss.backward()
            opt.step()
    return w
