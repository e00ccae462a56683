#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install bigmm with its test extras.
# Needs only Python >= 3.10 with venv (Debian: python3 python3-venv). Idempotent.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"
if [ ! -x "$root/.venv/bin/python" ]; then
  "$py" -m venv "$root/.venv"
fi
stamp="$root/.venv/.bigmm-installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  "$root/.venv/bin/python" -m pip install --quiet --upgrade pip
  "$root/.venv/bin/python" -m pip install --quiet -e "$root[test]"
  touch "$stamp"
fi
