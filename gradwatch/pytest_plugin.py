"""The ``gradwatch`` pytest fixture: watch a model in a training test, fail the test on a gradient bug.

Installed with gradwatch (entry point ``pytest11``), so any test can ask for it::

    def test_my_model_trains(gradwatch):
        model, opt = make_model()
        w = gradwatch(model, opt)              # a gradwatch.Watcher, attached; options as gradwatch.watch
        for x, y in batches():
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        # at the end of the test the watcher is closed; any finding fails the test with its text

The fixture is a factory: call it once per model (each watcher is closed at the end of the test, even
when the test fails). Findings are collected with ``on_finding="ignore"`` (no warnings during the
test); at teardown the fixture fails with every finding's message (``pytest.fail``), so pytest reports
an error at that test's teardown and the session fails. Keyword
arguments of the factory besides the watcher's options:

* ``fail_on``: the finding kind (a string) or kinds that fail the test (default: every kind); others
  are only reported in the failure message of a kind that does fail. With ``on_finding="raise"`` the
  test itself fails at the finding, and teardown adds nothing.

Or mark a test to choose the kinds for every watcher it makes:
``@pytest.mark.gradwatch(fail_on=["missing_zero_grad", "nonfinite_grad"])``. pytest loads this module
at start-up in every session where gradwatch is installed; that imports the ``gradwatch`` package (and
so torch), but no framework, TensorBoard or Triton.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from typing import Any

import pytest

__all__ = ["gradwatch"]


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``gradwatch`` marker."""
    config.addinivalue_line(
        "markers",
        "gradwatch(fail_on=[kinds]): the finding kinds that fail a test using the gradwatch fixture",
    )


@pytest.fixture
def gradwatch(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """Factory ``gradwatch(target, optimizer=None, *, fail_on=None, **options) -> gradwatch.Watcher``.

    Each call creates and attaches a watcher (``on_finding`` defaults to ``"ignore"``: findings are
    gathered, not warned); at teardown every watcher is closed and, if any made a finding of a kind in
    ``fail_on`` (default: all kinds, or the ``gradwatch`` marker's), the test fails with the findings'
    messages.

    Raises:
        ValueError: ``fail_on`` names an unknown finding kind (at the call).
    """
    import gradwatch as gw
    from gradwatch.config import check_kinds

    def kinds_of(value: str | Collection[str]) -> frozenset[str]:
        kinds = frozenset([value] if isinstance(value, str) else value)  # one kind, or several
        check_kinds(kinds)
        return kinds

    marker = request.node.get_closest_marker("gradwatch")
    default_kinds = frozenset(gw.FINDING_KINDS)
    if marker is not None and marker.kwargs.get("fail_on") is not None:
        default_kinds = kinds_of(marker.kwargs["fail_on"])
    made: list[tuple[Any, frozenset[str]]] = []

    def factory(
        target: Any, optimizer: Any = None, *, fail_on: str | Collection[str] | None = None, **options: Any
    ) -> Any:
        kinds = default_kinds if fail_on is None else kinds_of(fail_on)
        options.setdefault("on_finding", "ignore")
        watcher = gw.watch(target, optimizer, **options)
        made.append((watcher, kinds))
        return watcher

    yield factory
    failing: list[str] = []
    others: list[str] = []
    for watcher, kinds in made:
        watcher.close()
        if watcher.config.on_finding == "raise":
            continue  # its findings were raised in the test itself: not reported twice
        for finding in watcher.findings:
            (failing if finding.kind in kinds else others).append(str(finding))
    if failing:
        text = "\n".join(f"  {line}" for line in failing)
        rest = "".join(f"\n  (not failing) {line}" for line in others)
        pytest.fail(f"gradwatch found {len(failing)} gradient bug(s):\n{text}{rest}", pytrace=False)
