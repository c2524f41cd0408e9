"""h50 - zero_grad(set_to_none=False) after step(), first backward from fresh .grad: correct.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 25
EXPECT = {}


def run(watch):
    torch.manual_seed(20)
    net = nn.Sequential(nn.Conv1d(2, 6, 5), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 12, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    X, y = torch.randn(32, 2, 16), torch.randn(32, 1)
    with watch(net, opt) as w:
        for _ in range(STEPS):
            loss = nn.functional.smooth_l1_loss(net(X), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=False)
    return w
