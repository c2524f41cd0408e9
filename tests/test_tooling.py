"""The project's own tooling passes: ruff (lint + format) and mypy on gradwatch/."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import REPO


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *cmd], cwd=REPO, capture_output=True, text=True)


@pytest.mark.parametrize(
    "cmd",
    [("ruff", "check", "."), ("ruff", "format", "--check", "."), ("mypy",)],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_tool_passes(cmd) -> None:
    if shutil.which(cmd[0]) is None and _run(cmd[0], "--version").returncode != 0:
        pytest.skip(f"{cmd[0]} is not installed (pip install -e '.[dev]')")
    out = _run(*cmd)
    assert out.returncode == 0, out.stdout + out.stderr
