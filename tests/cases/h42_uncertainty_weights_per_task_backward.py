"""h42 - multi-task with uncertainty weights in their own optimizer, each head with its own optimizer,
trunk with another. Each task's weighted loss is backpropagated separately (retain_graph) and its head
stepped and zeroed right away; after the last task's backward the shared parts (loss weights, trunk)
are stepped, then the last head. All gradients of the shared parts are meant to sum both tasks. Every
optimizer is zeroed right after its step. Steps not marked.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 12
EXPECT = {}


def run(watch):
    torch.manual_seed(24)
    trunk = nn.Sequential(nn.Linear(10, 32), nn.ReLU())
    h1, h2 = nn.Linear(32, 3), nn.Linear(32, 1)
    model = nn.ModuleDict({"trunk": trunk, "h1": h1, "h2": h2})
    log_vars = nn.Parameter(torch.zeros(2))
    model.register_parameter("log_vars", log_vars)
    o_t = torch.optim.Adam(trunk.parameters(), lr=1e-3)
    o_1 = torch.optim.Adam(h1.parameters(), lr=1e-3)
    o_2 = torch.optim.Adam(h2.parameters(), lr=1e-3)
    o_w = torch.optim.Adam([log_vars], lr=1e-2)
    with watch(model, [o_t, o_1, o_2, o_w]) as w:
        for _ in range(STEPS):
            x, y1, y2 = torch.randn(32, 10), torch.randint(0, 3, (32,)), torch.randn(32, 1)
            f = trunk(x)
            l1 = nn.functional.cross_entropy(h1(f), y1)
            (torch.exp(-log_vars[0]) * l1 + log_vars[0]).backward(retain_graph=True)
            o_1.step()
            o_1.zero_grad()
            l2 = nn.functional.mse_loss(h2(f), y2)
            (0.5 * torch.exp(-log_vars[1]) * l2 + 0.5 * log_vars[1]).backward()
            for o in (o_w, o_t, o_2):
                o.step()
                o.zero_grad()
    return w
