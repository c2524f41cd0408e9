#!/usr/bin/env bash
# One entry point for newcomers and CI. Each command sets up .venv first if it is missing or stale:
#   ./dev.sh example   run examples/linear_fit.py (TensorBoard logs under runs/, prints the report)
#   ./dev.sh test      run the whole test suite (what CI runs)
#   ./dev.sh setup     only create/refresh the virtual environment
# Extra arguments after the command go to the example script or to pytest.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${GRADWATCH_VENV:-.venv}"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"

setup() {
    local stamp="$VENV/.gradwatch-installed"
    if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
        return
    fi
    echo "== setting up $VENV (torch==2.13.0 CPU, gradwatch[dev]) ==" >&2
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    # torch first and pinned: an open range on a fresh environment would pull a multi-GB CUDA build.
    "$VENV/bin/python" -m pip install -q torch==2.13.0
    "$VENV/bin/python" -m pip install -q -e ".[dev]"
    touch "$stamp"
}

cmd="${1:-help}"
[ $# -gt 0 ] && shift
case "$cmd" in
    setup) setup ;;
    example) setup; exec "$VENV/bin/python" examples/linear_fit.py "$@" ;;
    test) setup; exec "$VENV/bin/python" -m pytest -q "$@" ;;
    *) sed -n '2,6p' "$0"; exit 2 ;;
esac
