#!/usr/bin/env bash
# Set up bigmm's environment with the test extra and run the test suite (tests/ and the library's
# docstring examples). Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# Debian packages the tests use, installed (as root, CI) beside pip's install rather than after it:
# Chromium for the report test, slurm-wlm + munge for the SLURM tests (scripts/ci/slurm-local.sh)
apt_pid=
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v slurmctld >/dev/null 2>&1 || missing+=(slurm-wlm munge)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} for the tests (apt-get)" >&2
  (export DEBIAN_FRONTEND=noninteractive
   apt-get -qq update >/dev/null && apt-get -qq install -y --no-install-recommends "${missing[@]}" >/dev/null \
     || echo "apt-get could not install ${missing[*]}: the tests that need them say so and skip" >&2) &
  apt_pid=$!
fi
bash scripts/setup-env.sh --test
if [ -n "$apt_pid" ]; then wait "$apt_pid" || true; fi
# two pytest processes, each taking whole test files (module fixtures built once): the suite's
# runs start Python and a Dask cluster and wait on them, so one process kept 2 cores about half
# busy (15 min 56 s in all, 903 s of pytest, 16.8 CPU minutes); "-n 0" runs it in one process
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=10 "$@"
