"""First contact (issue 18): two watchers on one model, errors that name the option and the fix."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from torch import nn

import gradwatch as gw


def _model() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def _hook_dicts(model: nn.Module) -> list:
    return [(p._post_accumulate_grad_hooks, p._backward_hooks) for p in model.parameters()]


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))), ids=str)
def test_watchers_of_one_model_restore_the_hook_dicts_in_any_close_order(order: tuple[int, ...]) -> None:
    model, opt = _model()
    before = _hook_dicts(model)
    assert before == [(None, None)] * 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        watchers = [gw.watch(model, opt, on_finding="ignore") for _ in range(3)]
    again = [w for w in caught if issubclass(w.category, gw.GradWatchWarning)]
    assert len(again) == 2  # once at each later attach, none at the first
    assert "already watched by another watcher" in str(again[0].message)
    assert again[0].filename == __file__  # attributed to the caller
    for k in order:
        watchers[k].close()
    assert _hook_dicts(model) == before


def test_a_watcher_reattached_after_close_does_not_warn() -> None:
    model, opt = _model()
    with gw.watch(model, opt):
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gw.watch(model, opt).close()
