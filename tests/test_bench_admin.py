"""Smoke test of bench/admin_training.py --quick: upload a digits zip, train a tiny model through the admin API
on a real Celery worker, promote it, generate with it. It parses the BENCH_JSON line; no timing is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import subprocess_env

from bench.common import parse_json_line

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_admin_training_quick(tmp_path):
    env = subprocess_env()
    env["PRIORFORGE_CACHE"] = str(tmp_path / "cache")
    res = subprocess.run([sys.executable, str(REPO / "bench" / "admin_training.py"), "--quick"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=560)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    payload = parse_json_line(res.stdout)
    assert payload["bench"] == "admin_training" and payload["dataset"] == "digits"
    assert payload["images"] == 200 and payload["steps"] == 20
    assert payload["settings"]["evaluate"] is False and "evaluation" not in payload["metrics"]
    assert "| images uploaded | 200 |" in res.stdout
