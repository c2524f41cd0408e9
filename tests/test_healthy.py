"""Healthy training loops of many kinds: gradwatch must report nothing at all on any of them."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import needs_amp_gradscaler
from torch import nn

import gradwatch as gw

STEPS = 40


def _cls_data(n=128, d=10, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, k, generator=g)
    return x, (x @ w).argmax(1)


def mlp_adam():
    torch.manual_seed(0)
    x, y = _cls_data()
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loop(w):
        for _ in range(STEPS):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            w.record_loss(loss)
            opt.step()

    return model, opt, loop


def cnn_batchnorm_inplace_relu():
    torch.manual_seed(0)
    x = torch.randn(16, 3, 12, 12)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def loop(w):
        for _ in range(STEPS):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    return model, opt, loop


class LSTMReg(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 16, batch_first=True)
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def lstm_with_clipping():
    torch.manual_seed(0)
    x = torch.randn(32, 20, 4)
    y = x.sum(dim=(1, 2)).unsqueeze(1) / 10
    model = LSTMReg()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)

    def loop(w):
        for _ in range(STEPS):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

    return model, opt, loop


class TinyLM(nn.Module):
    """Embedding, one transformer encoder block, output projection tied to the embedding."""

    def __init__(self, vocab=50, dim=32) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(16, dim))
        self.block = nn.TransformerEncoderLayer(
            dim, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True
        )
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, tokens):
        h = self.emb(tokens) + self.pos[: tokens.shape[1]]
        mask = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1])
        return self.out(self.norm(self.block(h, src_mask=mask, is_causal=True)))


def transformer_weight_tying():
    torch.manual_seed(0)
    data = torch.randint(0, 50, (16, 17))
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)

    def loop(w):
        for _ in range(STEPS):
            opt.zero_grad()
            logits = model(data[:, :-1])
            nn.functional.cross_entropy(logits.reshape(-1, 50), data[:, 1:].reshape(-1)).backward()
            opt.step()

    return model, opt, loop


def finetune_frozen_backbone():
    torch.manual_seed(0)
    x, y = _cls_data()
    model = nn.Sequential(
        nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU()),  # backbone
        nn.Linear(32, 3),  # head
    )
    model[0].requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)

    def loop(w):
        for _ in range(STEPS):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    return model, opt, loop


def gan():
    torch.manual_seed(0)
    real = torch.randn(256, 2) * 0.5 + torch.tensor([2.0, -1.0])
    model = nn.ModuleDict(
        {
            "G": nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)),
            "D": nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1)),
        }
    )
    opt_g = torch.optim.Adam(model["G"].parameters(), lr=2e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(model["D"].parameters(), lr=2e-3, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    ones, zeros = torch.ones(64, 1), torch.zeros(64, 1)

    def loop(w):
        for _ in range(STEPS):
            xb = real[torch.randint(0, 256, (64,))]
            fake = model["G"](torch.randn(64, 4))
            opt_d.zero_grad()
            (bce(model["D"](xb), ones) + bce(model["D"](fake.detach()), zeros)).backward()
            opt_d.step()
            opt_g.zero_grad()
            bce(model["D"](fake), ones).backward()
            opt_g.step()

    return model, [opt_g, opt_d], loop


def grad_accumulation():
    torch.manual_seed(0)
    x, y = _cls_data(256)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def loop(w):
        for _ in range(STEPS // 4):
            for xb, yb in zip(x.chunk(4), y.chunk(4)):
                (nn.functional.cross_entropy(model(xb), yb) / 4).backward()
            opt.step()
            opt.zero_grad()

    return model, opt, loop


def amp_bf16_cpu():
    torch.manual_seed(0)
    x, y = _cls_data()
    model = nn.Sequential(nn.Linear(10, 32), nn.GELU(), nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")

    def loop(w):
        for _ in range(STEPS):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    return model, opt, loop


def lbfgs():
    torch.manual_seed(0)
    x = torch.randn(64, 5)
    y = x @ torch.randn(5, 1) + 0.3
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    def loop(w):
        for _ in range(10):
            opt.step(closure)

    return model, opt, loop


def embedding_bag_of_words():
    torch.manual_seed(0)
    tokens = torch.randint(0, 100, (64, 12))
    y = (tokens < 50).sum(1).gt(6).long()
    model = nn.ModuleDict({"emb": nn.Embedding(100, 16), "head": nn.Linear(16, 2)})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loop(w):
        for _ in range(STEPS):
            opt.zero_grad()
            nn.functional.cross_entropy(model["head"](model["emb"](tokens).mean(1)), y).backward()
            opt.step()

    return model, opt, loop


def branch_every_other_step():
    torch.manual_seed(0)
    x, y = _cls_data()
    model = nn.ModuleDict({"trunk": nn.Linear(10, 16), "a": nn.Linear(16, 3), "b": nn.Linear(16, 3)})
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def loop(w):
        for k in range(STEPS):
            opt.zero_grad()
            head = model["a"] if k % 2 == 0 else model["b"]  # each head skipped every other step
            nn.functional.cross_entropy(head(torch.relu(model["trunk"](x))), y).backward()
            opt.step()

    return model, opt, loop


def manual_tensor_loop():
    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 50)
    y = 2 * x + 1 + 0.05 * torch.randn(50)
    w_ = torch.zeros(1, requires_grad=True)
    b_ = torch.zeros(1, requires_grad=True)

    def loop(w):
        for _ in range(STEPS):
            ((w_ * x + b_ - y) ** 2).mean().backward()
            with torch.no_grad():
                w_.sub_(0.1 * w_.grad)
                b_.sub_(0.1 * b_.grad)
            w_.grad.zero_()
            b_.grad.zero_()

    return {"w": w_, "b": b_}, None, loop


def decorator_two_optimizers():
    torch.manual_seed(0)
    x, y = _cls_data()
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    opt_body = torch.optim.SGD(model[0].parameters(), lr=0.05)
    opt_head = torch.optim.Adam(model[2].parameters(), lr=1e-2)

    def loop(w):
        @w.train_step
        def step():
            opt_body.zero_grad()
            opt_head.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt_body.step()
            opt_head.step()
            return loss

        for _ in range(STEPS):
            step()

    return model, [opt_body, opt_head], loop


def sharpness_aware_minimization():
    # SAM (Foret et al., ICLR 2021), as davda54/sam writes it: the first backward pass's gradient moves
    # the weights to the worst case nearby and is then zeroed; the second one is the optimizer's
    torch.manual_seed(0)
    x, y = _cls_data()
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def loop(w):
        for _ in range(STEPS):
            nn.functional.cross_entropy(model(x), y).backward()
            with torch.no_grad():
                norm = torch.norm(torch.stack([p.grad.norm() for p in model.parameters()]))
                moves = [0.05 * p.grad / (norm + 1e-12) for p in model.parameters()]
                for p, e in zip(model.parameters(), moves):
                    p.add_(e)  # first_step: climb
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            with torch.no_grad():
                for p, e in zip(model.parameters(), moves):
                    p.sub_(e)  # second_step: back to the weights, then the base optimizer's update
            opt.step()
            opt.zero_grad()

    return model, opt, loop


HEALTHY = {
    f.__name__: f
    for f in (
        mlp_adam,
        cnn_batchnorm_inplace_relu,
        lstm_with_clipping,
        transformer_weight_tying,
        finetune_frozen_backbone,
        gan,
        grad_accumulation,
        amp_bf16_cpu,
        lbfgs,
        embedding_bag_of_words,
        branch_every_other_step,
        manual_tensor_loop,
        decorator_two_optimizers,
        sharpness_aware_minimization,
    )
}


@pytest.mark.parametrize(
    "name", [pytest.param(k, marks=needs_amp_gradscaler) if k.startswith("amp") else k for k in HEALTHY]
)
def test_healthy_loop_reports_nothing(name: str) -> None:
    target, opt, loop = HEALTHY[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("error", gw.GradWatchWarning)
        with gw.watch(target, opt) as w:
            loop(w)
    assert w.findings == [], "\n".join(str(f) for f in w.findings)
    assert len(w.history) >= 9
    assert "0 finding(s)" in w.report()
