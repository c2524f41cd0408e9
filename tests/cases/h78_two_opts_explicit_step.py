"""h78 - actor-critic-style loop with TWO optimizers (actor, critic) and w.step() called at the end of
every iteration to mark one training step covering both. Each optimizer zeroes its own parameters first.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 25
EXPECT = {}


def run(watch):
    torch.manual_seed(78)
    ac = nn.ModuleDict({
        "actor": nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 2)),
        "critic": nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1)),
    })
    opt_a = torch.optim.Adam(ac["actor"].parameters(), lr=1e-3)
    opt_c = torch.optim.Adam(ac["critic"].parameters(), lr=3e-3)
    with watch(ac, [opt_a, opt_c]) as w:
        for _ in range(STEPS):
            s = torch.randn(64, 4)
            r = s[:, :1] - s[:, 1:2]
            v = ac["critic"](s)
            opt_c.zero_grad()
            ((v - r) ** 2).mean().backward()
            opt_c.step()
            adv = (r - v).detach()
            logp = torch.log_softmax(ac["actor"](s), -1)
            a = torch.multinomial(logp.exp().detach(), 1)
            opt_a.zero_grad()
            (-(logp.gather(1, a) * adv).mean()).backward()
            opt_a.step()
            w.step()
    return w
