"""The ``gradwatch`` pytest fixture, run in a fresh pytest process against the installed entry point."""

from __future__ import annotations

import importlib.metadata

import pytest

pytest_plugins = ["pytester"]

_MODEL = """
import pytest, torch
from torch import nn

def make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    return model, torch.optim.SGD(model.parameters(), lr=0.01)

def train(model, opt, zero_grad=True, steps=4):
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    for _ in range(steps):
        if zero_grad:
            opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
"""


def _installed() -> bool:
    eps = importlib.metadata.entry_points(group="pytest11")
    return any(ep.value == "gradwatch.pytest_plugin" for ep in eps)


pytestmark = pytest.mark.skipif(not _installed(), reason="gradwatch is not installed (pip install -e .)")


def test_a_healthy_training_test_passes_and_a_buggy_one_fails_with_the_finding(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        _MODEL
        + """
def test_healthy(gradwatch):
    model, opt = make()
    w = gradwatch(model, opt)
    train(model, opt)
    assert w.attached

def test_forgot_zero_grad(gradwatch):
    model, opt = make()
    gradwatch(model, opt)
    train(model, opt, zero_grad=False)
"""
    )
    result = pytester.runpytest_subprocess("-q", "-W", "error")
    # the buggy test's body passes; its teardown (the fixture's) errors with the findings
    result.assert_outcomes(passed=2, errors=1)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*gradwatch found 1 gradient bug(s):*", "*[[]missing_zero_grad[]] step 1:*"])
    assert "test_healthy" not in "\n".join(line for line in result.outlines if "ERROR" in line)


def test_fail_on_limits_the_kinds_and_the_marker_sets_them_per_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        _MODEL
        + """
def test_other_kinds_only(gradwatch):
    model, opt = make()
    gradwatch(model, opt, fail_on=["nonfinite_grad"])
    train(model, opt, zero_grad=False)

@pytest.mark.gradwatch(fail_on=["vanishing_grad"])
def test_marker(gradwatch):
    model, opt = make()
    gradwatch(model, opt)
    train(model, opt, zero_grad=False)

def test_unknown_kind(gradwatch):
    model, opt = make()
    gradwatch(model, opt, fail_on=["no_such_kind"])
"""
    )
    result = pytester.runpytest_subprocess("-q")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*unknown finding kind 'no_such_kind'*"])


def test_the_watcher_is_closed_and_detached_even_when_the_test_fails(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        _MODEL
        + """
SEEN = []

def test_fails(gradwatch):
    model, opt = make()
    SEEN.append((model, gradwatch(model, opt)))
    train(model, opt)
    assert False, "the user's own assertion"

def test_after():
    model, w = SEEN[0]
    assert not w.attached
    assert all(p._post_accumulate_grad_hooks is None for p in model.parameters())
"""
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:randomly")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*the user's own assertion*"])


def test_one_kind_as_a_string_and_raise_reports_once(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        _MODEL
        + """
@pytest.mark.gradwatch(fail_on="missing_zero_grad")
def test_string_kind(gradwatch):
    model, opt = make()
    gradwatch(model, opt)
    train(model, opt, zero_grad=False)

def test_raise(gradwatch):
    model, opt = make()
    gradwatch(model, opt, on_finding="raise")
    train(model, opt, zero_grad=False)
"""
    )
    result = pytester.runpytest_subprocess("-q")
    # the string kind fails at teardown (an error); raise fails the test itself, once, not at teardown
    result.assert_outcomes(passed=1, failed=1, errors=1)
    text = result.stdout.str()
    assert "GradientError" in text and "ERROR at teardown of test_raise" not in text
