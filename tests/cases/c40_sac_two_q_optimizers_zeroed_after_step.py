"""c40 - SAC with Q1 and Q2 in separate optimizers (as in several SAC implementations), each zeroed right
after its step; the policy loss -min(Q1, Q2) leaks into both Qs. Steps not marked.
Source: https://github.com/shariqiqbal2810/maddpg-pytorch/issues/43 (the actor loss's backward fills the
critic's gradients; here two critics with their own optimizers, as in SAC)
Category: missing zero_grad in a multi-optimizer loop (another loss's gradients leaking into an optimizer's step)
What gradwatch must report: missing_zero_grad on q1.* and q2.*.
"""
import torch
import torch.nn as nn

STEPS = 12
_Q = [f"{q}.{i}.{k}" for q in ("q1", "q2") for i in (0, 2) for k in ("weight", "bias")]
EXPECT = {"missing_zero_grad": {"must": _Q, "may": []}}


def run(watch):
    torch.manual_seed(110)
    def q():
        return nn.Sequential(nn.Linear(7, 32), nn.ReLU(), nn.Linear(32, 1))
    q1, q2 = q(), q()
    pi = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 4))
    model = nn.ModuleDict({"q1": q1, "q2": q2, "pi": pi})
    opt_q1 = torch.optim.Adam(q1.parameters(), lr=3e-4)
    opt_q2 = torch.optim.Adam(q2.parameters(), lr=3e-4)
    opt_pi = torch.optim.Adam(pi.parameters(), lr=3e-4)
    alpha = 0.2

    def sample(s):
        mu, log_std = pi(s).chunk(2, -1)
        std = log_std.clamp(-5, 2).exp()
        u = mu + std * torch.randn_like(mu)
        a = torch.tanh(u)
        logp = (torch.distributions.Normal(mu, std).log_prob(u) - torch.log(1 - a.pow(2) + 1e-6)).sum(-1, keepdim=True)
        return a, logp

    with watch(model, [opt_q1, opt_q2, opt_pi]) as w:
        for _ in range(STEPS):
            s, a, r, s2 = torch.randn(32, 5), torch.rand(32, 2) * 2 - 1, torch.randn(32, 1), torch.randn(32, 5)
            with torch.no_grad():
                a2, logp2 = sample(s2)
                sa2 = torch.cat([s2, a2], 1)
                target = r + 0.99 * (torch.min(q1(sa2), q2(sa2)) - alpha * logp2)
            sa = torch.cat([s, a], 1)
            nn.functional.mse_loss(q1(sa), target).backward()
            opt_q1.step()
            opt_q1.zero_grad()
            nn.functional.mse_loss(q2(sa), target).backward()
            opt_q2.step()
            opt_q2.zero_grad()
            a_new, logp = sample(s)
            san = torch.cat([s, a_new], 1)
            (alpha * logp - torch.min(q1(san), q2(san))).mean().backward()
            opt_pi.step()
            opt_pi.zero_grad()
    return w
