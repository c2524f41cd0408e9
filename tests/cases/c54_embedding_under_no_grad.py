"""c54 - text classifier whose embedding lookup is wrapped in torch.no_grad() ("it's just a lookup"),
so the embedding table never trains though it is in the optimizer.
What gradwatch must report: no_grad on emb.weight only; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 25
EXPECT = {"no_grad": {"must": ["emb.weight"], "may": []}}


class TextCls(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 16, padding_idx=0)
        self.conv = nn.Conv1d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, tok):
        with torch.no_grad():  # BUG
            e = self.emb(tok)
        h = torch.relu(self.conv(e.transpose(1, 2))).amax(-1)
        return self.fc(h)


def run(watch):
    torch.manual_seed(5)
    model = TextCls()
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    tok = torch.randint(1, 100, (40, 12))
    y = tok[:, 0] % 4
    with watch(model, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(tok), y)
            loss.backward()
            opt.step()
    return w
