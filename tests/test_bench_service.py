"""Smoke test of bench/service_throughput.py: a real gunicorn + one Celery worker on SQLite and the embedded
broker, --quick settings (K = 1 and 2, n = 1, 4 jobs a phase). It parses the BENCH_JSON line and checks its
fields; no timing is asserted."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import parse_json_line

REPO = Path(__file__).resolve().parents[1]


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_service_throughput_quick():
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("PRIORFORGE_") or k in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"))}
    res = subprocess.run([sys.executable, str(REPO / "bench" / "service_throughput.py"), "--quick",
                          "--timeout", "500"], cwd=REPO, env=env, capture_output=True, text=True, timeout=560)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.lstrip().startswith("| ")  # the markdown table comes first
    payload = parse_json_line(res.stdout)
    assert payload["benchmark"] == "service_throughput"
    machine = payload["machine"]
    assert machine["cpu_cores"] >= 1 and machine["torch"] and len(machine["load_average"]) == 3
    assert payload["settings"]["quick"] is True and payload["settings"]["backend"] == "sqlite+embedded"
    rows = payload["rows"]
    assert [(r["n"], r["clients"]) for r in rows] == [(1, 1), (1, 2)]
    for row in rows:
        assert row["images"] == row["jobs"] * row["n"] and row["jobs"] >= row["clients"]
        for key in ("images_per_s", "raw_images_per_s", "ratio", "wall_s", "p50_ms", "p95_ms", "p99_ms"):
            assert positive(row[key]), (key, row)
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    assert [r["n"] for r in payload["raw"]] == [1] and positive(payload["raw"][0]["raw_ms"])
    assert isinstance(payload["added_latency_p50_ms"], float)
    assert set(payload["ratio_at_max_clients"]) == {"1"}
    assert payload["goals"] == {"ratio_at_32_clients_min": 0.8, "added_latency_p50_ms_max": 50}
