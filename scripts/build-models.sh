#!/usr/bin/env bash
# Rebuilds every shipped model in models/ from its recorded recipe: trains it on the data sets in
# ${DATA_ROOT:-../shared/data} within its CPU budget, evaluates it (5,000 samples), exports it (fp16,
# inference only) and rewrites its card. Extra arguments go to `priorforge zoo build`, e.g.
# `bash scripts/build-models.sh --only mnist --jobs 2`. Full training checkpoints stay in runs/zoo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
exec .venv/bin/priorforge zoo build --data-root "${DATA_ROOT:-../shared/data}" "$@"
