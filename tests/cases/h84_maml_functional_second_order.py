"""h84 - MAML: an inner SGD step taken functionally (torch.func.functional_call on fast weights built
with create_graph=True), the outer loss backpropagated through it into the real parameters.
What gradwatch must report: nothing (autograd.grad accumulates nothing; the outer backward is one step).
"""
import torch
import torch.nn as nn
from torch.func import functional_call

STEPS = 12
EXPECT = {}


def run(watch):
    torch.manual_seed(84)
    net = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            outer = 0.0
            for task in range(3):
                amp, phase = 1 + task, 0.5 * task
                xs, xq = torch.rand(10, 1) * 6 - 3, torch.rand(10, 1) * 6 - 3
                params = dict(net.named_parameters())
                inner = nn.functional.mse_loss(functional_call(net, params, (xs,)), amp * torch.sin(xs + phase))
                grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
                fast = {k: v - 0.01 * g for (k, v), g in zip(params.items(), grads)}
                outer = outer + nn.functional.mse_loss(functional_call(net, fast, (xq,)), amp * torch.sin(xq + phase))
            outer.backward()
            opt.step()
    return w
