"""h37 - PCGrad (Yu et al. 2020) as in the widely used WeiChengTseng/Pytorch-PCGrad wrapper, with a shared
trunk and per-task heads in two optimizers: for each task loss, zero_grad, backward(retain_graph=True),
read and clone the gradients; project the conflicting trunk gradients; write the combined gradient into
.grad by hand (p.grad = g); both optimizers step. Steps not marked.
What gradwatch must report: nothing.
"""
import random
import torch
import torch.nn as nn
import torch.nn.functional as F

STEPS = 10
EXPECT = {}


def run(watch):
    torch.manual_seed(411)
    random.seed(411)
    trunk = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
    heads = nn.ModuleList([nn.Linear(32, 1), nn.Linear(32, 3)])
    model = nn.ModuleDict({"trunk": trunk, "heads": heads})
    opt_t = torch.optim.Adam(trunk.parameters(), lr=1e-3)
    opt_h = torch.optim.Adam(heads.parameters(), lr=1e-3)
    opts = [opt_t, opt_h]
    params = [*trunk.parameters(), *heads.parameters()]
    with watch(model, opts) as w:
        for _ in range(STEPS):
            x, y0, y1 = torch.randn(32, 8), torch.randn(32, 1), torch.randint(0, 3, (32,))
            h = trunk(x)
            losses = [F.mse_loss(heads[0](h), y0), F.cross_entropy(heads[1](h), y1)]
            grads = []
            for loss in losses:  # _pack_grad
                for o in opts:
                    o.zero_grad(set_to_none=True)
                loss.backward(retain_graph=True)
                grads.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params])
            flat = [torch.cat([g.flatten() for g in gs]) for gs in grads]
            pc = [f.clone() for f in flat]
            for i, gi in enumerate(pc):  # _project_conflicting
                order = list(range(len(flat)))
                random.shuffle(order)
                for j in order:
                    dot = gi @ flat[j]
                    if dot < 0:
                        gi -= dot * flat[j] / (flat[j].norm() ** 2)
            merged = torch.stack(pc).sum(0)
            off = 0
            for p in params:  # _set_grad
                n = p.numel()
                p.grad = merged[off:off + n].view_as(p).clone()
                off += n
            for o in opts:
                o.step()
    return w
