"""c92 - feature distillation: the student's features go through a projector into the teacher's space
before the loss, but the optimizer is built from the student backbone only, so the projector stays a
random projection for the whole run.

Source: https://github.com/roymiles/Simple-Recipe-Distillation/issues/1 ("Random projector?")
Category: a module that never reaches the optimizer
What gradwatch must report: not_updated naming embed.weight and embed.bias; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 12
EXPECT = {"not_updated": {"must": ["embed.weight", "embed.bias"], "may": []}}


def run(watch):
    torch.manual_seed(92)
    teacher = nn.Sequential(nn.Linear(12, 24), nn.ReLU()).requires_grad_(False)
    student = nn.Sequential(nn.Linear(12, 8), nn.ReLU())
    embed = nn.Linear(8, 24)
    model = nn.ModuleDict({"student": student, "embed": embed})
    opt = torch.optim.SGD(student.parameters(), lr=0.05)  # BUG: embed.parameters() left out
    X = torch.randn(40, 12)
    with watch(model, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            with torch.no_grad():
                target = teacher(X)
            nn.functional.mse_loss(embed(student(X)), target).backward()
            opt.step()
    return w
