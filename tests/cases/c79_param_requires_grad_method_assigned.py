"""c79 - "freezing" the backbone with p.requires_grad_ = False: the trailing underscore makes it an
assignment to the in-place method's name, which only shadows the method on each tensor; requires_grad
stays True and the backbone trains.
What gradwatch must report: ineffective_freeze on backbone.* only; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 20
EXPECT = {"ineffective_freeze": {"must": ["backbone.0.weight", "backbone.0.bias", "backbone.2.weight",
                                          "backbone.2.bias"], "may": []}}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.backbone(x))


def run(watch):
    torch.manual_seed(179)
    net = Net()
    for p in net.backbone.parameters():
        p.requires_grad_ = False  # BUG: assigns to the method name
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    X, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    w0 = net.backbone[0].weight.detach().clone()
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(X), y)
            loss.backward()
            opt.step()
    assert not torch.equal(w0, net.backbone[0].weight)
    return w
