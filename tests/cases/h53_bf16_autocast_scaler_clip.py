"""h53 - bf16 autocast on CPU with a GradScaler (harmless with bf16), unscale_, clip_grad_norm_, then
scaler.step / scaler.update; zero_grad(set_to_none=True) first.
What gradwatch must report: nothing.
"""
import torch
import torch.nn as nn

STEPS = 20
EXPECT = {}


def run(watch):
    torch.manual_seed(23)
    net = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 4))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    X, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    with watch(net, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(net(X), y)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(net.parameters(), 0.5)
            scaler.step(opt)
            scaler.update()
    return w
