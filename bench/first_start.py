"""What a new user waits for on the first start, with the shipped models (``models/``) on the default set-up
(SQLite + the embedded broker, as ``scripts/run.sh``):

- the web server (gunicorn, as the Procfile): spawn -> listening, and listening -> the first answer of the home
  page and of the Models page (it never loads model weights or the sentence encoder);
- a generation worker: spawn -> ready; the first job of ``mnist`` (the model is loaded) and a second one; the
  first job of ``fashion-text`` (its model and the sentence encoder are loaded) and a second one.

    OMP_NUM_THREADS=1 python bench/first_start.py --repeats 3

Prints a table and one ``BENCH_JSON`` line (``--json-out`` writes it to a file too).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python bench/first_start.py` from anywhere

from bench.common import emit, machine_info, markdown_table  # noqa: E402
from bench.service_throughput import Processes, free_port, http, service_env  # noqa: E402

JOBS = (("mnist", {"label": "7"}), ("fashion-text", {"prompt": "a dark, wide pullover"}))


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def until(predicate, timeout: float, what: str, procs: Processes) -> float:
    """Seconds until ``predicate()`` holds (checking every 10 ms)."""
    start = time.perf_counter()
    while not predicate():
        procs.check_alive()
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"gave up waiting for {what} after {timeout} s")
        time.sleep(0.01)
    return time.perf_counter() - start


def get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status == 200
    except OSError:
        return False


def prepare(env: dict[str, str]) -> None:
    """Migrate and register the shipped models, as scripts/run.sh does (priorforge db upgrade, register-shipped)."""
    import subprocess

    for argv in (["db", "upgrade"], ["register-shipped", "--models-dir", str(REPO / "models")]):
        subprocess.run([sys.executable, "-m", "priorforge.cli", *argv], cwd=REPO, env=env, check=True,
                       capture_output=True)


def web_start(procs: Processes, run: int) -> dict[str, float]:
    port = free_port()
    spawned = time.perf_counter()
    web = procs.start(f"web-{run}", [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
                                     "--workers", "2", "--worker-class", "gthread", "--threads", "16",
                                     "app.wsgi:app"])
    to_listen = until(lambda: listening(port), 120, "the web server to listen", procs)
    to_home = until(lambda: get_ok(f"http://127.0.0.1:{port}/"), 120, "the home page", procs)
    to_models = until(lambda: get_ok(f"http://127.0.0.1:{port}/models"), 120, "the Models page", procs)
    row = {"spawn_to_listen_s": to_listen, "listen_to_home_s": to_home, "then_models_page_s": to_models,
           "spawn_to_home_s": time.perf_counter() - spawned}
    procs.stop(web, grace=10)
    return row


def worker_start(procs: Processes, env: dict[str, str]) -> dict[str, float]:
    port = free_port()
    procs.start("web", [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                        "--worker-class", "gthread", "--threads", "8", "app.wsgi:app"])
    base = f"http://127.0.0.1:{port}"
    until(lambda: get_ok(f"{base}/api/v1/health"), 120, "the web server", procs)
    procs.start("worker", [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "generate,bulk",
                           "--concurrency", "1", "--loglevel", "INFO", "--without-mingle", "--without-gossip",
                           "-n", f"first-{uuid.uuid4().hex[:8]}@%h"])
    out = {"worker_spawn_to_ready_s": until(lambda: " ready." in procs.log("worker"), 240, "the worker", procs)}
    for model, condition in JOBS:
        for attempt in ("first", "second"):
            started = time.perf_counter()
            status, body = http("POST", f"{base}/api/v1/jobs?wait=60", {"model": model, "n": 1, **condition},
                                timeout=90)
            while status in (200, 202) and body.get("status") in ("queued", "running"):  # past the longest wait
                status, body = http("GET", f"{base}{body['url']}?wait=60", None, timeout=90)
            if status != 200 or body.get("status") != "succeeded":
                raise RuntimeError(f"{model}: {status} {body}")
            out[f"{model}_{attempt}_job_s"] = time.perf_counter() - started
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="web server starts (the median is reported)")
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the temporary instance folder")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if not list((REPO / "models").glob("*/card.json")):
        parser.error("no shipped models in models/ (bash scripts/build-models.sh)")
    info = machine_info(torch.device("cpu"))
    workdir = Path(tempfile.mkdtemp(prefix="pf-bench-first-"))
    env = service_env(workdir, f"sqlite:///{workdir / 'app.sqlite3'}", f"sqla+sqlite:///{workdir / 'broker.sqlite3'}",
                      None)
    procs = Processes(workdir, env)
    try:
        prepare(env)
        starts = [web_start(procs, run) for run in range(args.repeats)]
        jobs = worker_start(procs, env)
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    medians = {key: round(statistics.median(row[key] for row in starts), 3) for key in starts[0]}
    rows = [[key, value] for key, value in {**medians, **{k: round(v, 3) for k, v in jobs.items()}}.items()]
    emit(markdown_table(["measure", "seconds"], rows),
         {"machine": info, "web_starts": starts, "web_median": medians, "worker": jobs}, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
