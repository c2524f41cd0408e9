"""h95 - the same adversarial distillation as c98, done right (the DCGAN recipe): the discriminator's
gradients are zeroed at the start of its step, before its backward, so what the student's backward left
in it the iteration before is cleared. Each iteration is marked as one step (w.step()).
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 12
EXPECT = {}


def run(watch):
    torch.manual_seed(98)
    student = nn.Sequential(nn.Linear(6, 32), nn.SiLU(), nn.Linear(32, 6))
    disc = nn.Sequential(nn.Linear(6, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
    model = nn.ModuleDict({"student": student, "disc": disc})
    student_opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    disc_opt = torch.optim.AdamW(disc.parameters(), lr=1e-4)
    teacher_out = torch.randn(256, 6) * 0.7 + 0.3
    with watch(model, [student_opt, disc_opt]) as w:
        for k in range(STEPS):
            noise = torch.randn(32, 6)
            fake = student(noise)
            real = teacher_out[32 * (k % 8) : 32 * (k % 8 + 1)]
            disc_opt.zero_grad()
            d_loss = nn.functional.softplus(disc(fake.detach())).mean() + nn.functional.softplus(-disc(real)).mean()
            d_loss.backward()
            disc_opt.step()
            student_opt.zero_grad()
            s_loss = nn.functional.softplus(-disc(fake)).mean() + (fake - noise).pow(2).mean()
            s_loss.backward()
            student_opt.step()
            w.step()
    return w
