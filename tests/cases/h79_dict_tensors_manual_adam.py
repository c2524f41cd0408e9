"""h79 - a model given as a dict of raw leaf tensors, trained with a hand-written Adam update under
torch.no_grad(); gradients are cleared with p.grad = None after each update. No optimizer is watched.
What gradwatch must report: nothing.
"""
import torch

STEPS = 30
EXPECT = {}


def run(watch):
    torch.manual_seed(79)
    params = {
        "W1": (torch.randn(6, 16) * 0.4).requires_grad_(),
        "b1": torch.zeros(16, requires_grad=True),
        "W2": (torch.randn(16, 1) * 0.25).requires_grad_(),
        "b2": torch.zeros(1, requires_grad=True),
    }
    m = {k: torch.zeros_like(v) for k, v in params.items()}
    v2 = {k: torch.zeros_like(v) for k, v in params.items()}
    b1, b2, lr, eps = 0.9, 0.999, 1e-2, 1e-8
    X = torch.randn(64, 6)
    y = X[:, :1] - 0.5 * X[:, 2:3]
    with watch(params, None) as w:
        for t in range(1, STEPS + 1):
            h = torch.tanh(X @ params["W1"] + params["b1"])
            loss = ((h @ params["W2"] + params["b2"] - y) ** 2).mean()
            loss.backward()
            with torch.no_grad():
                for k, p in params.items():
                    g = p.grad
                    m[k].mul_(b1).add_(g, alpha=1 - b1)
                    v2[k].mul_(b2).addcmul_(g, g, value=1 - b2)
                    mh = m[k] / (1 - b1 ** t)
                    vh = v2[k] / (1 - b2 ** t)
                    p.sub_(lr * mh / (vh.sqrt() + eps))
                    p.grad = None
    return w
