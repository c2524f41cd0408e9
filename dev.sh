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
    # (stale when the project's metadata or the C extension's source changed since the last install)
    if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] \
        && [ "$stamp" -nt setup.py ] && [ "$stamp" -nt gradwatch/stats/_native.c ]; then
        return
    fi
    echo "== setting up $VENV (torch==2.13.0 CPU, gradwatch[dev]) ==" >&2
    # The environment takes about 3 GB; say so plainly before pip fails half-way with ENOSPC.
    local free_kb
    free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
    if [ -n "$free_kb" ] && [ "$free_kb" -lt 3000000 ]; then
        echo "dev.sh: only $((free_kb / 1024)) MiB free here; setting up $VENV needs about 3 GB." >&2
        echo "        Free some disk space (or set GRADWATCH_VENV to a folder on a larger disk) and rerun." >&2
    fi
    # No pip cache: it would keep a second copy of every downloaded wheel on the same disk.
    export PIP_NO_CACHE_DIR=1
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
