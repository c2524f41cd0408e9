"""c77 - GRU over 100 time steps whose recurrent weights were initialised 8x too large (a custom
init scaled by the fan-in twice): the gradient reaching the GRU is ~1e6 times the output layer's.
clip_grad_norm_ keeps the loss from blowing up, so the run "trains" while the GRU's gradient direction is
dominated by the exploding recurrence on every step.
What gradwatch must report: exploding_grad naming the GRU's parameters (fc.* may be named too); no other kind.
"""
import torch
import torch.nn as nn

STEPS = 20
T = 100
_GRU = ["gru.weight_ih_l0", "gru.weight_hh_l0", "gru.bias_ih_l0", "gru.bias_hh_l0"]
EXPECT = {"exploding_grad": {"must": _GRU, "may": ["fc.weight", "fc.bias"]}}


class Seq(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 32, batch_first=True)
        self.fc = nn.Linear(32, 1)
        with torch.no_grad():
            self.gru.weight_hh_l0.mul_(8.0)  # BUG: recurrent init far too large

    def forward(self, x):
        o, _ = self.gru(x)
        return self.fc(o[:, -1])


def run(watch):
    torch.manual_seed(177)
    m = Seq()
    opt = torch.optim.SGD(m.parameters(), lr=1e-2)
    X, y = torch.randn(32, T, 4), torch.randn(32, 1)
    ratios = []
    with watch(m, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = ((m(X) - y) ** 2).mean()
            loss.backward()
            g = torch.cat([p.grad.flatten() for p in m.gru.parameters()]).norm()
            ratios.append(float(g / torch.cat([p.grad.flatten() for p in m.fc.parameters()]).norm()))
            nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
    assert min(ratios) > 70, ratios
    return w
