"""h76 - gradient accumulation over 3 micro-batches with Adam; after each optimizer step the loop calls
model.zero_grad(set_to_none=True) (not the optimizer's), so the first backward of each window installs
fresh .grad tensors and the next two add into them.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 20
K = 3
EXPECT = {}


def run(watch):
    torch.manual_seed(76)
    model = nn.Sequential(nn.Linear(8, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    X = torch.randn(240, 8)
    y = X[:, :1] * X[:, 1:2]
    with watch(model, opt) as w:
        for i in range(STEPS * K):
            idx = torch.arange(i * 4, i * 4 + 4) % 240
            loss = ((model(X[idx]) - y[idx]) ** 2).mean() / K
            loss.backward()
            if (i + 1) % K == 0:
                opt.step()
                model.zero_grad(set_to_none=True)
    return w
