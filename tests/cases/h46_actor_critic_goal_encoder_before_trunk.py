"""h46 - goal-conditioned actor-critic (h96 shape): a shared image trunk held by the critic's optimizer, each
optimizer zeroed right after its own step, critic first. The actor also has a small goal encoder of its
own (in the actor's optimizer), evaluated *before* the shared trunk in the actor's forward. The actor loss
reaches the trunk after the actor's head, as in h96 (the trunk learns from both losses on purpose).
Steps not marked.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 12
EXPECT = {}


def run(watch):
    torch.manual_seed(101)
    trunk = nn.Sequential(nn.Linear(6, 32), nn.ReLU())
    goal_enc = nn.Linear(3, 8)
    actor = nn.Linear(40, 4)
    critic = nn.Linear(32, 1)
    model = nn.ModuleDict({"trunk": trunk, "goal_enc": goal_enc, "actor": actor, "critic": critic})
    opt_critic = torch.optim.Adam([*trunk.parameters(), *critic.parameters()], lr=1e-3)
    opt_actor = torch.optim.Adam([*goal_enc.parameters(), *actor.parameters()], lr=1e-3)
    with watch(model, [opt_actor, opt_critic]) as w:
        for _ in range(STEPS):
            s, g = torch.randn(16, 6), torch.randn(16, 3)
            a, ret = torch.randint(0, 4, (16,)), torch.randn(16, 1)
            value = critic(trunk(s))
            nn.functional.mse_loss(value, ret).backward()
            opt_critic.step()
            opt_critic.zero_grad()
            zg = torch.relu(goal_enc(g))   # the goal first
            h = trunk(s)
            logits = actor(torch.cat([h, zg], -1))
            logp = torch.log_softmax(logits, -1).gather(1, a[:, None])
            (-(logp * (ret - value.detach())).mean()).backward()
            opt_actor.step()
            opt_actor.zero_grad()
    return w
