"""h61 - an auxiliary head used only every third step (its loss is added then); with set_to_none the aux
head has no gradient on the other steps. It is used regularly, never 5 steps in a row without a gradient.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 30
EXPECT = {}


class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 12)
        self.main = nn.Linear(12, 1)
        self.aux = nn.Linear(12, 3)


def run(watch):
    torch.manual_seed(31)
    m = M()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    X, y, ya = torch.randn(32, 6), torch.randn(32, 1), torch.randint(0, 3, (32,))
    with watch(m, opt) as w:
        for s in range(STEPS):
            opt.zero_grad()
            h = torch.relu(m.body(X))
            loss = nn.functional.mse_loss(m.main(h), y)
            if s % 3 == 0:
                loss = loss + 0.1 * nn.functional.cross_entropy(m.aux(h), ya)
            loss.backward()
            opt.step()
    return w
