"""h83 - cosine classifier (NormFace-style): after every optimizer step the class-prototype matrix's rows
are renormalised in place to unit length (proto.weight.div_(norm)), so its norm before each step is
sqrt(num_classes) every time, although every step moves the prototypes' directions.
What gradwatch must report: nothing (a norm kept constant by design is not an update that was undone).
"""
import torch
import torch.nn as nn

STEPS = 25
EXPECT = {}


class Cos(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 16))
        self.proto = nn.Linear(16, 4, bias=False)
        with torch.no_grad():
            self.proto.weight.div_(self.proto.weight.norm(dim=1, keepdim=True))

    def forward(self, x):
        f = nn.functional.normalize(self.body(x), dim=1)
        return 10.0 * self.proto(f)


def run(watch):
    torch.manual_seed(83)
    m = Cos()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    X = torch.randn(64, 10)
    y = (X[:, 0] > 0).long() + 2 * (X[:, 1] > 0).long()
    snaps = []
    with watch(m, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(m(X), y)
            loss.backward()
            opt.step()
            with torch.no_grad():
                m.proto.weight.div_(m.proto.weight.norm(dim=1, keepdim=True))
            snaps.append(m.proto.weight.detach().clone())
    assert all(not torch.equal(a, b) for a, b in zip(snaps, snaps[1:]))  # it does move every step
    return w
