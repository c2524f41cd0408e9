"""c61 - freezing the pretrained embedding with a typo: p.requries_grad = False only sets a new Python
attribute on the tensor; emb.weight keeps requires_grad=True and keeps training.
What gradwatch must report: ineffective_freeze on emb.weight (and nothing else); no other kind.
"""
import torch
import torch.nn as nn

STEPS = 20
EXPECT = {"ineffective_freeze": {"must": ["emb.weight"], "may": []}}


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30, 8)
        self.rnn = nn.GRU(8, 16, batch_first=True)
        self.fc = nn.Linear(16, 2)

    def forward(self, tok):
        h, _ = self.rnn(self.emb(tok))
        return self.fc(h[:, -1])


def run(watch):
    torch.manual_seed(11)
    model = Model()
    for p in model.emb.parameters():
        p.requries_grad = False  # BUG: typo, no effect
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    tok = torch.randint(0, 30, (16, 6))
    y = (tok[:, -1] > 15).long()
    with watch(model, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(tok), y)
            loss.backward()
            opt.step()
    return w
