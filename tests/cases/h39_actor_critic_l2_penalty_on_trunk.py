"""h39 - h96 (shared trunk held by the critic's optimizer, each optimizer zeroed right after its step,
critic first, steps not marked), except that the actor's loss adds a small L2 penalty on the trunk's
weight (a common way to keep shared features from blowing up). The trunk learns from both losses, as
in h96; nothing is leaked that h96 does not also carry.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 12
EXPECT = {}


def run(watch):
    torch.manual_seed(2)
    trunk, actor, critic = nn.Linear(6, 32), nn.Linear(32, 4), nn.Linear(32, 1)
    model = nn.ModuleDict({"trunk": trunk, "actor": actor, "critic": critic})
    opt_critic = torch.optim.Adam([*trunk.parameters(), *critic.parameters()], lr=1e-3)
    opt_actor = torch.optim.Adam(actor.parameters(), lr=1e-3)
    with watch(model, [opt_actor, opt_critic]) as w:
        for _ in range(STEPS):
            s, a, ret = torch.randn(16, 6), torch.randint(0, 4, (16,)), torch.randn(16, 1)
            h = torch.relu(trunk(s))
            value = critic(h)
            nn.functional.mse_loss(value, ret).backward(retain_graph=True)
            opt_critic.step()
            opt_critic.zero_grad()
            logp = torch.log_softmax(actor(h), -1).gather(1, a[:, None])
            pg = -(logp * (ret - value.detach())).mean()
            (pg + 1e-4 * trunk.weight.pow(2).sum()).backward()
            opt_actor.step()
            opt_actor.zero_grad()
    return w
