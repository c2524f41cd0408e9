"""c55 - discriminative learning rates: the head's param group was given lr=0.0 (a config default that
was never overridden), so the head gets gradients every step but never moves.
What gradwatch must report: not_updated on head.weight and head.bias; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 25
EXPECT = {"not_updated": {"must": ["head.weight", "head.bias"], "may": []}}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(self.body(x))


def run(watch):
    torch.manual_seed(6)
    net = Net()
    head_lr = 0.0  # BUG
    opt = torch.optim.SGD([{"params": net.body.parameters(), "lr": 0.05},
                           {"params": net.head.parameters(), "lr": head_lr}], momentum=0.9)
    X = torch.randn(64, 8)
    y = X[:, :1] * X[:, 1:2]
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = ((net(X) - y) ** 2).mean()
            loss.backward()
            opt.step()
    return w
