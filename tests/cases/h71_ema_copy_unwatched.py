"""h71 - an EMA (Polyak) copy of the model, made with deepcopy and updated with lerp_ after every
optimizer step; evaluated every 5 steps. Only the live model is watched.
What gradwatch must report: nothing (the EMA copy shares no tensors with the watched model).
"""
import copy
import torch
import torch.nn as nn

STEPS = 25
EXPECT = {}


def run(watch):
    torch.manual_seed(71)
    model = nn.Sequential(nn.Linear(10, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, 1))
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    X = torch.randn(96, 10)
    y = torch.sin(X[:, :1]) + X[:, 1:2]
    with watch(model, opt) as w:
        for s in range(STEPS):
            opt.zero_grad()
            loss = ((model(X) - y) ** 2).mean()
            loss.backward()
            opt.step()
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 0.1)
            if s % 5 == 4:
                with torch.no_grad():
                    _ = ((ema(X) - y) ** 2).mean()
    return w
