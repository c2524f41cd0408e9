"""h85 - actor-critic with a shared trunk: the critic's loss is backpropagated and its optimizer steps
first, then the actor's loss; the actor's optimizer holds the trunk, which so receives both losses'
gradients before its step (intended: the trunk learns from both). Both optimizers are zeroed per step.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 15
EXPECT = {}


def run(watch):
    torch.manual_seed(85)
    trunk, actor, critic = nn.Linear(6, 32), nn.Linear(32, 4), nn.Linear(32, 1)
    model = nn.ModuleDict({"trunk": trunk, "actor": actor, "critic": critic})
    opt_actor = torch.optim.Adam([*trunk.parameters(), *actor.parameters()], lr=1e-3)
    opt_critic = torch.optim.Adam(critic.parameters(), lr=1e-3)
    with watch(model, [opt_actor, opt_critic]) as w:
        for _ in range(STEPS):
            s, a, ret = torch.randn(16, 6), torch.randint(0, 4, (16,)), torch.randn(16, 1)
            opt_actor.zero_grad()
            opt_critic.zero_grad()
            h = torch.relu(trunk(s))
            value = critic(h)
            nn.functional.mse_loss(value, ret).backward(retain_graph=True)
            opt_critic.step()
            logp = torch.log_softmax(actor(h), -1).gather(1, a[:, None])
            (-(logp * (ret - value.detach())).mean()).backward()
            opt_actor.step()
            w.step()
    return w
