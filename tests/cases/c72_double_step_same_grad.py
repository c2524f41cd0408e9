"""c72 - optimizer.step() called twice per backward (once in the loop, once more in a copy-pasted
"logging" block), with no zero_grad in between: every gradient is applied twice, the second time as a
stale gradient the optimizer already used.
What gradwatch must report: missing_zero_grad on every parameter (a step on .grad that holds only the
gradient the same optimizer used at its previous step); no other kind.
"""
import torch
import torch.nn as nn

STEPS = 20
_ALL = ["0.weight", "0.bias", "2.weight", "2.bias"]
EXPECT = {"missing_zero_grad": {"must": _ALL, "may": []}}


def run(watch):
    torch.manual_seed(172)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    X, y = torch.randn(48, 6), torch.randint(0, 2, (48,))
    with watch(net, opt) as w:
        for s in range(STEPS):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(X), y)
            loss.backward()
            opt.step()
            if s % 1 == 0:  # "log every step" block copied from the training loop
                opt.step()  # BUG: second step on the same gradient
    return w
