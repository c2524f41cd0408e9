"""h74 - AdamW with strong decoupled weight decay (0.3); a gating layer that is only used on odd steps
(its .grad is None on even steps after zero_grad(set_to_none=True), so AdamW skips it), and a
"temperature" scalar whose gradient is tiny but nonzero. Everything trains as intended.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 30
EXPECT = {}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.gate = nn.Linear(32, 32)
        self.head = nn.Linear(32, 3)
        self.temp = nn.Parameter(torch.tensor(1.0))

    def forward(self, x, use_gate):
        h = self.body(x)
        if use_gate:
            h = h * torch.sigmoid(self.gate(h))
        return self.head(h) / self.temp


def run(watch):
    torch.manual_seed(74)
    net = Net()
    decay = [p for n, p in net.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in net.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.3},
                             {"params": no_decay, "weight_decay": 0.0}], lr=2e-3)
    X, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    with watch(net, opt) as w:
        for s in range(STEPS):
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(net(X, s % 2 == 1), y)
            loss.backward()
            opt.step()
    return w
