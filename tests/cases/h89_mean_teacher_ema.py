"""h89 - mean teacher: the teacher is an EMA of the student, updated in place under no_grad after each
optimizer step (not by any optimizer); both are watched.
What gradwatch must report: nothing.
"""
import copy

import torch
import torch.nn as nn

STEPS = 15
EXPECT = {}


def run(watch):
    torch.manual_seed(89)
    student = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    teacher = copy.deepcopy(student).requires_grad_(False)
    model = nn.ModuleDict({"student": student, "teacher": teacher})
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    X, y = torch.randn(40, 8), torch.randint(0, 3, (40,))
    with watch(model, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            logits = student(X + 0.1 * torch.randn_like(X))
            with torch.no_grad():
                target = torch.softmax(teacher(X + 0.1 * torch.randn_like(X)), -1)
            (nn.functional.cross_entropy(logits, y) + (torch.softmax(logits, -1) - target).pow(2).mean()).backward()
            opt.step()
            with torch.no_grad():
                for pt, ps in zip(teacher.parameters(), student.parameters()):
                    pt.mul_(0.99).add_(ps, alpha=0.01)
    return w
