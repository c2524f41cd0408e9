"""c96 - a small transformer text classifier with nn.MultiheadAttention and key_padding_mask. From step
PAD_STEP one sequence of the batch is empty (all padding), so its every key is masked: the softmax over a
row of -inf returns NaN in the forward pass, the loss is NaN, and in the backward pass every gradient
gets NaN at once (the classifier head, nearest the loss, first).

Source: https://github.com/pytorch/pytorch/issues/40932 ("MultiheadAttention set(-inf) cause 'Nan' in
loss computing": a batch with one sequence made entirely of padding)
Category: NaN/Inf born in a layer (in the forward pass)
What gradwatch must report: nonfinite_grad naming the attention layer's parameters (attn.in_proj_weight,
attn.in_proj_bias: the op that made the NaN is the attention's softmax) at step PAD_STEP, not only the
head the backward pass reached first; later steps (the update made every weight NaN) may name anything.
"""
import torch
import torch.nn as nn

STEPS = 10
PAD_STEP = 6
EXPECT = {"nonfinite_grad": {"must": ["attn.in_proj_weight", "attn.in_proj_bias"], "may": "*"}}


class Classifier(nn.Module):
    def __init__(self, vocab=50, dim=16, classes=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens):
        pad = tokens == 0
        h = self.emb(tokens)
        a, _ = self.attn(h, h, h, key_padding_mask=pad)  # BUG: an all-padding row -> softmax of -inf
        h = self.norm(h + a)
        keep = (~pad).unsqueeze(-1).float()
        return self.head((h * keep).sum(1) / keep.sum(1).clamp_min(1.0))


def run(watch):
    torch.manual_seed(96)
    net = Classifier()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    with watch(net, opt) as w:
        for step in range(STEPS):
            lengths = torch.randint(3, 9, (6,))
            if step >= PAD_STEP:
                lengths[2] = 0  # an empty text after filtering: nothing but padding
            tokens = torch.randint(1, 50, (6, 8)) * (torch.arange(8) < lengths[:, None])
            y = torch.randint(0, 3, (6,))
            opt.zero_grad()
            nn.functional.cross_entropy(net(tokens), y).backward()
            opt.step()
    return w
