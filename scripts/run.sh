#!/usr/bin/env bash
# The README's run command: `bash scripts/run.sh` on a fresh machine.
# Creates .venv if needed (scripts/setup-env.sh), migrates the database, registers the shipped models of
# models/ (serving; a rebuilt one as a new version), then runs the web server, the generation worker and the
# training worker (honcho reads the Procfile) on http://127.0.0.1:${PORT:-8000}. With no configuration: SQLite + an embedded broker under
# instance/; set DATABASE_URL and REDIS_URL for PostgreSQL and Redis. Stop with Ctrl-C.
set -euo pipefail
# the folder of the built-in data sets (mnist, fashion-mnist, cifar10), for the web and the trainer:
# PRIORFORGE_DATA_ROOT, or DATA_ROOT as scripts/build-models.sh takes it; made absolute before the cd below, so a
# path relative to where you started this works
data_root=${PRIORFORGE_DATA_ROOT:-${DATA_ROOT:-}}
if [ -n "$data_root" ]; then export PRIORFORGE_DATA_ROOT="$(realpath -m -- "$data_root")"; fi
cd "$(dirname "$0")/.."
# one install for both README commands: scripts/setup-env.sh (also what scripts/test.sh runs) installs only
# when pyproject.toml changed since its last install, so whichever of the two runs second installs nothing
bash scripts/setup-env.sh
export PORT=${PORT:-8000}
.venv/bin/priorforge db upgrade
.venv/bin/priorforge register-shipped --models-dir models
case "${HOST:-127.0.0.1}" in 127.*|localhost|::1) ;;
  *) echo "run: HOST=$HOST exposes the service: serve it over HTTPS with PRIORFORGE_ENV=production and" \
          "PRIORFORGE_SESSION_COOKIE_SECURE=true (docs/security.md)" >&2 ;;
esac
if [ -n "$data_root" ]; then
  echo "run: built-in data sets from $PRIORFORGE_DATA_ROOT (PRIORFORGE_DATA_ROOT)" >&2
else
  echo "run: no data root (PRIORFORGE_DATA_ROOT): training on digits and uploads only; fetch mnist," \
       "fashion-mnist and cifar10 with: .venv/bin/priorforge download-data --data-root DIR" >&2
fi
echo "run: starting web (http://${HOST:-127.0.0.1}:$PORT), worker (queues generate, bulk) and trainer (train)" >&2
# honcho with a stop grace the workers fit in; each Procfile line runs through scripts/run_process.py, so a
# Ctrl-C reaches every main process alone and it stops its own children (no "exited with signal 15" errors)
exec .venv/bin/python scripts/start_procfile.py -f Procfile
