"""c82 - nn.Embedding(sparse=True) with SparseAdam plus Adam for the dense tower; the loop zeroes only the
dense optimizer (opt_s.zero_grad() was lost when the two optimizers were split). The embedding's sparse
.grad keeps every earlier batch's rows, so each SparseAdam step re-applies all earlier gradients.
What gradwatch must report: missing_zero_grad on emb.weight only; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 20
EXPECT = {"missing_zero_grad": {"must": ["emb.weight"], "may": []}}


class Rec(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(200, 16, sparse=True)
        self.tower = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, u, i):
        return self.tower(torch.cat([self.emb(u), self.emb(i)], -1)).squeeze(-1)


def run(watch):
    torch.manual_seed(182)
    m = Rec()
    opt_s = torch.optim.SparseAdam(list(m.emb.parameters()), lr=1e-2)
    opt_d = torch.optim.Adam(m.tower.parameters(), lr=1e-3)
    nnz = []
    with watch(m, [opt_s, opt_d]) as w:
        for _ in range(STEPS):
            u, i = torch.randint(0, 100, (64,)), torch.randint(100, 200, (64,))
            y = ((u + i) % 2).float()
            opt_d.zero_grad()  # BUG: opt_s.zero_grad() missing
            loss = nn.functional.binary_cross_entropy_with_logits(m(u, i), y)
            loss.backward()
            nnz.append(m.emb.weight.grad.coalesce()._nnz())
            opt_s.step()
            opt_d.step()
    assert nnz[-1] > nnz[0]  # the bug is real: rows of earlier batches are still in .grad
    return w
