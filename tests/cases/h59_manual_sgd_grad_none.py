"""h59 - manual SGD on raw leaf tensors (a 2-layer net), gradients cleared with p.grad = None.
What gradwatch must report: nothing.
"""
import torch

STEPS = 30
EXPECT = {}


def run(watch):
    torch.manual_seed(29)
    W1 = (torch.randn(4, 8) * 0.5).requires_grad_()
    b1 = torch.zeros(8, requires_grad=True)
    W2 = (torch.randn(8, 1) * 0.5).requires_grad_()
    params = {"W1": W1, "b1": b1, "W2": W2}
    X = torch.randn(40, 4)
    y = X[:, :1] - X[:, 1:2]
    with watch(params, None) as w:
        for _ in range(STEPS):
            loss = ((torch.tanh(X @ W1 + b1) @ W2 - y) ** 2).mean()
            loss.backward()
            with torch.no_grad():
                for p in params.values():
                    p -= 0.1 * p.grad
                    p.grad = None
    return w
