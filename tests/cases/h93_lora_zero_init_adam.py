"""h93 - LoRA-style fine-tuning: a frozen base layer plus a low-rank update B @ A with B initialised to
zeros, trained with Adam at a usual fine-tuning learning rate. B's first updates are as large as B
itself (it starts at 0: update-to-weight ratios near 1 for a step or two), and the gradient norm grows
while B grows: a trap for a learning-rate rule that looks at one layer or at the first steps only.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 20
EXPECT = {}


class LoRALinear(nn.Module):
    def __init__(self, n_in, n_out, rank=4):
        super().__init__()
        self.base = nn.Linear(n_in, n_out).requires_grad_(False)
        self.A = nn.Parameter(torch.randn(rank, n_in) * 0.01)
        self.B = nn.Parameter(torch.zeros(n_out, rank))

    def forward(self, x):
        return self.base(x) + x @ self.A.t() @ self.B.t()


def run(watch):
    torch.manual_seed(93)
    net = nn.Sequential(LoRALinear(16, 32), nn.GELU(), LoRALinear(32, 32), nn.GELU(), LoRALinear(32, 4))
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    X, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            nn.functional.cross_entropy(net(X), y).backward()
            opt.step()
    return w
