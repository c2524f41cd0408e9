"""h56 - tiny causal transformer LM with the output projection tied to the token embedding.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 15
EXPECT = {}


class LM(nn.Module):
    def __init__(self, V=40, d=32):
        super().__init__()
        self.tok = nn.Embedding(V, d)
        self.pos = nn.Parameter(torch.randn(12, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, V, bias=False)
        self.lm_head.weight = self.tok.weight  # weight tying

    def forward(self, t):
        T = t.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(T)
        h = self.blocks(self.tok(t) + self.pos[:T], mask=mask, is_causal=True)
        return self.lm_head(self.norm(h))


def run(watch):
    torch.manual_seed(26)
    lm = LM()
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-3, weight_decay=0.01)
    data = torch.randint(0, 40, (16, 13))
    with watch(lm, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            logits = lm(data[:, :-1])
            loss = nn.functional.cross_entropy(logits.reshape(-1, 40), data[:, 1:].reshape(-1))
            loss.backward()
            opt.step()
    return w
