"""GradWatchCallback in a real Lightning Trainer (CPU, tiny model built in code, random data)."""

from __future__ import annotations

import math
import pathlib
import warnings

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from gradwatch.integrations.lightning import GradWatchCallback  # noqa: E402


class Net(pl.LightningModule):
    def __init__(self, unused_layer: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
        self.unused = nn.Linear(6, 1) if unused_layer else None

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class RawGrads(pl.Callback):
    """The reference: each parameter's .grad norm as Lightning hands it to on_before_optimizer_step."""

    def __init__(self) -> None:
        self.norms: list[dict[str, float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.norms.append(
            {n: float(p.grad.double().norm()) for n, p in pl_module.named_parameters() if p.grad is not None}
        )


def _fit(
    tmp_path: pathlib.Path, steps: int, module: pl.LightningModule | None = None, ckpt_path=None, **trainer_kw
):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 6, generator=g)
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8
    )
    callback, raw = GradWatchCallback(on_finding="ignore"), RawGrads()
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=pl.loggers.TensorBoardLogger(str(tmp_path), name="run"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[raw, callback],
        **trainer_kw,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's own hints (few workers, small dataset)
        trainer.fit(module or Net(), data, ckpt_path=ckpt_path)
    return callback.watcher, raw.norms, trainer


def test_recorded_norms_are_the_gradients_the_optimizer_used(tmp_path: pathlib.Path) -> None:
    w, raw, trainer = _fit(tmp_path, steps=6)
    assert not w.attached and trainer.global_step == 6
    assert [r.step for r in w.history] == list(range(6))
    assert len(raw) == 6
    for record, ref in zip(w.history, raw):
        assert set(ref) == set(record.params)
        for name, norm in ref.items():
            assert record.params[name].grad_norm == pytest.approx(norm, rel=1e-6)
            assert record.params[name].update_ratio is not None and record.params[name].update_ratio > 0
    assert w.findings == []


def test_gradient_clipping_is_seen_as_the_optimizer_saw_it(tmp_path: pathlib.Path) -> None:
    w, raw, _ = _fit(tmp_path, steps=4, gradient_clip_val=0.01)
    for record, ref in zip(w.history, raw):
        unclipped = math.sqrt(sum(v * v for v in ref.values()))
        assert unclipped > 0.05  # clipping is active on every step
        assert record.total_grad_norm == pytest.approx(0.01, rel=1e-4)  # clip_grad_norm_ to 0.01
        # what gradient_clip_val hid: the total before clipping, as clip_grad_norm_ measured it
        assert record.unclipped_total_grad_norm == pytest.approx(unclipped, rel=1e-5)


def test_accumulated_batches_are_one_step_with_their_summed_gradient(tmp_path: pathlib.Path) -> None:
    w, raw, trainer = _fit(tmp_path, steps=3, accumulate_grad_batches=3)
    assert trainer.global_step == 3
    assert [r.step for r in w.history] == [0, 1, 2]
    for record, ref in zip(w.history, raw):
        for name, norm in ref.items():
            assert record.params[name].grad_norm == pytest.approx(norm, rel=1e-6)
    assert w.findings == []  # Lightning zeroes once per window: no discarded or missing-zero_grad finding


def test_writes_through_the_trainers_tensorboard_logger(tmp_path: pathlib.Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    w, _, trainer = _fit(tmp_path, steps=3)
    acc = EventAccumulator(trainer.logger.log_dir)
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "grad_norm/net.0.weight" in tags and "grad_norm/total" in tags
    assert [e.step for e in acc.Scalars("grad_norm/total")] == [0, 1, 2]
    assert [e.value for e in acc.Scalars("grad_norm/total")] == pytest.approx(
        [r.total_grad_norm for r in w.history], rel=1e-6
    )


def test_a_layer_left_out_of_the_forward_pass_is_found(tmp_path: pathlib.Path) -> None:
    w, _, _ = _fit(tmp_path, steps=6, module=Net(unused_layer=True))
    kinds = {f.kind: f for f in w.findings}
    assert "no_grad" in kinds and set(kinds["no_grad"].params) == {"unused.weight", "unused.bias"}


def test_a_resumed_fit_continues_the_step_axis(tmp_path: pathlib.Path) -> None:
    _, _, trainer = _fit(tmp_path, steps=4)
    checkpoint = tmp_path / "four.ckpt"
    trainer.save_checkpoint(str(checkpoint))
    w, raw, trainer = _fit(tmp_path, steps=7, ckpt_path=str(checkpoint))
    assert trainer.global_step == 7
    assert [r.step for r in w.history] == [4, 5, 6]
    assert len(raw) == 3


def test_bad_options_fail_when_the_callback_is_made() -> None:
    with pytest.raises(ValueError, match="on_finding must be"):
        GradWatchCallback(on_finding="loud")
    with pytest.raises(TypeError, match="start_step from the trainer"):
        GradWatchCallback(start_step=3)
    with pytest.raises(
        TypeError, match=r"GradWatchCallback got unknown option\(s\) 'evry' \(did you mean 'every'\?\)"
    ):
        GradWatchCallback(evry=3)
