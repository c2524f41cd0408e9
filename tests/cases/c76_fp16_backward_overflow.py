"""c76 - a "memory-saving" block runs in float16: h.half() is scaled down by 1e-4 and back up by 1e5
(a rescaling meant to keep values in range). The forward stays finite (values ~10), but the backward of
the 1e5 multiply produces gradients above float16's max (65504) -> inf, born between mid and out; mid and
everything before it receive inf while the loss is finite. Plain SGD then writes inf/NaN into the weights.
What gradwatch must report: nonfinite_grad naming mid.* (the origin; inp.* only received the inf by
propagation, which the message says without naming them: issue 16); later steps, once the weights are NaN,
may name anything; other kinds that follow from NaN weights are tolerated.
"""
import torch
import torch.nn as nn

STEPS = 6
EXPECT = {"nonfinite_grad": {"must": ["mid.weight", "mid.bias"], "may": "*"}}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 32)
        self.mid = nn.Linear(32, 32)
        self.out = nn.Linear(32, 1)

    def forward(self, x):
        h = self.mid(torch.relu(self.inp(x)))
        h = (h.half() * 1e-4) * 1e5  # BUG: backward of "* 1e5" overflows float16
        return self.out(h.float())


def run(watch):
    torch.manual_seed(176)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    X, y = torch.randn(64, 8), torch.randn(64, 1)
    with watch(net, opt) as w:
        for s in range(STEPS):
            opt.zero_grad()
            loss = (net(X) - y).pow(2).sum() * 10.0
            if s == 0:
                assert torch.isfinite(loss)
                w.record_loss(loss)
            loss.backward()
            if s == 0:
                assert not torch.isfinite(net.mid.weight.grad).all() and torch.isfinite(net.out.weight.grad).all()
            opt.step()
    return w
