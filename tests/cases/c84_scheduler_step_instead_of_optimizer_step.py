"""c84 - `if scheduler: scheduler.step() else: optimizer.step()`: with a scheduler configured, the
optimizer never steps; the loss stays flat and the weights never change.

Source: https://github.com/ClementPinard/SfmLearner-Pytorch/issues/5 (and
https://github.com/pytorch/pytorch/issues/3814, "Scheduler.step() doesn't perform optimizer.step()")
Category: the optimizer never steps
What gradwatch must report: not_updated naming every parameter (the optimizer never stepped); no other
kind. zero_grad() is called every iteration, so each pass's gradients are also wiped unused: the one
finding must say why.
"""
import torch
import torch.nn as nn

STEPS = 30
_ALL = ["conv.weight", "conv.bias", "fc.weight", "fc.bias"]
EXPECT = {"not_updated": {"must": _ALL, "may": []}}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def run(watch):
    torch.manual_seed(84)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    X, y = torch.randn(32, 3, 8, 8), torch.randint(0, 2, (32,))
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            nn.functional.cross_entropy(net(X), y).backward()
            if scheduler:  # BUG: meant to step the optimizer and then the scheduler
                scheduler.step()
            else:
                opt.step()
    return w
