"""c98 - adversarial distillation: each iteration first updates the discriminator (disc_opt.step(), then
disc_opt.zero_grad() right after it), then the student, whose adversarial loss backpropagates through the
discriminator and leaves gradients in it. Nothing clears those before the next iteration's discriminator
backward, which adds to them: every discriminator update also applies the student's loss, which pushes
the discriminator the wrong way. The loop marks each iteration as one step (w.step()).

Source: https://github.com/leffff/FlowModels/issues/3 ("student_loss.backward() in LADD": the student's
backward generates gradients on the discriminator, used in the next iteration's discriminator step)
Category: missing zero_grad in a multi-optimizer loop (generator gradients leaking into the discriminator)
What gradwatch must report: missing_zero_grad naming the discriminator's parameters (disc.*); no student.*
parameter; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 12
_DISC = ["disc.0.weight", "disc.0.bias", "disc.2.weight", "disc.2.bias"]
EXPECT = {"missing_zero_grad": {"must": _DISC, "may": []}}


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
            d_loss = nn.functional.softplus(disc(fake.detach())).mean() + nn.functional.softplus(-disc(real)).mean()
            d_loss.backward()
            disc_opt.step()
            disc_opt.zero_grad()  # zeroed after its step...
            s_loss = nn.functional.softplus(-disc(fake)).mean() + (fake - noise).pow(2).mean()
            s_loss.backward()  # BUG: ...but this backward refills disc's gradients, never cleared
            student_opt.step()
            student_opt.zero_grad()
            w.step()
    return w
