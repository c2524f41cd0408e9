"""h48 - online (collaborative) distillation: a student S and a teacher T with their own optimizers, run
side by side on the same batch (S's forward first). The student's loss is CE + KL(student || teacher)
with the teacher NOT detached: in this recipe the teacher is meant to move toward the student too. Both
zeroed at the top; the student's loss is backpropagated and S steps; then the teacher's own CE loss on a
second batch is backpropagated and T steps on both. Neither network lies behind the other. Not marked.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

STEPS = 12
EXPECT = {}


def run(watch):
    torch.manual_seed(131)
    S = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4))
    T = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 4))
    model = nn.ModuleDict({"S": S, "T": T})
    opt_s = torch.optim.Adam(S.parameters(), lr=1e-3)
    opt_t = torch.optim.SGD(T.parameters(), lr=0.01, momentum=0.9)
    with watch(model, [opt_s, opt_t]) as w:
        for _ in range(STEPS):
            opt_s.zero_grad()
            opt_t.zero_grad()
            x, y = torch.randn(32, 10), torch.randint(0, 4, (32,))
            s_logits = S(x)
            t_logits = T(x)
            (F.cross_entropy(s_logits, y)
             + F.kl_div(F.log_softmax(s_logits, -1), F.softmax(t_logits, -1), reduction="batchmean")).backward()
            opt_s.step()
            x2, y2 = torch.randn(32, 10), torch.randint(0, 4, (32,))
            F.cross_entropy(T(x2), y2).backward()
            opt_t.step()
    return w
