"""Fault injection: jobs under load while workers are SIGKILLed, the broker is killed and restarted
and the web server is reloaded; nothing may be lost, duplicated, failed or changed, and service must come back
within seconds.

Starts a fresh instance as bench/service_throughput.py does (gunicorn with the repository's gunicorn.conf.py,
2 processes; ``--workers`` Celery workers of 1 pool process each, kept running by a supervisor thread as
systemd's ``Restart=always`` would), registers ``tests/fixtures/digits-aae-cg``, then ``--clients`` client
threads submit ``--jobs`` jobs (``POST /api/v1/jobs?wait=20`` with an ``Idempotency-Key``, then ``GET
?wait=20`` until the job ended; any refused, reset or 5xx request counts as a client-visible error and is
retried with the same key). Meanwhile, one fault every ``--fault-gap`` seconds, in turn:

* ``kill-child`` / ``kill-main``: SIGKILL of the pool process running a job, or of its worker's main process;
  recovery = from the kill until every job that process was running has succeeded;
* ``kill-broker`` (PostgreSQL + Redis only: a redis-server of its own, without persistence): kill -9, restart
  after ``--broker-down`` seconds; recovery = from the restart until every job not ended at that moment has
  succeeded (the embedded broker is a file of the instance: it has no process to kill);
* ``reload-web``: SIGHUP to gunicorn's master (its graceful reload); client-visible errors in the reload's
  window are counted.

Afterwards the same jobs run again with no fault (a clean re-run, new keys) and every image's pixels are
compared with the faulty run's. Reports lost (a job a client submitted that did not succeed), duplicated (two
rows for one request), failed, pixel differences, recovery p50/p95/max per fault kind, client-visible errors.

    python bench/recovery.py                                       # SQLite + the embedded broker
    python bench/recovery.py --database-url postgresql://postgres@127.0.0.1:5432/test   # + its own Redis
    python bench/recovery.py --quick                               # a small form (CI): 40 jobs, 4 faults
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.core.fastpath.doorbell import sweep  # noqa: E402
from bench.common import emit, markdown_table  # noqa: E402
from bench.service_throughput import (MODEL, Deadline, Processes, drop_pg_database, free_port, health_ok,  # noqa: E402
                                      instance_database, prepare_instance, service_env, wait_for)

WAIT = 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--database-url", default=None,
                   help="PostgreSQL server (a fresh database is made there): then Redis is a redis-server of the "
                        "benchmark's own, killed and restarted; default: SQLite + the embedded broker")
    p.add_argument("--jobs", type=int, default=240, help="at least this many jobs; more while faults remain")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--workers", type=int, default=2, help="Celery workers (1 pool process each)")
    p.add_argument("--worker-kills", type=int, default=10, help="alternately the pool process and the main one")
    p.add_argument("--broker-kills", type=int, default=3)
    p.add_argument("--web-reloads", type=int, default=2)
    p.add_argument("--fault-gap", type=float, default=6.0, help="seconds between faults")
    p.add_argument("--broker-down", type=float, default=1.0, help="seconds the broker stays down")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="PRIORFORGE_KEY=VALUE, for experiments")
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--json-out", default=None)
    p.add_argument("--quick", action="store_true", help="40 jobs; 2 worker kills, 1 broker kill, 1 reload")
    args = p.parse_args(argv)
    if args.quick:
        args.jobs, args.clients, args.worker_kills, args.broker_kills, args.web_reloads = 40, 4, 2, 1, 1
        args.fault_gap = 3.0
    return args


# -- clients -------------------------------------------------------------------------------------------
class Clients:
    """Client threads: each takes the next spec, creates its job (retrying with the same Idempotency-Key) and
    waits for its end. Records every client-visible error with its time."""

    def __init__(self, base: str, specs: list[dict], clients: int, deadline: Deadline,
                 more: threading.Event | None = None):
        """``more``: while it is set, the clients go on past ``specs`` (new specs are appended)."""
        self.base, self.specs, self.deadline, self.more = base, specs, deadline, more
        self.next = 0
        self.lock = threading.Lock()
        self.errors: list[tuple[float, str]] = []
        self.results: dict[int, dict] = {}  # spec index -> the job as last read
        self.posts_per_spec: dict[int, set[str]] = {}
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        for t in self.threads:
            t.join()

    @property
    def done(self) -> int:
        return len(self.results)

    def _request(self, method: str, path: str, body: dict | None = None, key: str | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        if key:
            headers["Idempotency-Key"] = key
        while True:
            self.deadline.check(f"{method} {path}")
            try:
                req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
                with urllib.request.urlopen(req, timeout=WAIT + 30) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    raise RuntimeError(f"{method} {path} -> {exc.code} {exc.read()[:300]!r}") from None
                what = f"{exc.code}"
            except (OSError, ValueError) as exc:  # refused, reset, timed out, a cut answer
                what = type(exc).__name__
            with self.lock:
                self.errors.append((time.monotonic(), f"{method} {path.split('?')[0][:20]}: {what}"))
            time.sleep(0.2)

    def _run(self) -> None:
        while True:
            with self.lock:
                i = self.next
                if i >= len(self.specs):
                    if self.more is None or not self.more.is_set():
                        return
                    self.specs.extend(make_specs(1, 1000, start=len(self.specs)))
                self.next += 1
            key = str(uuid.uuid4())
            job = self._request("POST", f"/api/v1/jobs?wait={WAIT}", self.specs[i], key=key)
            while job["status"] in ("queued", "running"):
                job = self._request("GET", f"{job['url']}?wait={WAIT}")
            with self.lock:
                self.results[i] = job


def make_specs(count: int, seed0: int, start: int = 0) -> list[dict]:
    return [{"model": MODEL, "label": str(i % 10), "n": 1 + i % 4, "seed": seed0 + 100 * i}
            for i in range(start, start + count)]


# -- the instance --------------------------------------------------------------------------------------
class RedisServer:
    def __init__(self, workdir: Path):
        self.port, self.workdir, self.proc = free_port(), workdir, None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        import socket

        def up() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        end = time.monotonic() + 30
        while not up():
            if time.monotonic() > end:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Workers:
    """``count`` Celery workers, each restarted by a supervisor thread when its main process dies."""

    def __init__(self, procs: Processes, count: int, env: dict[str, str]):
        self.procs, self.env = procs, env
        self.mains: list[subprocess.Popen] = []
        self.groups: list[int] = []
        self.started = 0
        self.stop = threading.Event()
        for _ in range(count):
            self.mains.append(self._start())
        self.thread = threading.Thread(target=self._supervise, daemon=True)

    def _start(self) -> subprocess.Popen:
        self.started += 1
        proc = self.procs.start(f"worker-{self.started}", [
            sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "generate", "--concurrency",
            "1", "--loglevel", "INFO", "--without-mingle", "--without-gossip", "-n", f"w{self.started}@%h"],
            env=self.env)
        self.groups.append(proc.pid)
        return proc

    def _supervise(self) -> None:
        while not self.stop.wait(0.2):
            for i, proc in enumerate(self.mains):
                if proc.poll() is not None:
                    self.mains[i] = self._start()

    def kill_groups(self) -> None:
        for pgid in self.groups:  # also the pool processes of main processes killed alone
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


class Db:
    """Read-only queries of the instance's database."""

    def __init__(self, url: str):
        from sqlalchemy import create_engine

        self.engine = create_engine(url)

    def rows(self, sql: str, **params: Any) -> list:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).all()

    def running(self) -> list:
        return self.rows("SELECT id, worker FROM jobs WHERE status = 'running'")

    def unfinished(self) -> set[str]:
        return {r[0] for r in self.rows("SELECT id FROM jobs WHERE status IN ('queued', 'running')")}

    def all_succeeded(self, ids: set[str]) -> bool:
        if not ids:
            return True
        from sqlalchemy import bindparam, text

        with self.engine.connect() as conn:
            done = conn.execute(text("SELECT count(*) FROM jobs WHERE id IN :ids AND status IN "
                                     "('succeeded', 'failed', 'canceled')").bindparams(
                bindparam("ids", expanding=True)), {"ids": list(ids)}).scalar()
        return done == len(ids)


def recovery_seconds(db: Db, ids: set[str], since: float, deadline: Deadline, worker: str | None = None
                     ) -> tuple[float, float | None]:
    """(seconds from ``since`` until every job of ``ids`` has ended, seconds until none of them was still
    ``running`` in ``worker``: the death noticed, or the jobs finished by an orphaned pool process)."""
    released = None
    while True:
        if worker is not None and released is None and not any(
                r[1] == worker and r[0] in ids for r in db.running()):
            released = time.monotonic() - since
        if db.all_succeeded(ids):
            break
        deadline.check("waiting for the jobs of a fault")
        time.sleep(0.05)
    return time.monotonic() - since, released


# -- faults --------------------------------------------------------------------------------------------
def inject(kind: str, db: Db, web: subprocess.Popen, redis: RedisServer | None, args: argparse.Namespace,
           deadline: Deadline) -> dict:
    if kind in ("kill-child", "kill-main"):
        end = time.monotonic() + 30
        while True:  # a process that is running a job
            deadline.check("waiting for a running job")
            running = db.running()
            if running:
                break
            if time.monotonic() > end:
                return {"kind": kind, "skipped": "no job was running"}
            time.sleep(0.02)
        worker = running[0][1]
        child = int(worker.rpartition(":")[2])
        ids = {r[0] for r in running if r[1] == worker}
        target = child if kind == "kill-child" else parent_pid(child)
        t0 = time.monotonic()
        if target is None or target <= 1:
            return {"kind": kind, "skipped": "its process was gone"}
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:  # it had just finished
            pass
        total, released = recovery_seconds(db, ids, t0, deadline, worker)
        return {"kind": kind, "jobs": len(ids), "recovery_s": round(total, 3),
                "released_s": None if released is None else round(released, 3)}
    if kind == "kill-broker":
        assert redis is not None
        redis.kill()
        time.sleep(args.broker_down)
        redis.start()
        t0 = time.monotonic()
        ids = db.unfinished()
        return {"kind": kind, "jobs": len(ids), "recovery_s": round(recovery_seconds(db, ids, t0, deadline)[0], 3)}
    if kind == "reload-web":
        t0 = time.monotonic()
        os.kill(web.pid, signal.SIGHUP)
        return {"kind": kind, "at": t0}
    raise ValueError(kind)


def schedule(args: argparse.Namespace, broker: bool) -> list[str]:
    kills = ["kill-child" if i % 2 == 0 else "kill-main" for i in range(args.worker_kills)]
    others = (["kill-broker"] * args.broker_kills if broker else []) + ["reload-web"] * args.web_reloads
    out: list[str] = []
    step = max(1, len(kills) // max(1, len(others)))  # spread the others among the kills
    while kills or others:
        out += kills[:step]
        kills = kills[step:]
        if others:
            out.append(others.pop(0))
    return out


# -- pixels --------------------------------------------------------------------------------------------
def pixels(storage: Path, job_id: str, n: int) -> list[bytes]:
    from PIL import Image

    out = []
    for i in range(n):
        with Image.open(io.BytesIO((storage / "jobs" / job_id / f"{i:03d}.png").read_bytes())) as im:
            out.append(im.tobytes())
    return out


def summarise(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    xs = sorted(values)
    p95 = xs[min(len(xs) - 1, max(0, int(round(0.95 * (len(xs) - 1)))))]
    return {"count": len(xs), "p50_s": round(statistics.median(xs), 3), "p95_s": round(p95, 3),
            "max_s": round(xs[-1], 3)}


# -- main ----------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    deadline = Deadline(args.timeout)
    workdir = Path(tempfile.mkdtemp(prefix="pf-bench-recovery-"))
    pg = None
    procs: Processes | None = None
    workers: Workers | None = None
    redis: RedisServer | None = None
    db_url = broker_url = None
    try:
        db_url, pg = instance_database(args.database_url, workdir)
        if args.database_url:
            redis = RedisServer(workdir)
            redis.start()
            broker_url = redis.url
        else:
            broker_url = f"sqla+sqlite:///{workdir / 'broker.sqlite3'}"
        env = service_env(workdir, db_url, broker_url, None)
        for item in args.set:
            key, _, value = item.partition("=")
            env[f"PRIORFORGE_{key.removeprefix('PRIORFORGE_')}"] = value
        prepare_instance(env, [MODEL])
        procs = Processes(workdir, env)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        t_web = time.monotonic()
        web = procs.start("web", [sys.executable, "-m", "gunicorn", "--config", str(REPO / "gunicorn.conf.py"),
                                  "--bind", f"127.0.0.1:{port}", "--workers", "2", "--worker-class", "gthread",
                                  "--threads", "32", "app.wsgi:app"])
        wait_for(lambda: health_ok(base), 120, "the web server", deadline)
        web_start_s = time.monotonic() - t_web
        workers = Workers(procs, args.workers, env)
        wait_for(lambda: all(" ready." in procs.log(f"worker-{i + 1}") for i in range(args.workers)), 240,
                 "the workers", deadline)
        workers.thread.start()
        db = Db(db_url)

        specs = make_specs(args.jobs, 1000)
        more = threading.Event()
        more.set()  # the load goes on until the last fault has been injected and recovered from
        clients = Clients(base, specs, args.clients, deadline, more)
        t_start = time.monotonic()
        clients.start()
        faults: list[dict] = []
        reloads: list[float] = []
        for kind in schedule(args, redis is not None):
            time.sleep(args.fault_gap)
            fault = inject(kind, db, web, redis, args, deadline)
            faults.append(fault)
            if kind == "reload-web":
                reloads.append(fault.pop("at"))
            print(f"fault: {fault}", file=sys.stderr, flush=True)
        time.sleep(args.fault_gap)  # the last reload's window
        more.clear()
        clients.join()
        load_s = time.monotonic() - t_start
        faulty = dict(clients.results)
        errors = list(clients.errors)

        # the clean re-run: the same requests, no fault
        specs = clients.specs[:clients.next]
        clean_clients = Clients(base, specs, args.clients, deadline)
        clean_clients.start()
        clean_clients.join()
        clean = clean_clients.results

        storage = workdir / "images"
        failed = sum(1 for job in faulty.values() if job["status"] != "succeeded")
        lost = len(specs) - sum(1 for job in faulty.values() if job["status"] == "succeeded")
        dup_rows = db.rows("SELECT seed, count(*) FROM jobs GROUP BY seed HAVING count(*) > 2")
        image_rows = {r[0]: r[1] for r in db.rows("SELECT job_id, count(*) FROM images GROUP BY job_id")}
        wrong_images = sum(1 for job in faulty.values() if image_rows.get(job["id"], 0) != job["n"])
        differ = 0
        for i, job in faulty.items():
            if job["status"] == "succeeded" and clean.get(i, {}).get("status") == "succeeded":
                differ += sum(a != b for a, b in zip(pixels(storage, job["id"], job["n"]),
                                                     pixels(storage, clean[i]["id"], job["n"])))
        attempts = db.rows("SELECT attempts, deaths FROM jobs")
        reload_errors = [e for e in errors if any(t - 0.5 <= e[0] <= t + args.fault_gap for t in reloads)]
        by_kind: dict[str, list[float]] = {}
        for fault in faults:
            if "recovery_s" in fault:
                by_kind.setdefault(fault["kind"], []).append(fault["recovery_s"])
        worker_recoveries = by_kind.get("kill-child", []) + by_kind.get("kill-main", [])
        return {
            "backend": "postgresql+redis" if args.database_url else "sqlite+embedded",
            "jobs": len(specs), "images": sum(s["n"] for s in specs), "load_seconds": round(load_s, 1),
            "web_start_seconds": round(web_start_s, 2),
            "lost": lost, "failed": failed, "duplicated": len(dup_rows), "wrong_image_rows": wrong_images,
            "pixel_differences": differ, "client_errors": len(errors), "client_errors_in_reloads": len(reload_errors),
            "error_samples": [e[1] for e in errors[:10]],
            "max_attempts": max((a for a, _ in attempts), default=0), "charged_deaths": sum(d for _, d in attempts),
            "recovery": {kind: summarise(values) for kind, values in by_kind.items()},
            "recovery_worker": summarise(worker_recoveries),
            "faults": faults,
            "worker_restarts": workers.started - args.workers,
        }
    finally:
        if workers is not None:
            workers.stop.set()
            workers.kill_groups()
        if procs is not None:
            procs.stop_all()
        if redis is not None:
            redis.kill()
        for url in (db_url, broker_url and broker_url.split("+", 1)[-1]):
            if url:
                sweep(url)
        if pg is not None:
            drop_pg_database(*pg)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    result = run(args)
    rows = [[kind, r["count"], r.get("p50_s"), r.get("p95_s"), r.get("max_s")]
            for kind, r in {**result["recovery"], "worker (all kills)": result["recovery_worker"]}.items()]
    table = markdown_table(["fault", "count", "recovery p50 s", "p95 s", "max s"], rows)
    table += (f"\n\n{result['backend']}: {result['jobs']} jobs ({result['images']} images) in "
              f"{result['load_seconds']} s; lost {result['lost']}, duplicated {result['duplicated']}, failed "
              f"{result['failed']}, wrong image rows {result['wrong_image_rows']}, pixel differences "
              f"{result['pixel_differences']}; client-visible errors {result['client_errors']} "
              f"({result['client_errors_in_reloads']} around web reloads); worker restarts "
              f"{result['worker_restarts']}; web start {result['web_start_seconds']} s")
    payload = {"benchmark": "recovery", **result,
               "settings": {"quick": args.quick, "clients": args.clients, "workers": args.workers,
                            "fault_gap": args.fault_gap, "broker_down": args.broker_down, "set": args.set,
                            "command": " ".join(["recovery.py", *(argv if argv is not None else sys.argv[1:])])},
               "wall_seconds": round(time.perf_counter() - started, 1)}
    emit(table, payload, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
