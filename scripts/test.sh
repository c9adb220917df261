#!/usr/bin/env bash
# The README's test command: sets up .venv, makes sure PostgreSQL, Redis and headless Chromium are there
# (installing/starting them with apt when they are missing and we are root), then runs the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k checkpoint`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
bash scripts/ensure-services.sh
# two pytest processes (pytest-xdist): most tests wait on servers, workers and browsers, so two share the
# cores well; each torch op gets one thread. PRIORFORGE_TEST_WORKERS=0 runs everything in one process.
workers=${PRIORFORGE_TEST_WORKERS:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PRIORFORGE_TEST_POSTGRES_URL=${PRIORFORGE_TEST_POSTGRES_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test}
export PRIORFORGE_TEST_REDIS_URL=${PRIORFORGE_TEST_REDIS_URL:-redis://127.0.0.1:6379/0}
# the linter and the type checker (their settings: pyproject.toml) before the tests
.venv/bin/ruff check .
.venv/bin/mypy
set +e
.venv/bin/python -m pytest -n "$workers" "$@"
rc=$?
set -e
# pytest's 5 means "no tests collected": that is a failure for us
exit $rc
