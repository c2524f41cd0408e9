"""c52 - accumulation over 3 micro-batches with Adam, but zero_grad(set_to_none=False) sits inside the
window (before each backward), so only the last micro-batch of each window reaches the optimizer.
What gradwatch must report: discarded_grad on every parameter; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 15
K = 3
_ALL = ["emb.weight", "proj.weight", "proj.bias", "out.weight", "out.bias"]
EXPECT = {"discarded_grad": {"must": _ALL, "may": []}}


class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.EmbeddingBag(50, 16, mode="mean")
        self.proj = nn.Linear(16, 16)
        self.out = nn.Linear(16, 2)

    def forward(self, tok):
        return self.out(torch.relu(self.proj(self.emb(tok))))


def run(watch):
    torch.manual_seed(3)
    model = Bag()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    tok = torch.randint(0, 50, (48, 7))
    y = (tok[:, 0] > 25).long()
    with watch(model, opt) as w:
        for i in range(STEPS * K):
            sl = slice((i % 6) * 8, (i % 6) * 8 + 8)
            opt.zero_grad(set_to_none=False)  # BUG: inside the accumulation window
            loss = nn.functional.cross_entropy(model(tok[sl]), y[sl]) / K
            loss.backward()
            if i % K == K - 1:
                opt.step()
    return w
