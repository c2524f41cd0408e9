"""h81 - "pretrained" backbone with a classifier head that is re-initialised in place once, with
head.reset_parameters() at step 10 (a new task starts); the optimizer's state for the head is left as is.
The same tensors stay in the optimizer and keep training after the reset.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 25
RESET = 10
EXPECT = {}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.backbone(x))


def run(watch):
    torch.manual_seed(81)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    X = torch.randn(64, 10)
    y1, y2 = torch.randint(0, 4, (64,)), (X[:, 0] > 0).long() + 2 * (X[:, 1] > 0).long()
    with watch(net, opt) as w:
        for s in range(STEPS):
            if s == RESET:
                net.head.reset_parameters()
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(X), y1 if s < RESET else y2)
            loss.backward()
            opt.step()
    return w
