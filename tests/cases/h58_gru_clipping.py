"""h58 - GRU sequence classifier with clip_grad_norm_ and a StepLR scheduler.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 20
EXPECT = {}


class Seq(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(3, 16, num_layers=2, batch_first=True)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.fc(out[:, -1])


def run(watch):
    torch.manual_seed(28)
    m = Seq()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, 5, gamma=0.5)
    X = torch.randn(32, 15, 3)
    y = (X[:, :, 0].sum(1) > 0).long()
    with watch(m, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(m(X), y)
            loss.backward()
            nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
            sched.step()
    return w
