"""h44 - h96 (shared trunk held by the critic's optimizer, each optimizer zeroed right after its step,
critic first) with each iteration in a function decorated by @w.train_step.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 12
EXPECT = {}


def run(watch):
    torch.manual_seed(44)
    trunk, actor, critic = nn.Linear(6, 32), nn.Linear(32, 4), nn.Linear(32, 1)
    model = nn.ModuleDict({"trunk": trunk, "actor": actor, "critic": critic})
    opt_critic = torch.optim.Adam([*trunk.parameters(), *critic.parameters()], lr=1e-3)
    opt_actor = torch.optim.Adam(actor.parameters(), lr=1e-3)
    with watch(model, [opt_actor, opt_critic]) as w:
        @w.train_step
        def step(s, a, ret):
            h = torch.relu(trunk(s))
            value = critic(h)
            c_loss = nn.functional.mse_loss(value, ret)
            c_loss.backward(retain_graph=True)
            opt_critic.step()
            opt_critic.zero_grad()
            logp = torch.log_softmax(actor(h), -1).gather(1, a[:, None])
            (-(logp * (ret - value.detach())).mean()).backward()
            opt_actor.step()
            opt_actor.zero_grad()
            return c_loss

        for _ in range(STEPS):
            step(torch.randn(16, 6), torch.randint(0, 4, (16,)), torch.randn(16, 1))
    return w
