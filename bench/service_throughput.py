"""End-to-end service throughput and latency: the HTTP API + one Celery worker vs the raw model.

Starts a real web server (``gunicorn app.wsgi:app``) and ONE real worker (``celery -A workers.celery_app
worker -Q generate --concurrency 1``) on a fresh temporary instance folder: SQLite + the embedded broker by
default, or PostgreSQL + Redis with ``--database-url`` / ``--redis-url`` (a fresh database is created on that
server and dropped afterwards; the Redis keys get a unique ``BROKER_KEY_PREFIX`` and are deleted afterwards).
It migrates, registers the shipped checkpoint ``tests/fixtures/digits-aae-cg`` as ``digits``, sends one warm-up job
(the worker loads the model), then for each image count n and each number K of concurrent clients runs one
phase: first ``max(K, --phase-warmup)`` untimed jobs (none with 0) at the same K and n (the web server's
threads and pooled database connections are opened, the clients' sockets too: without this a short phase
measured start-up, not the steady state), then the timed part, where K threads share at least ``max(2K, 16)`` jobs
(``--jobs-per-client``, ``--min-jobs``) and go on taking jobs until ``--min-seconds`` have passed; each thread
submits a job, waits until it has succeeded, and takes the next. How a client waits (``--client-mode``):

* ``wait`` (the default): one request per job, ``POST /api/v1/jobs?wait=60``, answered when the job has
  ended (app/core/fastpath/job_events.py); the latency is exact.
* ``post-wait``: ``POST /api/v1/jobs`` (answered 202 at once), then ``GET /api/v1/jobs/<id>?wait=60``: two
  requests per job, as a client does that submits first and collects later.
* ``poll``: ``POST /api/v1/jobs``, then ``GET /api/v1/jobs/<id>`` every ``max(--poll-ms, K * 1000 /
  --max-poll-rate)`` ms (all clients together poll at most ``--max-poll-rate`` times a second, so polling
  does not take the CPU the worker needs) until it has succeeded: latencies are rounded up by up to one
  poll interval (10 ms at K = 1 by default), and each client sees at most one job per poll interval, the
  closed-loop bound ``K * n / poll interval`` printed beside (no service can go faster).

Per phase: throughput = images / wall time of the phase (first submit -> last success), and the latency of
each job (submit -> the answer that said ``succeeded``) at p50/p95/p99. Also the CPU milliseconds per job
of the web server (gunicorn, ``--web-workers`` processes of ``--web-threads`` threads, as the Procfile), the worker
(and of its main process alone) and this script's client threads (``/proc``, Linux), with "cores busy" =
their CPU seconds / wall seconds.

In the same run the raw model is timed in this process: the checkpoint loaded on the CPU, ``sample_latents``
+ ``decode`` at batch n, single thread, median of ``--repeats`` (as ``bench/sampling_speed.py``); once before
the servers start (the ``raw`` list), then just before and just after each phase at its n, the servers up and
idle. A phase's ratio service/raw divides by the mean of the two times around it, so a drift of the shared
machine's speed between the start and the phase does not show up as the service's cost; ``raw drift`` (the
raw speed after the phase / before it - 1) shows how far the speed moved during the phase. The added latency
of one 1-image job at K = 1 is the service p50 minus the raw time of one image around that phase. The worker
runs with ``OMP_NUM_THREADS=1`` too. Goals: service/raw >= 0.8 at K = 32, added p50 < 50 ms.

    python bench/service_throughput.py                       # SQLite + embedded broker
    python bench/service_throughput.py --database-url postgresql://postgres@127.0.0.1:5432/test \\
        --redis-url redis://127.0.0.1:6379/0                 # PostgreSQL + Redis
    python bench/service_throughput.py --quick               # K = 1, 2; n = 1; few jobs: a smoke test
    python bench/service_throughput.py --set BROKER_POLLING_INTERVAL=0.005   # an experiment (PRIORFORGE_*)

Every process it starts runs in its own process group and is stopped (SIGTERM, then SIGKILL) on the way out,
also on an error, a timeout (``--timeout``, the whole run) or SIGTERM/SIGINT. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python bench/service_throughput.py` from anywhere

import torch  # noqa: E402

from app.core.fastpath.doorbell import sweep  # noqa: E402
from bench.common import Timing, counts, emit, machine_info, markdown_table, time_call  # noqa: E402

CHECKPOINT = REPO / "tests" / "fixtures" / "digits-aae-cg"
MODEL, LABEL = "digits", "7"


def add_service_arguments(p: argparse.ArgumentParser) -> None:
    """The options this script shares with bench/worker_scaling.py: jobs, clients' polling, the servers."""
    p.add_argument("--images", type=counts, default="1,16", help="n values: images per job, comma-separated")
    p.add_argument("--jobs-per-client", type=int, default=2, help="jobs per phase = max(this * K, --min-jobs)")
    p.add_argument("--min-jobs", type=int, default=16)
    p.add_argument("--min-seconds", type=float, default=None,
                   help="a timed phase goes on taking new jobs until it has run this long, for a steady state "
                        "(default 5; 0 with --quick)")
    p.add_argument("--phase-warmup", type=int, default=None,
                   help="untimed jobs at the phase's K and n before it is timed, at least K (default 16; 1 with "
                        "--quick; 0: none, a cold phase)")
    p.add_argument("--client-mode", choices=("wait", "post-wait", "poll"), default="wait",
                   help="wait: one POST ?wait= per job; post-wait: POST, then GET ?wait=; poll: POST, then GET every "
                        "poll interval")
    p.add_argument("--poll-ms", type=float, default=10.0, help="poll interval of one client (at least)")
    p.add_argument("--max-poll-rate", type=float, default=200.0, help="polls per second of all clients together")
    p.add_argument("--web-workers", type=int, default=2, help="gunicorn worker processes")
    p.add_argument("--web-threads", type=int, default=32,
                   help="threads per gunicorn worker (gthread, as the Procfile); a waiting client holds one")
    p.add_argument("--database-url", default=None,
                   help="a PostgreSQL server (any database on it): a fresh database is created there and dropped")
    p.add_argument("--redis-url", default=None, help="Redis broker (keys get a unique prefix, deleted afterwards)")
    p.add_argument("--warmup", type=int, default=2, help="raw model: untimed calls")
    p.add_argument("--repeats", type=int, default=20, help="raw model: timed calls (median), at least")
    p.add_argument("--raw-min-seconds", type=float, default=None,
                   help="raw model: more timed calls when --repeats would take less than this, so a fast model's "
                        "median is not one moment's load (default 0.3; 0.05 with --quick)")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds for the whole run")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    p.add_argument("--json-out", default=None, help="also write the results JSON here")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--clients", type=counts, default="1,8,32", help="K values: concurrent clients, comma-separated")
    add_service_arguments(p)
    p.add_argument("--concurrency", type=int, default=1, help="Celery worker pool processes")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config value for the web server and the worker (PRIORFORGE_KEY=VALUE), for experiments; "
                        "the documented figures use none")
    p.add_argument("--log-stage-times", action="store_true",
                   help="the worker logs each task's time per stage (PRIORFORGE_LOG_STAGE_TIMES=1; with --keep)")
    p.add_argument("--untrained-shape", default=None, metavar="CxHxW",
                   help="serve a freshly initialised class-conditional aae-cg of this image shape at its default "
                        "size (e.g. 3x64x64) instead of tests/fixtures/digits-aae-cg: the speed of a bigger model (the "
                        "weights do not change the speed; the images are noise)")
    p.add_argument("--quick", action="store_true", help="K = 1, 2; n = 1; 4 jobs per phase; 5 raw repeats")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="record the web server's and the worker's processes with py-spy during the phases: "
                        "DIR/web.svg and DIR/worker.svg (flame graphs of CPU samples; pip install py-spy)")
    args = p.parse_args(argv)
    if args.untrained_shape:
        args.untrained_shape = parse_shape(args.untrained_shape, p)
    if args.quick:
        args.clients, args.images, args.jobs_per_client, args.min_jobs = [1, 2], [1], 2, 4
        args.warmup, args.repeats = 1, 5
    resolve_phase_defaults(args)
    return args


def parse_shape(text: str, parser: argparse.ArgumentParser) -> tuple[int, int, int]:
    """``--untrained-shape CxHxW`` as a tuple; a parser error naming the flag otherwise."""
    try:
        shape = tuple(int(x) for x in text.lower().split("x"))
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError
    except ValueError:
        parser.error(f"--untrained-shape {text!r}: expected CxHxW, e.g. 3x64x64")
    return shape  # type: ignore[return-value]


def resolve_phase_defaults(args: argparse.Namespace) -> None:
    """--min-seconds, --phase-warmup and --raw-min-seconds when not given: a steady state (5 s after 16
    untimed jobs), or a smoke test's minimum with --quick."""
    if args.min_seconds is None:
        args.min_seconds = 0.0 if args.quick else 5.0
    if args.phase_warmup is None:
        args.phase_warmup = 1 if args.quick else 16
    if getattr(args, "raw_min_seconds", None) is None:
        args.raw_min_seconds = 0.05 if args.quick else 0.3
    if args.raw_min_seconds < 0:
        raise SystemExit(f"--raw-min-seconds {args.raw_min_seconds}: must not be negative")
    if args.min_seconds < 0:
        raise SystemExit(f"--min-seconds {args.min_seconds}: must not be negative")
    if args.phase_warmup < 0:
        raise SystemExit(f"--phase-warmup {args.phase_warmup}: must not be negative")


# -- processes ----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def check(self, what: str) -> None:
        if time.monotonic() > self.end:
            raise TimeoutError(f"--timeout reached while {what}")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, deadline: Deadline) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        deadline.check(what)
        if time.monotonic() > end:
            raise TimeoutError(f"gave up waiting for {what} after {timeout} s")
        time.sleep(0.2)


class Processes:
    """Child processes, each in its own session (process group); :meth:`stop_all` ends them all."""

    def __init__(self, workdir: Path, env: dict[str, str]):
        self.workdir, self.env, self.procs = workdir, env, []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, cwd=REPO, env=env or self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        self.procs.append((name, proc))
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, proc: subprocess.Popen, grace: float = 20) -> None:
        """Stop one of them (its process group): SIGTERM, then SIGKILL after ``grace`` seconds."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)
        self.procs = [(name, p) for name, p in self.procs if p is not proc]

    def stop_all(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                try:  # gunicorn: SIGINT is its quick shutdown (the phases are over: no request is in flight)
                    os.killpg(proc.pid, signal.SIGINT if name == "web" else signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for _, proc in reversed(self.procs):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)
        self.procs.clear()


def group_cpu_seconds(pgid: int, only_pid: int | None = None) -> float:
    """User + system CPU seconds of the live processes of a process group (or of its process ``only_pid``)
    (Linux /proc; 0 elsewhere)."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        pids = [only_pid] if only_pid is not None else [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the name: state ppid pgrp ... utime(12) stime(13)
            total += int(fields[11]) + int(fields[12])
    return total / tick


SERVER_NAMES = ("postgres", "redis-server")


def servers_cpu_seconds() -> dict[str, float]:
    """User + system CPU seconds of this machine's PostgreSQL and Redis processes, per server: each live
    process's, plus what the postmaster has reaped of its exited backends (Linux /proc; 0 elsewhere). They serve
    every client of the machine, so read it on a quiet one."""
    total = dict.fromkeys(SERVER_NAMES, 0)
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return dict.fromkeys(SERVER_NAMES, 0.0)
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                name, fields = f.read().rsplit(")", 1)
        except OSError:
            continue
        comm, values = name.split("(", 1)[1], fields.split()
        if comm in total:  # utime(12) stime(13) cutime(14) cstime(15), counted from the state field
            total[comm] += int(values[11]) + int(values[12]) + (int(values[13]) + int(values[14]) if comm == "postgres" else 0)
    return {comm: ticks / tick for comm, ticks in total.items()}


# -- PostgreSQL / Redis -------------------------------------------------------------------------------
def create_pg_database(url: str) -> tuple[str, str, str]:
    """(url of a fresh database on the server of ``url``, its name, the admin conninfo)."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(url.replace("postgres://", "postgresql://", 1))
    if admin.host not in (None, "127.0.0.1", "localhost", "::1"):
        raise SystemExit("--database-url: only a server on 127.0.0.1")
    name = f"pf_bench_{uuid.uuid4().hex[:12]}"
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    fresh = admin.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    return fresh, name, conninfo


def instance_database(database_url: str | None, workdir: Path) -> tuple[str, tuple[str, str] | None]:
    """(database URL of a fresh instance, (name, admin conninfo) to drop afterwards or None): a fresh
    database on the PostgreSQL server of ``database_url``, or a SQLite file in ``workdir``."""
    if database_url:
        url, name, conninfo = create_pg_database(database_url)
        return url, (name, conninfo)
    return f"sqlite:///{workdir / 'priorforge.sqlite3'}", None


def drop_pg_database(name: str, conninfo: str) -> None:
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def delete_redis_keys(url: str, prefix: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()


# -- HTTP ---------------------------------------------------------------------------------------------
def http(method: str, url: str, body: dict | None = None, timeout: float = 30) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def health_ok(base: str) -> bool:
    try:
        return http("GET", base + "/api/v1/health", timeout=2)[0] == 200
    except (OSError, ValueError):
        return False


WAIT_S = 60  # the server's default JOB_WAIT_MAX_SECONDS


def run_job(base: str, n: int, seed: int, poll_s: float | None, deadline: Deadline, model: str = MODEL,
            post_first: bool = False) -> float:
    """Submit one job and wait until it has succeeded; the seconds from submit to the answer that said so.
    ``poll_s`` None: one ``POST ?wait=`` (``post_first``: a plain ``POST``), then ``GET ?wait=`` while the job
    has not ended; else poll every ``poll_s``."""
    t0 = time.perf_counter()
    spec = {"model": model, "label": LABEL, "n": n, "seed": seed}
    if poll_s is None:
        status, job = http("POST", f"{base}/api/v1/jobs" + ("" if post_first else f"?wait={WAIT_S}"), spec,
                           timeout=WAIT_S + 30)
        # a wait can end early (every waiting slot of the web process taken: it answers at once): ask again
        while status in (200, 202) and job.get("status") in ("queued", "running"):
            deadline.check(f"waiting for job {job['id']}")
            status, job = http("GET", f"{base}{job['url']}?wait={WAIT_S}", timeout=WAIT_S + 30)
        if job.get("status") != "succeeded":
            raise RuntimeError(f"job -> {status} {job}")
        return time.perf_counter() - t0
    status, body = http("POST", base + "/api/v1/jobs", spec)
    if status != 202:
        raise RuntimeError(f"POST /api/v1/jobs -> {status} {body}")
    url = base + body["url"]
    while True:
        time.sleep(poll_s)
        status, job = http("GET", url)
        if status != 200:
            raise RuntimeError(f"GET {body['url']} -> {status} {job}")
        if job["status"] == "succeeded":
            return time.perf_counter() - t0
        if job["status"] in ("failed", "canceled"):
            raise RuntimeError(f"job {job['id']} {job['status']}: {job.get('error')}")
        deadline.check(f"waiting for job {job['id']}")


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def run_phase(base: str, k: int, n: int, jobs: int, poll_s: float | None, seed0: int, deadline: Deadline,
              groups: dict[str, int] | None = None, min_seconds: float = 0.0, post_first: bool = False) -> dict:
    """K client threads run at least ``jobs`` jobs, and go on starting new ones until ``min_seconds`` have
    passed; throughput, latency percentiles and CPU per job of the ``groups`` (name -> process group)."""
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    started = [0]
    t0 = 0.0

    def next_index() -> int | None:
        with lock:
            i = started[0]
            if i >= jobs and time.perf_counter() - t0 >= min_seconds:
                return None
            started[0] += 1
            return i

    def client() -> None:
        while not errors:
            i = next_index()
            if i is None:
                return
            try:
                latency = run_job(base, n, seed0 + i * n, poll_s, deadline, post_first=post_first)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                with lock:
                    errors.append(exc)
                return
            with lock:
                latencies.append(latency)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(k)]
    groups = groups or {}
    cpu0 = {name: group_cpu_seconds(pgid) for name, pgid in groups.items()}
    c0 = time.process_time()
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    clients_cpu = time.process_time() - c0
    cpu = {name: group_cpu_seconds(pgid) - cpu0[name] for name, pgid in groups.items()}
    if errors:
        raise errors[0]
    jobs = len(latencies)
    # CPU milliseconds per job of each side (the web server, the worker, the client threads of this process)
    cpu_ms = {name: round(seconds * 1e3 / jobs, 2) for name, seconds in {**cpu, "clients": clients_cpu}.items()}
    return {"cpu_ms_per_job": cpu_ms, "cpu_busy": round((sum(cpu.values()) + clients_cpu) / wall, 2),
            "clients": k, "n": n, "jobs": jobs, "images": jobs * n, "wall_s": round(wall, 3),
            "images_per_s": round(jobs * n / wall, 2), "poll_ms": None if poll_s is None else round(poll_s * 1e3, 1),
            "p50_ms": round(percentile(latencies, 50) * 1e3, 1), "p95_ms": round(percentile(latencies, 95) * 1e3, 1),
            "p99_ms": round(percentile(latencies, 99) * 1e3, 1)}


# -- the raw model ------------------------------------------------------------------------------------
def untrained_checkpoint(shape: tuple[int, int, int], folder: Path) -> Path:
    """A class-conditional aae-cg of ``shape`` at its default size, freshly initialised (seed 0), saved with
    the class names 0-9 (so label 7 exists): for speed only."""
    from generation.checkpoint import save_checkpoint
    from generation.registry import build_model

    torch.manual_seed(0)
    model = build_model("aae-cg", image_shape=shape, condition="class", num_classes=10)
    return save_checkpoint(model, folder, dataset="untrained (speed only)", class_names=[str(i) for i in range(10)])


class RawModel:
    """The served checkpoint loaded once in this process (CPU, one thread); :meth:`time` gives the median
    wall/CPU time of ``sample_latents`` + ``decode`` at batch n (as ``bench/sampling_speed.py``), over at
    least ``repeats`` calls and at least ``min_seconds`` of calls each."""

    def __init__(self, checkpoint: Path, warmup: int, repeats: int, min_seconds: float = 0.0):
        from generation.base import Condition
        from generation.checkpoint import load_checkpoint

        self.device = torch.device("cpu")
        self.model, info = load_checkpoint(checkpoint, device=self.device)
        self.condition = Condition("class", index=list(info.class_names).index(LABEL))
        self.warmup, self.repeats, self.min_seconds = warmup, repeats, min_seconds

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RawModel:
        return cls(getattr(args, "checkpoint", CHECKPOINT), args.warmup, args.repeats,
                   getattr(args, "raw_min_seconds", 0.0))

    def _median(self, fn: Callable[[], object]) -> Timing:
        probe = time.perf_counter()
        fn()
        one = max(time.perf_counter() - probe, 1e-6)
        repeats = max(self.repeats, min(10_000, math.ceil(self.min_seconds / one)))
        return time_call(fn, self.device, warmup=self.warmup, repeats=repeats)

    def time(self, n: int) -> dict:
        model, condition = self.model, self.condition
        with torch.inference_mode():
            generator = torch.Generator().manual_seed(0)
            latents = model.sample_latents(n, condition, generator)
            t_lat = self._median(lambda: model.sample_latents(n, condition, generator))
            t_dec = self._median(lambda: model.decode(latents, condition))
        wall, cpu = t_lat.wall + t_dec.wall, t_lat.cpu + t_dec.cpu
        return {"n": n, "raw_ms": round(wall * 1e3, 3), "raw_cpu_ms": round(cpu * 1e3, 3),
                "raw_images_per_s": round(n / wall, 1)}


def bracketed_phase(service: Service, args: argparse.Namespace, raw: RawModel, k: int, n: int, seed: int,
                    deadline: Deadline) -> dict:
    """:func:`phase_row`, with the raw model timed at the same n just before and just after it (the servers
    up and idle). Its ratio divides by their mean, so a machine whose speed drifts between the start of the
    run and the phase (these shared cores do, by 10% or more within minutes) moves both sides alike;
    ``raw_drift`` (the raw speed after / before - 1) says how far it moved across the phase itself."""
    service.wait_worker_idle(deadline, quiet=0.3)  # the last phase's trailing messages are done
    before = raw.time(n)
    row = phase_row(service, args, k, n, seed, deadline)
    after = raw.time(n)
    raw_ms = (before["raw_ms"] + after["raw_ms"]) / 2
    row.update(raw_ms=round(raw_ms, 3), raw_images_per_s=round(n / raw_ms * 1e3, 1),
               raw_before_images_per_s=before["raw_images_per_s"], raw_after_images_per_s=after["raw_images_per_s"],
               raw_drift=round(before["raw_ms"] / after["raw_ms"] - 1, 3))
    row["ratio"] = round(row["images_per_s"] / row["raw_images_per_s"], 3)
    return row


# -- main -------------------------------------------------------------------------------------------
def service_env(workdir: Path, db_url: str, broker_url: str, key_prefix: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("PRIORFORGE_") or k in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"))}
    env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                "PRIORFORGE_SQLALCHEMY_DATABASE_URI": db_url, "PRIORFORGE_CELERY_BROKER_URL": broker_url,
                "PRIORFORGE_STORAGE_ROOT": str(workdir / "images"),
                "PRIORFORGE_METRICS_DIR": str(workdir / "metrics"),  # not the checkout's instance/metrics
                "PRIORFORGE_SECRET_KEY_FILE": str(workdir / "secret_key"),
                "PRIORFORGE_DATASET_ROOT": str(workdir / "datasets"), "PRIORFORGE_DEVICE": "cpu",
                "PRIORFORGE_MODEL_CACHE_DIR": str(workdir / "model-cache"),
                "PRIORFORGE_TRAINING_ROOT": str(workdir / "trainings"),  # nothing in the checkout's instance/
                # one client sends every request of a benchmark: the per-client abuse limits (docs/security.md)
                # are off, so the figures measure the service, not the limiter
                "PRIORFORGE_RATELIMIT_ENABLED": "false", "PRIORFORGE_MAX_IMAGES_IN_FLIGHT_PER_CLIENT": "1000000000"})
    if key_prefix:
        env["PRIORFORGE_BROKER_KEY_PREFIX"] = key_prefix
    # the service's temporary files (the doorbell's sockets, the Celery pool's folder, which a SIGKILLed worker
    # leaves behind) go under the run's folder, removed with it; every process of the run shares it
    (workdir / "tmp").mkdir(exist_ok=True)
    env["TMPDIR"] = str(workdir / "tmp")
    return env


@dataclass
class Service:
    """A running web server and (after :meth:`start_worker`) one Celery worker (see :func:`running_service`)."""

    base: str
    env: dict[str, str]
    procs: Processes
    web: subprocess.Popen
    workdir: Path
    worker: subprocess.Popen | None = None
    worker_log: str = ""
    workers_started: int = 0

    @property
    def groups(self) -> dict[str, int]:
        assert self.worker is not None
        return {"web": self.web.pid, "worker": self.worker.pid}  # each started in its own session: pgid = pid

    def start_worker(self, concurrency: int, deadline: Deadline, extra_env: dict[str, str] | None = None
                     ) -> subprocess.Popen:
        """A Celery worker of ``concurrency`` pool processes on the ``generate`` queue; returns once it is ready."""
        assert self.worker is None, "one worker at a time"
        self.workers_started += 1
        name = f"worker-{self.workers_started}"
        self.worker = self.procs.start(name, [
            sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "generate,bulk",
            "--concurrency", str(concurrency), "--loglevel", "INFO", "--without-mingle", "--without-gossip",
            "-n", f"bench-{uuid.uuid4().hex[:8]}@%h"], env={**self.env, **(extra_env or {})})
        self.worker_log = name

        def ready() -> bool:
            self.procs.check_alive()
            return " ready." in self.procs.log(name)

        wait_for(ready, 240, f"the worker ({name}) to start", deadline)
        return self.worker

    def wait_web(self, deadline: Deadline) -> None:
        def ready() -> bool:
            self.procs.check_alive()
            return health_ok(self.base)

        wait_for(ready, 240, "the web server to start", deadline)

    def stop_worker(self) -> None:
        """Stop the worker; call it idle (:meth:`wait_worker_idle`): after 0.5 s of its warm shutdown (which
        takes ~7 s here even when idle) it is killed, which loses nothing when no message is in flight."""
        if self.worker is not None:
            self.procs.stop(self.worker, grace=0.5)
            self.worker = None

    def wait_worker_idle(self, deadline: Deadline, quiet: float = 0.5, timeout: float = 60) -> None:
        """Until the worker's log has not grown for ``quiet`` seconds: the trailing no-op messages of batched
        jobs are done, so they are not counted in the next phase."""
        path = self.workdir / f"{self.worker_log}.log"
        end = time.monotonic() + timeout
        size, since = -1, time.monotonic()
        while time.monotonic() < end:
            deadline.check("waiting for the worker to go idle")
            now_size = path.stat().st_size if path.exists() else 0
            if now_size != size:
                size, since = now_size, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.1)


def prepare_instance(env: dict[str, str], names: list[str], checkpoint: Path = CHECKPOINT) -> None:
    """Migrate the database (as ``priorforge db upgrade``) and register ``checkpoint`` under each name
    (serving, as ``priorforge register-model --serve``), in this process, with the configuration the
    servers get from ``env`` (its ``PRIORFORGE_*`` variables, parsed as the app parses them)."""
    from app import create_app
    from app.core.extensions import db
    from app.core.migrate import upgrade
    from app.services.model_versions import register_model

    config: dict[str, Any] = {}
    for key, value in env.items():
        if key.startswith("PRIORFORGE_"):
            try:
                config[key[len("PRIORFORGE_"):]] = json.loads(value)
            except ValueError:
                config[key[len("PRIORFORGE_"):]] = value
    app = create_app(config)
    upgrade(app)
    with app.app_context():
        for name in names:
            register_model(name, checkpoint, serve=True)
        db.session.remove()
        db.engine.dispose()


@contextmanager
def running_service(args: argparse.Namespace, deadline: Deadline, *, concurrency: int | None = 1,
                    models: list[str] | None = None, extra_env: dict[str, str] | None = None,
                    wait_web: bool = True) -> Iterator[Service]:
    """Start gunicorn (``args.web_workers``) and one Celery worker (``concurrency`` pool processes; None: no
    worker yet, see :meth:`Service.start_worker`) on a fresh instance (SQLite + embedded broker, or a fresh
    PostgreSQL database + a Redis key prefix from ``args``), with the checkpoint registered as ``digits``
    (and as each of ``models``); a started worker is warmed up by one job. ``wait_web=False`` (no worker):
    returns without waiting for the web server (call :meth:`Service.wait_web`). Everything is stopped and
    removed on the way out."""
    workdir = Path(tempfile.mkdtemp(prefix="pf-bench-service-"))
    pg: tuple[str, str] | None = None
    key_prefix = None
    procs: Processes | None = None
    db_url = broker_url = None
    try:
        db_url, pg = instance_database(args.database_url, workdir)
        if args.redis_url:
            broker_url, key_prefix = args.redis_url, f"pfbench-{uuid.uuid4().hex[:10]}:"
        else:
            broker_url = f"sqla+sqlite:///{workdir / 'broker.sqlite3'}"
        env = service_env(workdir, db_url, broker_url, key_prefix)
        env.update(extra_env or {})
        prepare_instance(env, [MODEL, *(models or [])], getattr(args, "checkpoint", CHECKPOINT))

        procs = Processes(workdir, env)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        web = procs.start("web", [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
                                  "--workers", str(args.web_workers), "--worker-class", "gthread",
                                  "--threads", str(args.web_threads), "app.wsgi:app"])
        service = Service(base, env, procs, web, workdir)
        if concurrency is not None:
            service.start_worker(concurrency, deadline)  # both start at once
        if wait_web or concurrency is not None:
            service.wait_web(deadline)
        if concurrency is not None:
            run_job(base, 1, 0, None, deadline)  # warm-up: the worker loads the model
        yield service
    finally:
        if procs is not None:
            procs.stop_all()
        for url in (db_url, broker_url and broker_url.split("+", 1)[-1]):  # sockets of a killed process
            if url:
                sweep(url)
        try:
            if key_prefix and args.redis_url:
                delete_redis_keys(args.redis_url, key_prefix)
        finally:
            if pg is not None:
                drop_pg_database(*pg)
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)


def phase_row(service: Service, args: argparse.Namespace, k: int, n: int, seed: int, deadline: Deadline) -> dict:
    """One phase (K clients, n images a job) against a running service; when the clients poll, also the
    closed-loop bound: each client has one job in flight and sees it done at a poll, so img/s <= K * n / poll
    interval."""
    jobs = max(args.jobs_per_client * k, args.min_jobs)
    poll_s = max(args.poll_ms, k * 1000.0 / args.max_poll_rate) / 1e3 if args.client_mode == "poll" else None
    post_first = args.client_mode == "post-wait"
    phase_warmup = getattr(args, "phase_warmup", 0)
    warmup = max(k, phase_warmup) if phase_warmup else 0  # 0: none (a cold phase, as before the fourth round)
    if warmup:  # untimed: threads, pooled connections and sockets opened at this K (seeds after the timed ones)
        run_phase(service.base, k, n, warmup, poll_s, seed + 10**6, deadline, post_first=post_first)
    parent = service.groups["worker"]
    parent0 = group_cpu_seconds(parent, only_pid=parent)
    servers0 = servers_cpu_seconds()
    row = run_phase(service.base, k, n, jobs, poll_s, seed, deadline, service.groups,
                    min_seconds=getattr(args, "min_seconds", 0.0), post_first=post_first)
    row["warmup_jobs"] = warmup
    # the worker's main process (broker I/O, handing messages to the pool), apart from its pool processes
    row["cpu_ms_per_job"]["worker_main"] = round((group_cpu_seconds(parent, only_pid=parent) - parent0) * 1e3
                                                 / row["jobs"], 2)
    if args.database_url and args.redis_url:  # the servers' share of a job (not the service's own CPU)
        servers = {comm: seconds - servers0[comm] for comm, seconds in servers_cpu_seconds().items()}
        row["cpu_ms_per_job"]["postgresql_redis"] = round(sum(servers.values()) * 1e3 / row["jobs"], 2)
        row["cpu_ms_per_job"]["postgresql"] = round(servers["postgres"] * 1e3 / row["jobs"], 2)
        row["cpu_ms_per_job"]["redis"] = round(servers["redis-server"] * 1e3 / row["jobs"], 2)
    row["client_bound_images_per_s"] = round(k * n / poll_s, 1) if poll_s else None
    service.procs.check_alive()
    return row


@contextmanager
def profiled(service: Service, folder: str | None) -> Iterator[None]:
    """py-spy recording every process of the web server's and the worker's groups while the block runs: a
    flame graph per group (``--idle`` off: CPU samples only, so a thread waiting on a socket costs nothing)."""
    if not folder:
        yield
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    raw = os.environ.get("PF_PROFILE_FORMAT") == "raw"  # collapsed stacks (.txt) to read with a script
    recorders = [subprocess.Popen([spy, "record", "--pid", str(pid), "--subprocesses", "--rate", "250",
                                   "--format", "raw" if raw else "flamegraph",
                                   "--output", str(out / f"{name}.{'txt' if raw else 'svg'}"), "--nonblocking"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for name, pid in service.groups.items()]
    try:
        yield
    finally:
        for recorder in recorders:  # SIGINT: py-spy writes its file and exits
            recorder.send_signal(signal.SIGINT)
        for recorder in recorders:
            try:
                recorder.wait(60)
            except subprocess.TimeoutExpired:
                recorder.kill()


def stage_env(args: argparse.Namespace) -> dict[str, str]:
    """The servers' extra environment: --set values, and PRIORFORGE_LOG_STAGE_TIMES with --log-stage-times."""
    env = {}
    for item in getattr(args, "set", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        env[f"PRIORFORGE_{key.removeprefix('PRIORFORGE_')}"] = value
    if getattr(args, "log_stage_times", False):
        env["PRIORFORGE_LOG_STAGE_TIMES"] = "1"
    return env


def cpu_cell(row: dict) -> str:
    cpu = row["cpu_ms_per_job"]
    cell = " / ".join(f"{cpu[k]:.3g}" for k in ("web", "worker", "clients"))
    cell += f" (worker main process: {cpu['worker_main']:.3g})" if "worker_main" in cpu else ""
    return cell + (f"; PostgreSQL + Redis {cpu['postgresql']:.3g} + {cpu['redis']:.3g}" if "postgresql" in cpu else "")


def install_signal_handlers() -> dict:
    def on_signal(signum, frame):  # noqa: ARG001 - turn SIGTERM into an exception so `finally` runs
        raise SystemExit(f"stopped by signal {signum}")

    return {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)} \
        if threading.current_thread() is threading.main_thread() else {}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = Deadline(args.timeout)
    clients, images = args.clients, args.images
    torch.set_num_threads(1)
    machine = machine_info(torch.device("cpu"))
    started = time.perf_counter()
    previous = install_signal_handlers()
    model_dir = None
    try:
        args.checkpoint = CHECKPOINT
        if args.untrained_shape:
            model_dir = Path(tempfile.mkdtemp(prefix="pf-bench-model-"))
            args.checkpoint = untrained_checkpoint(args.untrained_shape, model_dir)
        raw_model = RawModel.from_args(args)
        raw = {n: raw_model.time(n) for n in sorted({1, *images})}  # before the servers start
        rows = []
        with running_service(args, deadline, concurrency=args.concurrency, extra_env=stage_env(args)) as service, \
                profiled(service, args.profile):
            seed = 1000
            for n in images:
                for k in clients:
                    row = bracketed_phase(service, args, raw_model, k, n, seed, deadline)
                    seed += row["jobs"] * n
                    rows.append(row)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if model_dir is not None:
            shutil.rmtree(model_dir, ignore_errors=True)

    single = next((r for r in rows if r["clients"] == 1 and r["n"] == 1), None)
    added = round(single["p50_ms"] - single["raw_ms"], 1) if single else None  # the raw time around that phase
    at_max_k = {r["n"]: r["ratio"] for r in rows if r["clients"] == max(clients)}
    headers = ["n", "K", "jobs", "img/s (service)", "img/s (raw)", "raw drift", "service/raw", "p50 ms", "p95 ms",
               "p99 ms",
               "poll ms", "client bound img/s", "CPU ms/job web / worker / clients", "cores busy"]
    if args.client_mode in ("wait", "post-wait"):  # no polling, no bound from it
        headers = [h for h in headers if h not in ("poll ms", "client bound img/s")]
    table = markdown_table(headers, [[r["n"], r["clients"], r["jobs"], r["images_per_s"], r["raw_images_per_s"],
                                      r["raw_drift"], r["ratio"], r["p50_ms"], r["p95_ms"], r["p99_ms"],
                                      *([r["poll_ms"], r["client_bound_images_per_s"]] if r["poll_ms"] else []),
                                      cpu_cell(r), r["cpu_busy"]] for r in rows])
    table += (f"\n\nraw single image: {raw[1]['raw_ms']} ms before the servers started; added p50 latency of a "
              f"1-image job at K=1: {added} ms (goal < 50); service/raw at K={max(clients)}: "
              + ", ".join(f"n={n}: {v}" for n, v in at_max_k.items()) + " (goal >= 0.8)")
    payload = {"benchmark": "service_throughput", "machine": machine, "rows": rows,
               "raw": [raw[n] for n in sorted(raw)], "added_latency_p50_ms": added,
               "ratio_at_max_clients": {str(n): v for n, v in at_max_k.items()},
               "goals": {"ratio_at_32_clients_min": 0.8, "added_latency_p50_ms_max": 50},
               "settings": {"backend": "postgresql+redis" if args.database_url else "sqlite+embedded",
                            "clients": clients, "images": images, "web_workers": args.web_workers,
                            "web_threads": args.web_threads, "client_mode": args.client_mode,
                            "model": "x".join(map(str, args.untrained_shape)) + " aae-cg, untrained"
                                     if args.untrained_shape else "tests/fixtures/digits-aae-cg",
                            "concurrency": args.concurrency, "set": args.set,
                            "poll_ms": args.poll_ms, "max_poll_rate": args.max_poll_rate,
                            "warmup": args.warmup, "repeats": args.repeats,
                            "raw_min_seconds": args.raw_min_seconds, "quick": args.quick,
                            "min_seconds": args.min_seconds, "phase_warmup": args.phase_warmup,
                            "command": " ".join(["service_throughput.py",
                                                 *(argv if argv is not None else sys.argv[1:])])},
               "wall_seconds": round(time.perf_counter() - started, 1)}
    emit(table, payload, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
