"""h96 - actor-critic with a shared trunk held by the critic's optimizer; each optimizer is zeroed right
after its own step. The actor's loss reaches the trunk after the actor's head, so the trunk carries it
into the critic's next update, where it is added to the critic's own gradient: the trunk learns from both
losses (one update late for the actor's), which is how this loop is meant to share it. Steps are not
marked.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 12
EXPECT = {}


def run(watch):
    torch.manual_seed(96)
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
            (-(logp * (ret - value.detach())).mean()).backward()
            opt_actor.step()
            opt_actor.zero_grad()
    return w
