"""h92 - a backbone frozen mid-training the right way: requires_grad_(False) and its .grad set to None,
left in the SGD-with-momentum optimizer (which skips parameters whose .grad is None); later unfrozen.
Also a long gradient-accumulation window (40 micro-batches per step) and a clip on a stored list.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 6
EXPECT = {}


def run(watch):
    torch.manual_seed(92)
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    params = list(net.parameters())
    opt = torch.optim.SGD(params, lr=0.02, momentum=0.9)
    X, y = torch.randn(40, 8, 8), torch.randint(0, 2, (40, 8))
    with watch(net, opt) as w:
        for step in range(STEPS):
            if step == 2:
                net[0].requires_grad_(False)
                for p in net[0].parameters():
                    p.grad = None
            if step == 4:
                net[0].requires_grad_(True)
            opt.zero_grad()
            for m in range(40):
                (nn.functional.cross_entropy(net(X[m]), y[m]) / 40).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
    return w
