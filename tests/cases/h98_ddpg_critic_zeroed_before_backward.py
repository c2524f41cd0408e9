"""h98 - the DDPG loop of c83 done right: each optimizer is zeroed just before its own backward, so what
the actor loss's backward left in the critic is cleared before the critic's next backward. Steps are not
marked.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 10
EXPECT = {}


def run(watch):
    torch.manual_seed(83)
    actor = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 2), nn.Tanh())
    critic = nn.Sequential(nn.Linear(7, 32), nn.ReLU(), nn.Linear(32, 1))
    model = nn.ModuleDict({"actor": actor, "critic": critic})
    opt_actor = torch.optim.Adam(actor.parameters(), lr=1e-4)
    opt_critic = torch.optim.Adam(critic.parameters(), lr=1e-3)
    with watch(model, [opt_actor, opt_critic]) as w:
        for _ in range(STEPS):
            s, a = torch.randn(64, 5), torch.rand(64, 2) * 2 - 1
            r, s2 = torch.randn(64, 1), torch.randn(64, 5)
            with torch.no_grad():
                target = r + 0.99 * critic(torch.cat([s2, actor(s2)], 1))
            opt_critic.zero_grad()
            nn.functional.mse_loss(critic(torch.cat([s, a], 1)), target).backward()
            opt_critic.step()
            opt_actor.zero_grad()
            (-critic(torch.cat([s, actor(s)], 1)).mean()).backward()  # fills the critic's gradients too
            opt_actor.step()
    return w
