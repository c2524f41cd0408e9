"""The public training-loop cases in ../shared/cases, run against gradwatch.

Each ``cNN`` case is a real reported bug with the findings gradwatch must report; each ``hNN`` case a
healthy loop where gradwatch must stay silent. The cases live beside the repository (they are shared
with the people who file issues); the tests are skipped when that folder is absent.
"""

from __future__ import annotations

import functools
import importlib.util
import sys

import pytest
from conftest import SHARED_CASES

import gradwatch as gw

if not (SHARED_CASES / "check.py").exists():  # pragma: no cover
    pytest.skip(f"shared cases not found at {SHARED_CASES}", allow_module_level=True)

_spec = importlib.util.spec_from_file_location("gradwatch_shared_check", SHARED_CASES / "check.py")
check = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules[_spec.name] = check  # type: ignore[union-attr]
_spec.loader.exec_module(check)  # type: ignore[union-attr]


@pytest.mark.parametrize("path", check.discover(SHARED_CASES), ids=lambda p: p.stem)
def test_shared_case(path) -> None:
    ok, why = check.check_case(path, functools.partial(gw.watch, on_finding="ignore"))
    assert ok, why
