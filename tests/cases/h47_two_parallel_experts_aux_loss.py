"""h47 - an ensemble of two parallel experts (no expert lies behind the other), each with its own
optimizer (different learning rates); the output is the mean of both. Expert B additionally has an
auxiliary loss (a reconstruction of the input from its features) backpropagated separately. Both zeroed
at the top; main loss backward, expert A steps, B's auxiliary loss backward, B steps (on main + aux, as
intended). Steps not marked.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 12
EXPECT = {}


def run(watch):
    torch.manual_seed(105)
    exp_a = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    exp_b = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    dec_b = nn.Linear(16, 8)
    model = nn.ModuleDict({"exp_a": exp_a, "exp_b": exp_b, "dec_b": dec_b})
    opt_a = torch.optim.SGD(exp_a.parameters(), lr=0.05, momentum=0.9)
    opt_b = torch.optim.Adam([*exp_b.parameters(), *dec_b.parameters()], lr=1e-3)
    with watch(model, [opt_a, opt_b]) as w:
        for _ in range(STEPS):
            opt_a.zero_grad()
            opt_b.zero_grad()
            x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
            out = 0.5 * (exp_a(x) + exp_b(x))
            nn.functional.cross_entropy(out, y).backward()
            opt_a.step()
            hb = exp_b[1](exp_b[0](x))
            nn.functional.mse_loss(dec_b(hb), x).backward()
            opt_b.step()
    return w
