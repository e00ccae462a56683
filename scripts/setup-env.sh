#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install bigmm with its runtime
# dependencies only (the user path: scripts/quickstart.sh). `setup-env.sh --test` adds the test extra
# (pytest, hypothesis, pandas, xarray, dask-jobqueue ...: the developer/CI path, scripts/test.sh).
# Needs only Python >= 3.10 with venv (Debian: python3 python3-venv). Idempotent.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"
target="$root"
stamp="$root/.venv/.bigmm-installed"
if [ "${1:-}" = "--test" ]; then
  target="$root[test]"
  stamp="$root/.venv/.bigmm-installed-test"
fi
if [ ! -x "$root/.venv/bin/python" ]; then
  "$py" -m venv "$root/.venv"
fi
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  pip=("$root/.venv/bin/python" -m pip --quiet --disable-pip-version-check --no-input)
  "${pip[@]}" install --upgrade pip
  "${pip[@]}" install -e "$target"
  touch "$stamp"
fi
