"""c67 - freezing an encoder module with a misspelt attribute: model.encoder.require_grad = False sets a
Python attribute on the module; its parameters keep requires_grad=True and train.
What gradwatch must report: ineffective_freeze on every encoder.* parameter (none of decoder.*); no other kind.
"""
import torch
import torch.nn as nn

STEPS = 20
_ENC = ["encoder.0.weight", "encoder.0.bias", "encoder.2.weight", "encoder.2.bias"]
EXPECT = {"ineffective_freeze": {"must": _ENC, "may": []}}


class AE(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(12, 8), nn.ELU(), nn.Linear(8, 3))
        self.decoder = nn.Sequential(nn.Linear(3, 8), nn.ELU(), nn.Linear(8, 12))

    def forward(self, x):
        return self.decoder(self.encoder(x))


def run(watch):
    torch.manual_seed(17)
    model = AE()
    model.encoder.require_grad = False  # BUG: misspelt, and on a module
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    X = torch.randn(32, 12)
    with watch(model, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = ((model(X) - X) ** 2).mean()
            loss.backward()
            opt.step()
    return w
