"""c86 - `params = model.parameters()` is kept in a variable, consumed by the optimizer's constructor,
and then given to clip_grad_norm_ every step: the generator is empty, nothing is ever clipped, and the
large early gradients of this RNN go straight into the update.

Source: https://github.com/pytorch/pytorch/issues/148259 ("Raise a warning when
torch.nn.utils.clip_grad_norm_ receives an exhausted generator")
Category: clipping that does nothing
What gradwatch must report: ineffective_clip naming the parameters that had gradients; the unclipped
gradients may also be reported as exploding_grad or nonfinite_grad, and the updates they make, as large
as the weights while the gradients grow, as lr_too_high; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 12
_ALL = ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0", "head.weight", "head.bias"]
EXPECT = {
    "ineffective_clip": {"must": _ALL, "may": []},
    "exploding_grad": {"must": [], "may": "*"},
    "nonfinite_grad": {"must": [], "may": "*"},
    "lr_too_high": {"must": [], "may": "*"},
}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(4, 16, batch_first=True)
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def run(watch):
    torch.manual_seed(86)
    net = Net()
    params = net.parameters()
    opt = torch.optim.SGD(params, lr=0.05)  # consumes the generator
    X, y = torch.randn(16, 20, 4), torch.randn(16, 1) * 10
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            nn.functional.mse_loss(net(X), y).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)  # BUG: an empty generator by now
            opt.step()
    return w
