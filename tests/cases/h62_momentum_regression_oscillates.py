"""h62 - textbook 1-D linear regression (y = 3x, no bias, weight starts at 0) with SGD heavy-ball momentum
0.9: the weight overshoots 3, so the gradient passes close to 0 (step 13: 0.004) and rises again for a
few steps, to at most a quarter of its initial value. A damped oscillation that converges; nothing explodes.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 40
EXPECT = {}


def run(watch):
    torch.manual_seed(0)
    X = torch.randn(64, 1)
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    y = 3 * X
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with watch(model, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = ((model(X) - y) ** 2).mean()
            loss.backward()
            opt.step()
    return w
