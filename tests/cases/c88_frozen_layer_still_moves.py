"""c88 - fine-tuning: after a few epochs the first layer is frozen with requires_grad = False, but it
stays in the SGD-with-momentum optimizer and zero_grad(set_to_none=False) leaves it a zero .grad, so
the momentum buffer keeps moving the "frozen" weights.

Source: https://discuss.pytorch.org/t/why-there-is-still-a-small-change-in-frozen-layer-parameters/153740
Category: a frozen parameter that still moves
What gradwatch must report: ineffective_freeze naming fc1.weight and fc1.bias; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 16
EXPECT = {"ineffective_freeze": {"must": ["fc1.weight", "fc1.bias"], "may": []}}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(10, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def run(watch):
    torch.manual_seed(88)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    X, y = torch.randn(64, 10), torch.randint(0, 2, (64,))
    with watch(net, opt) as w:
        for step in range(STEPS):
            if step == 6:
                for p in net.fc1.parameters():
                    p.requires_grad = False  # BUG: still in the optimizer, with a zero .grad
            opt.zero_grad(set_to_none=False)
            nn.functional.cross_entropy(net(X), y).backward()
            opt.step()
    return w
