"""c47 - DDPG whose critic is Q(s, a) = head(cat(enc(s), a)); the state features enc(s) are computed once
per iteration (before the actor's forward) and reused by the critic's loss and the actor's loss. Critic
first, each optimizer zeroed right after its step (the c83 shape), critic not frozen: the actor's loss
-Q(s, pi(s)) leaves gradients in the critic's head (and, through the reused features, in its encoder),
added to the critic's next backward. Steps not marked.
Source: https://github.com/shariqiqbal2810/maddpg-pytorch/issues/43 (the actor loss's backward fills the
critic's gradients)
Category: missing zero_grad in a multi-optimizer loop (another loss's gradients leaking into an optimizer's step)
What gradwatch must report: missing_zero_grad on critic.* (at least the head, which lies between the
actor's loss and the actor).
"""
import torch
import torch.nn as nn

STEPS = 10
_HEAD = ["critic.head.0.weight", "critic.head.0.bias", "critic.head.2.weight", "critic.head.2.bias"]
EXPECT = {"missing_zero_grad": {"must": _HEAD, "may": ["critic.enc.weight", "critic.enc.bias"]}}


def run(watch):
    torch.manual_seed(209)
    critic = nn.ModuleDict({"enc": nn.Linear(5, 32),
                            "head": nn.Sequential(nn.Linear(32 + 2, 32), nn.ReLU(), nn.Linear(32, 1))})
    actor = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 2), nn.Tanh())
    model = nn.ModuleDict({"actor": actor, "critic": critic})
    opt_a = torch.optim.Adam(actor.parameters(), lr=1e-4)
    opt_c = torch.optim.Adam(critic.parameters(), lr=1e-3)
    with watch(model, [opt_a, opt_c]) as w:
        for _ in range(STEPS):
            s, a, y = torch.randn(32, 5), torch.rand(32, 2) * 2 - 1, torch.randn(32, 1)
            zs = torch.relu(critic["enc"](s))
            nn.functional.mse_loss(critic["head"](torch.cat([zs, a], -1)), y).backward(retain_graph=True)
            opt_c.step()
            opt_c.zero_grad()
            (-critic["head"](torch.cat([zs, actor(s)], -1)).mean()).backward()
            opt_a.step()
            opt_a.zero_grad()
    return w
