"""c83 - DDPG: the critic is fitted to its TD target, then the actor maximises the critic's value of its
own action (actor loss = -Q(s, actor(s))). Each optimizer is zeroed right after its step instead of
before its backward, and the critic is not frozen during the actor's update: the actor loss's backward
leaves gradients in the critic, which the next critic backward adds to. Every critic update then also
follows -Q, pushing the value of the actor's actions up, whatever the returns say. Steps are not marked.

Source: https://github.com/shariqiqbal2810/maddpg-pytorch/issues/43 ("the actor_loss is calculated through
critic network, so the backward of actor_loss will influence the grad of critic parameters")
Category: missing zero_grad in a multi-optimizer loop (the actor's loss leaking into the critic)
What gradwatch must report: missing_zero_grad naming the critic's parameters (critic.*); no actor.*
parameter; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 10
_CRITIC = ["critic.0.weight", "critic.0.bias", "critic.2.weight", "critic.2.bias"]
EXPECT = {"missing_zero_grad": {"must": _CRITIC, "may": []}}


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
            q = critic(torch.cat([s, a], 1))
            nn.functional.mse_loss(q, target).backward()
            opt_critic.step()
            opt_critic.zero_grad()
            actor_loss = -critic(torch.cat([s, actor(s)], 1)).mean()
            actor_loss.backward()  # BUG: also fills the critic's gradients, added to by the next critic backward
            opt_actor.step()
            opt_actor.zero_grad()
    return w
