"""h86 - a classifier head re-initialised (reset_parameters) at the start of every epoch, as in some
continual-learning and "re-init the last layer" recipes: same Parameter objects, new values.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

EPOCHS, PER_EPOCH = 4, 6
EXPECT = {}


def run(watch):
    torch.manual_seed(86)
    net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 5))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    X, y = torch.randn(64, 10), torch.randint(0, 5, (64,))
    with watch(net, opt) as w:
        for epoch in range(EPOCHS):
            if epoch:
                net[2].reset_parameters()
            for _ in range(PER_EPOCH):
                opt.zero_grad()
                nn.functional.cross_entropy(net(X), y).backward()
                opt.step()
    return w
