#!/usr/bin/env bash
# Install nim_async with its dev tools, start the real services the tests use (a Docker engine
# and an authenticated local registry holding the emulator image), then run the whole suite.
#
#   scripts/test.sh [pytest args...]
#
# Needs root for dockerd (as CI has). Without root, the Docker tests skip with a reason.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'

if [ "$(id -u)" = 0 ]; then
  scripts/test-env.sh up
else
  echo "test.sh: not root, so no Docker engine is started; the docker-marked tests will skip" >&2
fi
scripts/vllm-env.sh up
# the kubernetes tier (tests/kubernetes): only when its binaries were built once (about 25 min)
if scripts/k8s-env.sh up; then :; else
  echo "test.sh: no Kubernetes tier; build it once with: scripts/k8s-env.sh build" >&2
fi
scripts/aiperf-env.sh  # aiperf 0.13 in a venv of its own: tests/bench/test_aiperf_agreement.py

.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/pytest "$@"
