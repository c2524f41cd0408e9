"""c64 - "reset to best checkpoint" logic with an inverted comparison: after every optimizer step the
model reloads the initial state (load_state_dict copies in place), so no parameter ever moves although
every gradient is nonzero and the learning rate is fine.
What gradwatch must report: not_updated on every parameter; no other kind.
"""
import copy
import torch
import torch.nn as nn

STEPS = 20
_ALL = ["0.weight", "0.bias", "2.weight", "2.bias"]
EXPECT = {"not_updated": {"must": _ALL, "may": []}}


def run(watch):
    torch.manual_seed(14)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    best_loss, best_state = float("inf"), copy.deepcopy(net.state_dict())
    best_loss = -1.0  # BUG: initialised so that no loss ever counts as "better"
    X, y = torch.randn(32, 4), torch.randn(32, 1)
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = ((net(X) - y) ** 2).mean()
            loss.backward()
            opt.step()
            if loss.item() < best_loss:
                best_state = copy.deepcopy(net.state_dict())
            else:
                net.load_state_dict(best_state)  # roll back the "worse" step
    return w
