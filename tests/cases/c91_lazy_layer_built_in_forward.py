"""c91 - the output projection is created inside forward(): a new, untrained nn.Linear at every call,
registered on the module after the optimizer was built, so no optimizer ever holds it.

Source: https://github.com/graykode/nlp-tutorial/issues/29 ("If create the Linear() casually, it won't
be trained during training.")
Category: parameters that appear after attach
What gradwatch must report: new_param naming proj.weight and proj.bias (in no optimizer); no other kind.
"""
import torch
import torch.nn as nn

STEPS = 8
EXPECT = {"new_param": {"must": ["proj.weight", "proj.bias"], "may": []}}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.mix = nn.Linear(16, 16)

    def forward(self, tokens):
        h = torch.relu(self.mix(self.emb(tokens))).mean(1)
        self.proj = nn.Linear(16, 20)  # BUG: built (and re-initialised) at every call
        return self.proj(h)


def run(watch):
    torch.manual_seed(91)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    tokens, y = torch.randint(0, 20, (24, 6)), torch.randint(0, 20, (24,))
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            nn.functional.cross_entropy(net(tokens), y).backward()
            opt.step()
    return w
