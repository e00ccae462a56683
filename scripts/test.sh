#!/usr/bin/env bash
# Set up bigmm's environment and run the test suite. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup-env.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
