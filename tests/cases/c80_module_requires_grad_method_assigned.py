"""c80 - the module form of c79: model.encoder.requires_grad_ = False replaces the module's
requires_grad_() method by False on that instance; nothing is frozen and the encoder trains.
What gradwatch must report: ineffective_freeze on encoder.* only; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 20
EXPECT = {"ineffective_freeze": {"must": ["encoder.0.weight", "encoder.0.bias"], "may": []}}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
        self.decoder = nn.Sequential(nn.Linear(16, 8))

    def forward(self, x):
        return self.decoder(self.encoder(x))


def run(watch):
    torch.manual_seed(180)
    net = Net()
    net.encoder.requires_grad_ = False  # BUG: assigns to the method name
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    X = torch.randn(64, 8)
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = ((net(X) - X) ** 2).mean()
            loss.backward()
            opt.step()
    return w
