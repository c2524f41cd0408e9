"""h35 - (meta base registered as a submodule, as written in the torch.func ensembling tutorial's
style when kept on the module) REDQ/SAC-N style critic ensemble evaluated with torch.func (stack_module_state + functional_call +
vmap); the stacked parameters are what the critic optimizer holds. DDPG-style actor loss -Q(s, pi(s))
through the ensemble; both zeroed at the top of the iteration (correct). Steps not marked.
What gradwatch must report: nothing.
"""
import copy
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state

STEPS = 10


class Ensemble(nn.Module):
    def __init__(self, n=4):
        super().__init__()
        members = [nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 1)) for _ in range(n)]
        params, _ = stack_module_state(members)
        self.p = nn.ParameterDict({k.replace(".", "_"): nn.Parameter(v) for k, v in params.items()})
        self.keys = list(params)
        self.base = copy.deepcopy(members[0]).to("meta")

    def forward(self, sa):
        def one(*ps):
            return functional_call(self.base, dict(zip(self.keys, ps)), (sa,))
        return torch.vmap(one)(*[self.p[k.replace(".", "_")] for k in self.keys])  # (n, B, 1)


_Q = ["critic.p.0_weight", "critic.p.0_bias", "critic.p.2_weight", "critic.p.2_bias"]
EXPECT = {}


def run(watch):
    torch.manual_seed(308)
    actor = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2), nn.Tanh())
    critic = Ensemble()
    model = nn.ModuleDict({"actor": actor, "critic": critic})
    opt_a = torch.optim.Adam(actor.parameters(), lr=1e-3)
    opt_q = torch.optim.Adam(critic.parameters(), lr=1e-3)
    with watch(model, [opt_a, opt_q]) as w:
        for _ in range(STEPS):
            opt_q.zero_grad()
            opt_a.zero_grad()
            s, a, r = torch.randn(64, 4), torch.rand(64, 2) * 2 - 1, torch.randn(64, 1)
            q = critic(torch.cat([s, a], 1))
            F.mse_loss(q, r.expand(q.shape[0], -1, -1)).backward()
            opt_q.step()
            (-critic(torch.cat([s, actor(s)], 1)).min(0).values.mean()).backward()
            opt_a.step()
    return w
