"""c53 - a two-tower matching model where the item tower's output is .detach()ed by mistake (copied from
a BYOL-style target-network snippet), although both towers are in the optimizer and meant to train.
What gradwatch must report: no_grad on item.* parameters, none of user.*; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 25
EXPECT = {"no_grad": {"must": ["item.0.weight", "item.0.bias", "item.2.weight", "item.2.bias"], "may": []}}


class TwoTower(nn.Module):
    def __init__(self):
        super().__init__()
        self.user = nn.Sequential(nn.Linear(10, 32), nn.SiLU(), nn.Linear(32, 16))
        self.item = nn.Sequential(nn.Linear(6, 32), nn.SiLU(), nn.Linear(32, 16))


def run(watch):
    torch.manual_seed(4)
    m = TwoTower()
    opt = torch.optim.RMSprop(m.parameters(), lr=1e-3)
    U, I = torch.randn(64, 10), torch.randn(64, 6)
    with watch(m, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            u = nn.functional.normalize(m.user(U), dim=-1)
            v = nn.functional.normalize(m.item(I).detach(), dim=-1)  # BUG: stop-gradient on a trained tower
            logits = u @ v.t() / 0.1
            loss = nn.functional.cross_entropy(logits, torch.arange(64))
            loss.backward()
            opt.step()
    return w
