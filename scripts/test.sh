#!/usr/bin/env bash
# Set up bigmm's environment with the test extra and run the test suite (tests/ and the library's
# docstring examples). Extra arguments go to pytest. The report test renders report.html in headless
# Chromium: on a Debian machine run as root (CI) it is installed here when missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup-env.sh --test
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium for the report test (apt-get)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get -qq update >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends chromium >/dev/null
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
