"""h57 - CNN with BatchNorm and Dropout; every 5 steps an eval pass under torch.no_grad() in eval mode.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 25
EXPECT = {}


def run(watch):
    torch.manual_seed(27)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Dropout(0.3), nn.Linear(8, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    X, y = torch.randn(32, 1, 10, 10), torch.randint(0, 3, (32,))
    Xv = torch.randn(16, 1, 10, 10)
    with watch(net, opt) as w:
        for s in range(STEPS):
            net.train()
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(X), y)
            loss.backward()
            opt.step()
            if s % 5 == 4:
                net.eval()
                with torch.no_grad():
                    net(Xv).argmax(1)
    return w
