"""c63 - param groups built by hand for weight decay: decay on head.weight, no decay on the body, and
head.bias was left out of every group. It gets a gradient every step and never moves.
What gradwatch must report: not_updated on head.bias only; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 20
EXPECT = {"not_updated": {"must": ["head.bias"], "may": []}}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 20), nn.Tanh())
        self.head = nn.Linear(20, 2)

    def forward(self, x):
        return self.head(self.body(x))


def run(watch):
    torch.manual_seed(13)
    net = Net()
    opt = torch.optim.AdamW([{"params": list(net.body.parameters()), "weight_decay": 0.0},
                             {"params": [net.head.weight], "weight_decay": 0.01}], lr=1e-2)  # BUG: no head.bias
    X, y = torch.randn(40, 5), torch.randint(0, 2, (40,))
    with watch(net, opt) as w:
        for _ in range(STEPS):
            net.zero_grad()
            loss = nn.functional.cross_entropy(net(X), y)
            loss.backward()
            opt.step()
    return w
