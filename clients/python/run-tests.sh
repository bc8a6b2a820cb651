#!/usr/bin/env bash
# The Python client's checks: a virtualenv of its own (target/py-venv, or $CAPMESH_PY_VENV), the
# package installed with its test extras, mypy --strict and ruff, then pytest against real
# `capmesh` processes. Builds nothing: expects the binary at target/debug/capmesh
# (`cargo build -p capmesh`) or at $CAPMESH_BIN. Arguments go to pytest.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${CAPMESH_PY_VENV:-$repo/target/py-venv}"
bin="${CAPMESH_BIN:-$repo/target/debug/capmesh}"

if [ ! -x "$bin" ]; then
  echo "run-tests.sh: no capmesh binary at $bin; build it with \`cargo build -p capmesh\` or set CAPMESH_BIN" >&2
  exit 1
fi

# Python 3.11 or newer: $PYTHON, else the first such python3 on PATH.
python="${PYTHON:-}"
if [ -z "$python" ]; then
  for candidate in python3 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null \
      && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      python="$candidate"
      break
    fi
  done
fi
if [ -z "$python" ]; then
  echo "run-tests.sh: needs Python 3.11 or newer (set PYTHON)" >&2
  exit 1
fi

if [ ! -x "$venv/bin/python" ] \
  || ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$venv/bin/python" -m pip install --quiet --upgrade pip
# Installed as a user installs it (not editable): the tests import the package as shipped.
"$venv/bin/python" -m pip install --quiet "$here[test]"

cd "$here"
export CAPMESH_BIN="$bin"
echo "-- mypy --strict"
"$venv/bin/python" -m mypy
echo "-- ruff"
"$venv/bin/python" -m ruff check src tests
"$venv/bin/python" -m ruff format --check src tests
echo "-- pytest (real capmesh processes: $bin)"
"$venv/bin/python" -m pytest "$@"
