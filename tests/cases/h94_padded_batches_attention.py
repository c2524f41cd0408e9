"""h94 - a transformer classifier on padded batches: many keys of every row are masked with -inf
(key_padding_mask), but every sequence keeps at least one real token, so every softmax row is finite. The
autograd graph holds -inf masks and exact zeros everywhere; nothing is wrong.

Category: healthy loop around the forward-pass NaN origin rule (masked attention, -inf in the graph)
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 12
EXPECT = {}


class Classifier(nn.Module):
    def __init__(self, vocab=50, dim=16, classes=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens):
        pad = tokens == 0
        h = self.emb(tokens)
        mask = torch.triu(torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool), 1)
        a, _ = self.attn(h, h, h, key_padding_mask=pad, attn_mask=mask)  # causal, and padded keys
        return self.head(a[:, 0])  # the first token: always real, sees only itself


def run(watch):
    torch.manual_seed(94)
    net = Classifier()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    with watch(net, opt) as w:
        for _ in range(STEPS):
            lengths = torch.randint(1, 9, (6,))
            tokens = torch.randint(1, 50, (6, 8)) * (torch.arange(8) < lengths[:, None])
            y = torch.randint(0, 3, (6,))
            opt.zero_grad()
            nn.functional.cross_entropy(net(tokens), y).backward()
            opt.step()
    return w
