#!/usr/bin/env bash
# Rewrite constraints.txt from the newest releases that pass every check (README, "Refreshing the
# pinned versions"). Works in a throw-away venv; constraints.txt is replaced only if the whole test
# suite, ruff and mypy pass with what was installed.
#
#   bash scripts/refresh_constraints.sh            # uses python3; PYTHON=python3.12 to pick another
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(mktemp -d)/venv"
trap 'rm -rf "$(dirname "$venv")"' EXIT

"${PYTHON:-python3}" -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
pip install -q -e ".[dev]"   # no -c: the newest releases the extras allow
ruff check .
ruff format --check .
mypy
pytest -q

new="$(mktemp)"
{
  sed -n '/^#/p;/^$/q' constraints.txt   # keep the header comment
  # torch by version only, so that its CPU (+cpu) and CUDA builds both satisfy the pin
  pip freeze --exclude-editable | grep -v '^-e ' | sed -E 's/^(torch==[^+]+)\+.*/\1/'
} >"$new"
mv "$new" constraints.txt
echo "constraints.txt rewritten: $(grep -c '==' constraints.txt) pins; review with git diff"
