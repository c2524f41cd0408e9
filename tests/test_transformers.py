"""GradWatchCallback in a real Hugging Face Trainer (CPU, a tiny GPT-2 built from a config, random tokens)."""

from __future__ import annotations

import math
import pathlib
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from gradwatch.integrations.transformers import GradWatchCallback  # noqa: E402


class RawGrads(transformers.TrainerCallback):
    """The reference: each parameter's .grad norm just before optimizer.step() (after any clipping)."""

    def __init__(self) -> None:
        self.norms: list[dict[str, float]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs) -> None:
        self.norms.append(
            {n: float(p.grad.double().norm()) for n, p in model.named_parameters() if p.grad is not None}
        )


def _model():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16)
    return transformers.GPT2LMHeadModel(config)


def _train(tmp_path: pathlib.Path, steps: int, report_to: str = "none", **args_kw):
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (64, 16), generator=g)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        report_to=report_to,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        use_cpu=True,
        **args_kw,
    )
    callback, raw = GradWatchCallback(on_finding="ignore"), RawGrads()
    trainer = transformers.Trainer(model=_model(), args=args, train_dataset=data, callbacks=[raw, callback])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    return callback.watcher, raw.norms, trainer


def _check_norms(w, raw) -> None:
    assert len(raw) == len(w.history)
    for record, ref in zip(w.history, raw):
        assert set(ref) <= set(record.params)
        for name, norm in ref.items():
            assert record.params[name].grad_norm == pytest.approx(norm, rel=1e-6), name


def test_recorded_norms_are_the_gradients_the_optimizer_used(tmp_path: pathlib.Path) -> None:
    w, raw, trainer = _train(tmp_path, steps=4, max_grad_norm=0.0)
    assert not w.attached and trainer.state.global_step == 4
    assert [r.step for r in w.history] == [1, 2, 3, 4]  # as the Trainer numbers its logs
    _check_norms(w, raw)
    # GPT-2 ties the output projection to the input embedding: watched once, under its first name
    assert "lm_head.weight" not in w.names and "transformer.wte.weight" in w.names
    assert w.findings == []


def test_max_grad_norm_clips_what_is_recorded(tmp_path: pathlib.Path) -> None:
    w, raw, _ = _train(tmp_path, steps=3, max_grad_norm=0.05)
    _check_norms(w, raw)  # the reference is read after the Trainer's clipping too
    for record in w.history:
        assert record.total_grad_norm == pytest.approx(0.05, rel=1e-4)
        assert record.unclipped_total_grad_norm is not None and record.unclipped_total_grad_norm > 0.05


def test_gradient_accumulation_steps_are_one_step_each(tmp_path: pathlib.Path) -> None:
    w, raw, trainer = _train(tmp_path, steps=3, gradient_accumulation_steps=4, max_grad_norm=0.0)
    assert trainer.state.global_step == 3
    assert [r.step for r in w.history] == [1, 2, 3]
    _check_norms(w, raw)
    assert w.findings == []  # no discarded or missing-zero_grad finding across the micro-batches


def test_writes_beside_the_trainers_tensorboard_events(tmp_path: pathlib.Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    w, _, _ = _train(tmp_path, steps=3, report_to="tensorboard", max_grad_norm=0.0)
    runs = tmp_path / "out" / "runs"
    (theirs,) = [p for p in runs.iterdir() if not p.name.endswith("_gradwatch")]  # the Trainer's own run
    (ours,) = [p for p in runs.iterdir() if p.name.endswith("_gradwatch")]
    trainer_events = EventAccumulator(str(theirs))
    trainer_events.Reload()
    acc = EventAccumulator(str(ours))
    acc.Reload()
    assert [e.step for e in acc.Scalars("grad_norm/total")] == [1, 2, 3]
    # on the Trainer's step axis: its own gradient norm (before clipping; none here) at the same steps
    theirs_norm = trainer_events.Scalars("train/grad_norm")
    assert [e.step for e in theirs_norm] == [1, 2, 3]
    assert [e.value for e in theirs_norm] == pytest.approx(
        [e.value for e in acc.Scalars("grad_norm/total")], rel=1e-5
    )
    totals = [e.value for e in acc.Scalars("grad_norm/total")]
    assert totals == pytest.approx([r.total_grad_norm for r in w.history], rel=1e-6)
    assert all(math.isfinite(t) for t in totals)


def test_bad_options_fail_when_the_callback_is_made() -> None:
    with pytest.raises(ValueError, match="histogram_bins must be >= 1"):
        GradWatchCallback(histogram_bins=0)
    with pytest.raises(
        TypeError, match=r"GradWatchCallback got unknown option\(s\) 'evry' \(did you mean 'every'\?\)"
    ):
        GradWatchCallback(evry=3)
