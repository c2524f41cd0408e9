"""h88 - knowledge distillation: a teacher frozen with requires_grad_(False) and put in eval mode,
watched with the student; AdamW (weight decay) is built from the student only.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 15
EXPECT = {}


def run(watch):
    torch.manual_seed(88)
    teacher = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 4)).requires_grad_(False).eval()
    student = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    model = nn.ModuleDict({"teacher": teacher, "student": student})
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.05)
    X = torch.randn(48, 12)
    with watch(model, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            with torch.no_grad():
                soft = torch.softmax(teacher(X) / 2.0, -1)
            loss = nn.functional.kl_div(torch.log_softmax(student(X) / 2.0, -1), soft, reduction="batchmean")
            loss.backward()
            opt.step()
    return w
