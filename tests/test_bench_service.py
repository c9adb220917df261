"""Smoke tests of bench/service_throughput.py and bench/worker_scaling.py: a real gunicorn + Celery worker on
SQLite and the embedded broker, --quick settings (service: K = 1 and 2, n = 1, 4 jobs a phase; scaling: 1 and
2 pool processes, K = 4, 8 jobs a phase, 2 model versions). They parse the BENCH_JSON line and check its
fields; no timing is asserted."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import subprocess_env

from bench.common import parse_json_line

REPO = Path(__file__).resolve().parents[1]


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def assert_raw_around_phase(row: dict, ratio: float) -> None:
    """The raw model was timed just before and after the phase; the ratio divides by the mean of the two times,
    so the raw speed it uses lies between them, and the drift is their quotient."""
    before, after = row["raw_before_images_per_s"], row["raw_after_images_per_s"]
    assert positive(before) and positive(after)
    mean_ms = (row["n"] / before + row["n"] / after) / 2 * 1e3
    assert abs(row["raw_ms"] - mean_ms) <= 0.002 + 0.01 * mean_ms, row
    assert min(before, after) * 0.99 <= row["raw_images_per_s"] <= max(before, after) * 1.01, row
    assert abs(row["raw_drift"] - (after / before - 1)) <= 0.01 * (1 + abs(row["raw_drift"])), row
    assert ratio == pytest.approx(row["images_per_s"] / row["raw_images_per_s"], rel=2e-3, abs=1e-3)

@pytest.mark.integration
@pytest.mark.timeout(600)
@pytest.mark.parametrize("extra", [["--min-seconds", "1"], ["--client-mode", "poll", "--untrained-shape", "1x16x16"]],
                         ids=["wait-1s-phases", "poll-untrained-model"])
def test_service_throughput_quick(extra):
    env = subprocess_env()
    res = subprocess.run([sys.executable, str(REPO / "bench" / "service_throughput.py"), "--quick",
                          "--timeout", "500", *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=560)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.lstrip().startswith("| ")  # the markdown table comes first
    polling = "poll" in extra
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
        assert positive(row["cpu_busy"])
        assert_raw_around_phase(row, row["ratio"])
        if polling:  # polling clients: each sees at most one job per poll interval
            assert positive(row["poll_ms"]) and positive(row["client_bound_images_per_s"])
        else:  # waiting clients: no poll, no bound from it
            assert row["poll_ms"] is None and row["client_bound_images_per_s"] is None
        assert set(row["cpu_ms_per_job"]) == {"web", "worker", "clients", "worker_main"}
        assert row["warmup_jobs"] == row["clients"]  # --quick: one untimed job per client first
        if polling:
            assert row["jobs"] == 4
        else:  # --min-seconds 1: the clients go on taking jobs until the phase has run a second
            assert row["wall_s"] >= 1.0 and row["jobs"] >= 4
    assert [r["n"] for r in payload["raw"]] == [1] and positive(payload["raw"][0]["raw_ms"])
    assert isinstance(payload["added_latency_p50_ms"], float)
    assert set(payload["ratio_at_max_clients"]) == {"1"}
    assert payload["goals"] == {"ratio_at_32_clients_min": 0.8, "added_latency_p50_ms_max": 50}
    settings = payload["settings"]
    assert settings["client_mode"] == ("poll" if polling else "wait")
    assert settings["model"] == ("1x16x16 aae-cg, untrained" if polling else "tests/fixtures/digits-aae-cg")
    assert (settings["min_seconds"], settings["phase_warmup"]) == (0.0 if polling else 1.0, 1)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_worker_scaling_quick():
    """bench/worker_scaling.py --quick: pool processes 1 and 2, K = 4, n = 1; memory with 2 model versions."""
    env = subprocess_env()
    res = subprocess.run([sys.executable, str(REPO / "bench" / "worker_scaling.py"), "--quick", "--timeout", "240"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.lstrip().startswith("| ")
    payload = parse_json_line(res.stdout)
    assert payload["benchmark"] == "worker_scaling"
    assert payload["machine"]["cpu_cores"] >= 1 and payload["machine"]["usable_cores"] >= 1
    assert payload["settings"]["quick"] is True and payload["settings"]["backend"] == "sqlite+embedded"
    rows = payload["scaling"]
    assert [(r["pool_processes"], r["n"], r["clients"]) for r in rows] == [(1, 1, 4), (2, 1, 4)]
    for row in rows:
        assert len(row["pool_rss_mib"]) == row["pool_processes"] and all(positive(v) for v in row["pool_rss_mib"])
        for key in ("images_per_s", "ratio_vs_first", "ratio_vs_raw", "p50_ms", "wall_s"):
            assert positive(row[key]), (key, row)
        assert_raw_around_phase(row, row["ratio_vs_raw"])
        assert set(row["cpu_ms_per_job"]) == {"web", "worker", "clients", "worker_main"}
    assert rows[0]["ratio_vs_first"] == 1
    memory = payload["memory"]
    assert [(m["cache_size"], m["models_used"]) for m in memory] == [(2, 0), (2, 1), (2, 2)]
    assert all(positive(m["pool_rss_mib"]) and positive(m["parent_rss_mib"]) for m in memory)
    assert memory[0]["delta_mib"] == 0 and memory[2]["pool_rss_mib"] > memory[0]["pool_rss_mib"]  # models loaded


@pytest.mark.timeout(120)
def test_job_breakdown_quick():
    """bench/job_breakdown.py --quick: the task run in-process on SQLite, per stage; B = 1 and 4 jobs batched."""
    env = subprocess_env()
    res = subprocess.run([sys.executable, str(REPO / "bench" / "job_breakdown.py"), "--quick"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=110)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    payload = parse_json_line(res.stdout)
    assert payload["benchmark"] == "job_breakdown" and payload["settings"]["backend"] == "sqlite"
    rows = payload["rows"]
    assert [(r["n"], r["batched_jobs"]) for r in rows] == [(1, 1), (1, 4)]
    for row in rows:
        assert set(row["task_ms"]) == {*payload["stages"], "other", "total"}
        assert positive(row["task_ms"]["total"]) and positive(row["task_ms"]["decode"])
        assert row["per_job_ms"]["total"] == pytest.approx(row["task_ms"]["total"] / row["batched_jobs"], abs=1e-2)
        assert row["commits_per_task"] == 2  # the claims, then the finish, whatever the batch
    assert rows[0]["noop_message_ms"] is None and positive(rows[1]["noop_message_ms"])


@pytest.mark.parametrize(("script", "flag"), [
    ("service_throughput", "--images"), ("service_throughput", "--clients"), ("worker_scaling", "--workers"),
    ("worker_scaling", "--models"), ("job_breakdown", "--batched"), ("png_pipeline", "--images")])
@pytest.mark.parametrize("bad", ["a,b", "0", "1,-2", ""])
def test_a_bad_count_list_is_refused_naming_the_flag(script, flag, bad, capsys):
    import importlib

    parse_args = importlib.import_module(f"bench.{script}").parse_args
    with pytest.raises(SystemExit):
        parse_args([flag, bad])
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "expected whole numbers >= 1" in err


def test_count_lists_parse_to_numbers():
    from bench.common import counts
    from bench.service_throughput import parse_args

    assert counts("1, 8,32") == [1, 8, 32]
    args = parse_args(["--clients", "4,2"])
    assert args.clients == [4, 2] and args.images == [1, 16]
    assert parse_args(["--quick"]).clients == [1, 2]


@pytest.mark.parametrize("script", ["service_throughput", "job_breakdown", "png_pipeline"])
@pytest.mark.parametrize("bad", ["3x64", "0x8x8", "axbxc"])
def test_a_bad_untrained_shape_is_refused_naming_the_flag(script, bad, capsys):
    import importlib

    parse_args = importlib.import_module(f"bench.{script}").parse_args
    with pytest.raises(SystemExit):
        parse_args(["--untrained-shape", bad])
    assert "--untrained-shape" in capsys.readouterr().err


def test_phase_warmup_zero_means_a_cold_phase():
    from bench.service_throughput import parse_args

    args = parse_args(["--phase-warmup", "0", "--min-seconds", "0"])
    assert (args.phase_warmup, args.min_seconds, args.raw_min_seconds) == (0, 0.0, 0.3)
    assert parse_args(["--quick"]).raw_min_seconds == 0.05


def test_raw_model_times_enough_calls_to_fill_raw_min_seconds(monkeypatch):
    """A fast model gets more timed calls than --repeats, up to --raw-min-seconds of them; a slow one --repeats."""
    import bench.service_throughput as st

    calls: list[int] = []
    monkeypatch.setattr(st, "time_call", lambda fn, device, *, warmup, repeats: calls.append(repeats)
                        or st.Timing(0.001, 0.001))
    raw = st.RawModel(st.CHECKPOINT, warmup=0, repeats=5, min_seconds=0.0)
    row = raw.time(1)
    assert calls == [5, 5] and row["raw_ms"] == 2.0 and row["raw_images_per_s"] == 500.0
    calls.clear()
    raw.min_seconds = 1.0  # the shipped model takes well under 0.1 s a call
    raw.time(1)
    assert all(10 < repeats <= 10_000 for repeats in calls), calls


@pytest.mark.parametrize("flag", ["--min-seconds", "--phase-warmup", "--raw-min-seconds"])
def test_negative_phase_settings_are_refused_naming_the_flag(flag):
    from bench.service_throughput import parse_args

    with pytest.raises(SystemExit, match=flag):
        parse_args([flag, "-1"])


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_broker_idle_cpu_with_and_without_local_wakeups():
    """Two idle workers side by side (LOCAL_WAKEUPS on and off); their folders and sockets are gone after."""
    env = subprocess_env()
    res = subprocess.run([sys.executable, str(REPO / "bench" / "broker_idle_cpu.py"), "--intervals", "0.05",
                          "--local-wakeups", "both", "--settle", "8", "--seconds", "1"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    payload = parse_json_line(res.stdout)
    assert set(payload["idle_cpu_cores"]) == {"0.05 on", "0.05 off"}
    assert all(value >= 0 for value in payload["idle_cpu_cores"].values())
    assert "| 50 | on |" in res.stdout and "| 50 | off |" in res.stdout


def test_broker_idle_cpu_refuses_a_bad_local_wakeups(capsys):
    from bench import broker_idle_cpu

    with pytest.raises(SystemExit):
        broker_idle_cpu.main(["--local-wakeups", "maybe"])
    assert "--local-wakeups" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_recovery_quick():
    """bench/recovery.py --quick on the embedded default: a pool process and a worker's main process are
    SIGKILLed and the web server reloaded under load; nothing is lost, duplicated, failed or changed, no
    client sees an error, and each killed worker's jobs are done again (how soon is the benchmark's figure,
    docs/benchmarks.md: a test asserts no times)."""
    env = subprocess_env()
    res = subprocess.run([sys.executable, str(REPO / "bench" / "recovery.py"), "--quick", "--timeout", "500"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=560)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    payload = parse_json_line(res.stdout)
    assert payload["benchmark"] == "recovery" and payload["backend"] == "sqlite+embedded"
    assert payload["jobs"] >= 40
    for key in ("lost", "duplicated", "failed", "wrong_image_rows", "pixel_differences", "client_errors"):
        assert payload[key] == 0, (key, payload)
    kinds = [fault["kind"] for fault in payload["faults"]]
    assert kinds == ["kill-child", "kill-main", "reload-web"], payload["faults"]
    assert payload["recovery_worker"]["count"] >= 1 and payload["recovery_worker"]["max_s"] > 0, payload


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_request_floor_reports_every_layer_on_postgres_and_redis():
    from bench.service_throughput import servers_cpu_seconds
    from tests.service.conftest import PG_ADMIN_URL, REDIS_URL

    res = subprocess.run([sys.executable, str(REPO / "bench" / "request_floor.py"), "--requests", "20",
                          "--database-url", PG_ADMIN_URL.replace("+psycopg", ""), "--redis-url", REDIS_URL],
                         cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=280)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = parse_json_line(res.stdout)["rows"]
    for name in ("bare gunicorn", "service 404", "service job read"):
        assert set(rows[name]) == {"new connection", "kept alive"} and all(v >= 0 for v in rows[name].values())
    assert positive(rows["one statement"]["in process"])
    assert servers_cpu_seconds()["postgres"] > 0  # the PostgreSQL server this test just used has spent CPU
