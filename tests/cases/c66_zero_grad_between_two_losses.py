"""c66 - two losses back-propagated separately in one step, with model.zero_grad() between them (meant
to "isolate" the second loss): the reconstruction loss's gradients are wiped before the optimizer runs.
What gradwatch must report: discarded_grad on the parameters the reconstruction pass reached (enc.*,
dec.*); cls.* (only in the second pass) may not be named; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 20
_REC = ["enc.weight", "enc.bias", "dec.weight", "dec.bias"]
EXPECT = {"discarded_grad": {"must": _REC, "may": []}}


class AE(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(10, 4)
        self.dec = nn.Linear(4, 10)
        self.cls = nn.Linear(4, 2)


def run(watch):
    torch.manual_seed(16)
    m = AE()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    X, y = torch.randn(32, 10), torch.randint(0, 2, (32,))
    with watch(m, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            z = torch.tanh(m.enc(X))
            rec = ((m.dec(z) - X) ** 2).mean()
            rec.backward(retain_graph=True)
            m.zero_grad()  # BUG: throws the reconstruction gradients away
            cls = nn.functional.cross_entropy(m.cls(z), y)
            cls.backward()
            opt.step()
    return w
