"""c57 - a CNN over padded spectrogram-like input computes a log-energy in its middle layer with
torch.where(p > 0, log(p), 0). torch.where does not protect the gradient: at the padded (exactly zero)
frames log'(0) = inf meets a zero upstream gradient -> NaN, born in conv1's backward while the loss
stays finite. Padding first appears at step PAD_STEP.
What gradwatch must report: nonfinite_grad with origin conv1.weight/conv1.bias; later findings may name
anything (conv0 receives the NaN by propagation, then every weight becomes NaN); no other kind.
"""
import torch
import torch.nn as nn

STEPS = 20
PAD_STEP = 8
EXPECT = {"nonfinite_grad": {"must": ["conv1.weight", "conv1.bias"], "may": "*"}}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv1d(2, 8, 3, padding=1)
        self.conv1 = nn.Conv1d(8, 8, 3, padding=1)
        self.conv2 = nn.Conv1d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x, mask):
        h = torch.relu(self.conv0(x))
        p = (self.conv1(h) * mask) ** 2  # energy, zero on padded frames
        h = torch.where(p > 0, torch.log(p), torch.zeros_like(p))  # BUG: where() does not guard the backward
        h = torch.relu(self.conv2(h))
        return self.fc(h.mean(-1))


def run(watch):
    torch.manual_seed(8)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    with watch(net, opt) as w:
        for step in range(STEPS):
            x, y = torch.randn(8, 2, 16), torch.randint(0, 3, (8,))
            mask = torch.ones(8, 1, 16)
            if step >= PAD_STEP:
                mask[:4, :, 12:] = 0.0  # shorter utterances padded
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x, mask), y)
            loss.backward()
            opt.step()
    return w
