"""h87 - truncated BPTT with a hand-written SGD update through .data (p.data -= lr * p.grad.data) and
p.grad.data.zero_(), the hidden state detached between windows; no optimizer.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

WINDOWS = 10
EXPECT = {}


def run(watch):
    torch.manual_seed(87)
    rnn, head = nn.LSTM(3, 16, batch_first=True), nn.Linear(16, 1)
    model = nn.ModuleDict({"rnn": rnn, "head": head})
    seq = torch.randn(4, WINDOWS * 8, 3)
    target = seq.cumsum(1)[..., :1] * 0.1
    with watch(model) as w:
        state = None
        for k in range(WINDOWS):
            chunk = seq[:, 8 * k : 8 * (k + 1)]
            out, state = rnn(chunk, state)
            state = tuple(s.detach() for s in state)
            nn.functional.mse_loss(head(out), target[:, 8 * k : 8 * (k + 1)]).backward()
            for p in model.parameters():
                p.data -= 0.05 * p.grad.data
                p.grad.data.zero_()
    return w
