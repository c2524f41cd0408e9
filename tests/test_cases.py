"""Training-loop cases run against gradwatch: the shared public ones and the project's own.

Each ``cNN`` case is a bug with the findings gradwatch must report; each ``hNN`` case a healthy loop
where gradwatch must stay silent. ``../shared/cases`` (beside the repository, shared with the people who
file issues) holds public bug reports rewritten as small loops; ``tests/cases`` holds other loops of the
same kinds, written to catch a tool that only fits the shared ones. Both are judged by the shared
``check.py``; the tests are skipped when that folder is absent.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import pytest
from conftest import AMP_GRADSCALER, SHARED_CASES

import gradwatch as gw

if not (SHARED_CASES / "check.py").exists():  # pragma: no cover
    pytest.skip(f"shared cases not found at {SHARED_CASES}", allow_module_level=True)

_spec = importlib.util.spec_from_file_location("gradwatch_shared_check", SHARED_CASES / "check.py")
check = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules[_spec.name] = check  # type: ignore[union-attr]
_spec.loader.exec_module(check)  # type: ignore[union-attr]


OWN_CASES = Path(__file__).resolve().parent / "cases"


@pytest.mark.parametrize(
    "path",
    [*check.discover(SHARED_CASES), *check.discover(OWN_CASES)],
    ids=lambda p: f"{p.parent.parent.name}/{p.stem}" if p.parent == OWN_CASES else f"shared/{p.stem}",
)
def test_shared_case(path) -> None:
    if "torch.amp.GradScaler" in path.read_text() and not AMP_GRADSCALER:
        pytest.skip("the case uses torch.amp.GradScaler (PyTorch 2.3+)")
    ok, why = check.check_case(path, functools.partial(gw.watch, on_finding="ignore"))
    assert ok, why
