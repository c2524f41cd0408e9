"""c65 - LBFGS closure that never zeroes the gradients: every closure evaluation adds onto the previous
ones, so LBFGS's line search sees accumulated garbage gradients.
What gradwatch must report: missing_zero_grad on every parameter; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 3
_ALL = ["0.weight", "0.bias", "2.weight", "2.bias"]
EXPECT = {"missing_zero_grad": {"must": _ALL, "may": []}}


def run(watch):
    torch.manual_seed(15)
    net = nn.Sequential(nn.Linear(3, 10), nn.Softplus(), nn.Linear(10, 1))
    opt = torch.optim.LBFGS(net.parameters(), lr=0.1, max_iter=4)
    X = torch.randn(50, 3)
    y = X.pow(2).sum(1, keepdim=True)

    def closure():
        # BUG: no opt.zero_grad() here
        loss = ((net(X) - y) ** 2).mean()
        loss.backward()
        return loss

    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.step(closure)
    return w
