"""c73 - a VQ-style bottleneck without a straight-through estimator: the encoder's logits over a
codebook go through argmax, and the chosen code vectors (an Embedding) feed the decoder. argmax has no
gradient, so the encoder never receives one; codebook and decoder train.
What gradwatch must report: no_grad on enc.* only; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 20
EXPECT = {"no_grad": {"must": ["enc.0.weight", "enc.0.bias", "enc.2.weight", "enc.2.bias"], "may": []}}


class VQ(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 16))
        self.codebook = nn.Embedding(16, 8)
        self.dec = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 12))

    def forward(self, x):
        code = self.enc(x).argmax(-1)  # BUG: no straight-through path
        return self.dec(self.codebook(code))


def run(watch):
    torch.manual_seed(173)
    m = VQ()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    X = torch.randn(64, 12)
    with watch(m, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = ((m(X) - X) ** 2).mean()
            loss.backward()
            opt.step()
    assert m.enc[0].weight.grad is None
    return w
