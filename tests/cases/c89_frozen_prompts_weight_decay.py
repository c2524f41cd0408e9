"""c89 - a prompt pool frozen from the start (requires_grad_(False) before the optimizer is built) is
still passed to AdamW with every other parameter; a warm-up phase trained it first, so it holds a zero
.grad (zero_grad(set_to_none=False)), and AdamW's decoupled weight decay shrinks it every step.

Source: https://github.com/iamwangyabin/S-Prompts/pull/2 ("Fix typo & bugs about weight decay": the
frozen prompt_pool's mean kept falling until the optimizer was built from the trainable parameters only)
Category: a frozen parameter that still moves
What gradwatch must report: ineffective_freeze naming prompt_pool; no other kind.
"""
import torch
import torch.nn as nn

STEPS = 10
EXPECT = {"ineffective_freeze": {"must": ["prompt_pool"], "may": []}}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.prompt_pool = nn.Parameter(torch.randn(4, 16))
        self.encoder = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.encoder(x) + self.prompt_pool.mean(0)
        return self.head(torch.tanh(h))


def run(watch):
    torch.manual_seed(89)
    net = Net()
    X, y = torch.randn(48, 16), torch.randint(0, 3, (48,))
    warm = torch.optim.SGD(net.parameters(), lr=0.01)  # a warm-up stage trained every parameter
    nn.functional.cross_entropy(net(X), y).backward()
    warm.step()
    net.prompt_pool.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)  # BUG: frozen pool included
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad(set_to_none=False)
            nn.functional.cross_entropy(net(X), y).backward()
            opt.step()
    return w
