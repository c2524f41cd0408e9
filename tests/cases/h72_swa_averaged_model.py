"""h72 - stochastic weight averaging: torch.optim.swa_utils.AveragedModel wraps the model, SWALR takes
over the learning rate from step 10, and update_parameters(model) runs after each step from then on.
Only the live model is watched; the averaged copy is evaluated at the end.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn
from torch.optim.swa_utils import SWALR, AveragedModel

STEPS = 25
SWA_START = 10
EXPECT = {}


def run(watch):
    torch.manual_seed(72)
    model = nn.Sequential(nn.Linear(6, 24), nn.Tanh(), nn.Linear(24, 24), nn.Tanh(), nn.Linear(24, 2))
    swa = AveragedModel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=SWA_START)
    swa_sched = SWALR(opt, swa_lr=0.02, anneal_epochs=3)
    X, y = torch.randn(80, 6), torch.randint(0, 2, (80,))
    with watch(model, opt) as w:
        for s in range(STEPS):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(X), y)
            loss.backward()
            opt.step()
            if s >= SWA_START:
                swa.update_parameters(model)
                swa_sched.step()
            else:
                sched.step()
        with torch.no_grad():
            _ = swa(X)
    return w
