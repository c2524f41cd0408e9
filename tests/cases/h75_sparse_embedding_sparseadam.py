"""h75 - recommender-style model: nn.Embedding(sparse=True) trained by torch.optim.SparseAdam, the dense
tower by Adam; both optimizers watched, both zeroed before each backward. The embedding's .grad is a
sparse COO tensor.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 25
EXPECT = {}


class Rec(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(200, 16, sparse=True)
        self.tower = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, u, i):
        return self.tower(torch.cat([self.emb(u), self.emb(i)], -1)).squeeze(-1)


def run(watch):
    torch.manual_seed(75)
    m = Rec()
    opt_s = torch.optim.SparseAdam(list(m.emb.parameters()), lr=1e-2)
    opt_d = torch.optim.Adam(m.tower.parameters(), lr=1e-3)
    with watch(m, [opt_s, opt_d]) as w:
        for _ in range(STEPS):
            u, i = torch.randint(0, 100, (64,)), torch.randint(100, 200, (64,))
            y = ((u + i) % 2).float()
            opt_s.zero_grad()
            opt_d.zero_grad()
            loss = nn.functional.binary_cross_entropy_with_logits(m(u, i), y)
            loss.backward()
            opt_s.step()
            opt_d.step()
    return w
