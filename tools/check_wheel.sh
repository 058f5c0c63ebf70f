#!/usr/bin/env bash
# A non-editable install into a fresh virtual environment has its recipes and
# its command line: `pip install .`, then `keras-rpat recipe list`,
# `keras-rpat recipe table3 --smoke` and `python -m keras_rpat --help`, all run
# outside the source tree (so only the installed package can be found).
#
#   bash tools/check_wheel.sh [VENV_DIR]     # default: a temporary folder, removed afterwards
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH_CPU="${TORCH_CPU:-torch==2.13.0}"
VENV="${1:-$(mktemp -d)/venv}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" "$TORCH_CPU"
"$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" "$ROOT"

cd "$WORK"
export KERAS_BACKEND=torch
"$VENV/bin/keras-rpat" recipe list | tee list.txt
test "$(grep -c ' runs x ' list.txt)" -eq 9
"$VENV/bin/keras-rpat" recipe table3 --smoke --out smoke --verbose 0 | tail -3
test -f smoke/table3.md
"$VENV/bin/python" -m keras_rpat --help | head -3
echo "OK: the wheel installed in $VENV has its recipes and its command line"
