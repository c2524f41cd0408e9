"""c75 - the optimizer was built on the parameters of a deep copy (model_for_opt = copy.deepcopy(model),
left over from an EMA refactor), while the loop trains `model`. opt.zero_grad() and opt.step() only touch
the copy; the watched model gets gradients every step and never moves.
What gradwatch must report: not_updated on every parameter; no other kind (the piling-up of .grad is a
consequence of the same cause, as in c19).
"""
import copy
import torch
import torch.nn as nn

STEPS = 20
_ALL = ["0.weight", "0.bias", "2.weight", "2.bias"]
EXPECT = {"not_updated": {"must": _ALL, "may": []}}


def run(watch):
    torch.manual_seed(175)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    shadow = copy.deepcopy(model)
    opt = torch.optim.SGD(shadow.parameters(), lr=0.05)  # BUG: the copy's parameters
    X, y = torch.randn(48, 6), torch.randn(48, 1)
    w0 = model[0].weight.detach().clone()
    with watch(model, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = ((model(X) - y) ** 2).mean()
            loss.backward()
            opt.step()
    assert torch.equal(w0, model[0].weight)
    return w
