"""h49 - DDPG where the actor's gradient is computed with torch.autograd.grad (w.r.t. the actor's
parameters only) and written into .grad by hand; the critic is zeroed right after its step (harmless
here: autograd.grad accumulates nothing into the critic). Steps not marked.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 12
EXPECT = {}


def run(watch):
    torch.manual_seed(112)
    actor = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 2), nn.Tanh())
    critic = nn.Sequential(nn.Linear(7, 32), nn.ReLU(), nn.Linear(32, 1))
    model = nn.ModuleDict({"actor": actor, "critic": critic})
    opt_a = torch.optim.Adam(actor.parameters(), lr=1e-4)
    opt_c = torch.optim.Adam(critic.parameters(), lr=1e-3)
    with watch(model, [opt_a, opt_c]) as w:
        for _ in range(STEPS):
            s, a, y = torch.randn(32, 5), torch.rand(32, 2) * 2 - 1, torch.randn(32, 1)
            nn.functional.mse_loss(critic(torch.cat([s, a], -1)), y).backward()
            opt_c.step()
            opt_c.zero_grad()
            actor_loss = -critic(torch.cat([s, actor(s)], -1)).mean()
            grads = torch.autograd.grad(actor_loss, list(actor.parameters()))
            for p, g in zip(actor.parameters(), grads):
                p.grad = g
            opt_a.step()
            opt_a.zero_grad()
    return w
