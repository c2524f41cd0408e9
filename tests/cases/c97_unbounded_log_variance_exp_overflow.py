"""c97 - heteroscedastic regression with a Gaussian negative log-likelihood written by hand,
0.5 * log_var + 0.5 * (y - mu)^2 * exp(-log_var), and an unbounded log-variance head. A batch with
outlying features from step OUTLIER_STEP drives log_var below -88, exp(-log_var) overflows float32 to Inf
in the forward pass and the loss is Inf; the backward pass then spreads Inf/NaN into every gradient.

Source: https://github.com/vanderschaarlab/synthcity/issues/331 ("Numerical instability in VAE": unbounded
log variances explode when exponentiated; the fix is to clamp them)
Category: NaN/Inf born in a layer (in the forward pass)
What gradwatch must report: nonfinite_grad naming the log-variance head (log_var.weight, log_var.bias), the
layer whose output the overflowing exp reads, at step OUTLIER_STEP; later steps may name anything.
"""
import torch
import torch.nn as nn

STEPS = 8
OUTLIER_STEP = 5
EXPECT = {"nonfinite_grad": {"must": ["log_var.weight", "log_var.bias"], "may": "*"}}


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 16), nn.Tanh())
        self.mu = nn.Linear(16, 1)
        self.log_var = nn.Linear(4, 1)  # reads the raw features: unbounded

    def forward(self, x):
        return self.mu(self.body(x)), self.log_var(x)


def run(watch):
    torch.manual_seed(97)
    net = Regressor()
    with torch.no_grad():
        net.log_var.weight.fill_(0.5)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    with watch(net, opt) as w:
        for step in range(STEPS):
            x = torch.randn(16, 4)
            if step >= OUTLIER_STEP:
                x[3] = -60.0  # an outlier: log_var about -120, exp(120) overflows float32
            y = x.sum(1, keepdim=True) * 0.1 + 0.05 * torch.randn(16, 1)
            mu, log_var = net(x)
            loss = (0.5 * log_var + 0.5 * (y - mu) ** 2 * torch.exp(-log_var)).mean()  # BUG: no clamp
            opt.zero_grad()
            loss.backward()
            opt.step()
    return w
