"""Config: every option declared once, validated and normalised at construction."""

from __future__ import annotations

import dataclasses
import inspect
import pathlib

import pytest
import torch

import gradwatch as gw
from gradwatch.config import Config, every, never


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"every": -1}, ValueError, "every must be an int >= 1"),
        ({"every": True}, TypeError, "ambiguous"),
        ({"every": "often"}, TypeError, "every must be an int step period"),
        ({"histogram_bins": 0}, ValueError, "histogram_bins must be >= 1"),
        ({"histogram_bins": 10**9}, ValueError, "histogram_bins must be between 1 and 1024"),
        ({"every": 0}, ValueError, r"every=0 would record no step at all.*gradwatch.never"),
        ({"every": None}, ValueError, r"every=None would record no step at all"),
        ({"vanishing_ratio": 5}, ValueError, r"vanishing_ratio must be in \(0, 1\), got 5.0"),
        ({"exploding_ratio": 0.5}, ValueError, "exploding_ratio must be > 1, got 0.5"),
        ({"max_history": 2.5}, TypeError, "max_history must be an int"),
        ({"start_step": -3}, ValueError, "start_step must be >= 0"),
        ({"persistence": True}, TypeError, "persistence must be an int"),
        ({"vanishing_ratio": 0.0}, ValueError, "vanishing_ratio must be a finite number > 0"),
        ({"exploding_ratio": float("inf")}, ValueError, "exploding_ratio must be a finite number > 0"),
        ({"vanishing_norm": "1e-4"}, TypeError, "vanishing_norm must be a number"),
        ({"on_finding": "loud"}, ValueError, "on_finding must be 'warn', 'raise' or 'ignore'"),
        ({"update_ratio": 1}, TypeError, "update_ratio must be True or False"),
        ({"rank_zero_only": "yes"}, TypeError, "rank_zero_only must be True or False"),
        ({"keep_grads": 3}, TypeError, "keep_grads must be True/False or a list"),
        ({"suppress": ["no_such_kind"]}, ValueError, "unknown finding kind 'no_such_kind'"),
        ({"suppress": 5}, TypeError, "suppress must be a list of finding kinds"),
        ({"logdir": 3}, TypeError, "logdir must be a path"),
        ({"writer": object()}, TypeError, "object lacks add_scalar, add_histogram_raw, add_text, flush"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_config_is_never_built_invalid(options: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Config(**options)


def test_every_accepts_never_explicitly() -> None:
    assert Config(every=gw.never).every is gw.never


def test_logdir_and_writer_exclude_each_other(tmp_path: pathlib.Path) -> None:
    class Writer:
        def add_scalar(self) -> None: ...
        def add_histogram_raw(self) -> None: ...
        def add_text(self) -> None: ...
        def flush(self) -> None: ...

    with pytest.raises(ValueError, match="either logdir= or writer="):
        Config(logdir=tmp_path, writer=Writer())
    assert Config(writer=Writer()).logdir is None


def test_values_are_normalised_and_normalising_again_changes_nothing(tmp_path: pathlib.Path) -> None:
    c = Config(
        logdir=tmp_path,
        every=3,
        histogram_every=0,
        keep_grads="0.weight",
        suppress={"no_grad": "head.*", "all_zero_grad": []},
        vanishing_ratio=0.5,
    )
    assert c.logdir == str(tmp_path)
    assert isinstance(c.every, every) and [k for k in range(7) if c.every(k)] == [0, 3, 6]
    assert c.histogram_every is never
    assert c.keep_grads == frozenset({"0.weight"})
    assert c.suppress == (("no_grad", ("head.*",)), ("all_zero_grad", ("*",)))
    assert c.vanishing_ratio == 0.5 and isinstance(c.vanishing_ratio, float)
    again = dataclasses.replace(c)  # runs __post_init__ on normalised values
    assert again == c
    assert Config(suppress=["no_grad"]).suppress == (("no_grad", ("*",)),)


def test_the_watcher_takes_exactly_the_config_fields_as_options() -> None:
    names = Config.option_names()
    assert names == tuple(f.name for f in dataclasses.fields(Config))
    # declared once: the Watcher's signature takes **options, not a second list of them
    params = inspect.signature(gw.Watcher).parameters
    assert [p for p in params if p in names] == []
    model = torch.nn.Linear(2, 2)
    w = gw.Watcher(model, every=2, max_history=3)
    assert w.config == Config(every=2, max_history=3)
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'evry' \(did you mean 'every'\?\)"):
        gw.Watcher(model, evry=2)


def test_defaults_are_documented_in_the_config_docstring() -> None:
    doc = Config.__doc__ or ""
    for name in Config.option_names():
        assert f"    {name}:" in doc, name
