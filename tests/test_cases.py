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

#: Finding kinds whose detectors are not built yet, with the issue that builds them. A case expecting
#: one of these is a strict expected failure: the day it passes, this table must shrink.
NOT_YET = {
    "nonfinite_grad": "issue 4",
    "no_grad": "issue 4",
    "not_updated": "issue 4",
    "vanishing_grad": "issue 4",
    "exploding_grad": "issue 4",
    "all_zero_grad": "issue 4",
    "ineffective_freeze": "issue 4",
}


def _params():
    for path in check.discover(SHARED_CASES):
        case = check.load_case(path)
        pending = sorted({NOT_YET[k] for k, spec in case.EXPECT.items() if spec["must"] and k in NOT_YET})
        marks = (
            [pytest.mark.xfail(strict=True, reason=f"detector not built yet ({', '.join(pending)})")]
            if pending
            else []
        )
        yield pytest.param(path, id=path.stem, marks=marks)


@pytest.mark.parametrize("path", list(_params()))
def test_shared_case(path) -> None:
    ok, why = check.check_case(path, functools.partial(gw.watch, on_finding="ignore"))
    assert ok, why
