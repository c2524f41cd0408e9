"""c60 - conv net whose last hidden layer (fc1 + ReLU) is dead for every sample (its bias was pushed to
-20): fc1 and everything before it get exactly-zero gradients. The output layer fc2 still learns its bias
(fc2.bias gets dL/dout), so fc2 is NOT an all-zero layer.
What gradwatch must report: all_zero_grad on conv0.*, conv1.*, fc1.*; fc2.* must not be named; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 20
_DEAD = ["conv0.weight", "conv0.bias", "conv1.weight", "conv1.bias", "fc1.weight", "fc1.bias"]
EXPECT = {"all_zero_grad": {"must": _DEAD, "may": []}}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 6, 3)
        self.conv1 = nn.Conv2d(6, 6, 3)
        self.fc1 = nn.Linear(6 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.conv1(torch.relu(self.conv0(x))))
        return self.fc2(torch.relu(self.fc1(h.flatten(1))))  # BUG: this ReLU is dead for every input


def run(watch):
    torch.manual_seed(10)
    net = Net()
    with torch.no_grad():
        net.fc1.bias.fill_(-20.0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    X, y = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(X), y)
            loss.backward()
            opt.step()
    return w
