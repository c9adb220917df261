"""Fixtures of the service tests.

* ``app`` / ``client`` / ``runner``: the Flask app on a fresh SQLite file, migrated with Alembic, with an
  embedded broker (kombu's SQLAlchemy transport on its own SQLite file, so the messages a request sends can
  be counted) and tiny random-weight checkpoints registered as models.
* ``pg_url``, ``redis_url``: a fresh PostgreSQL database and a Redis key prefix per test (integration
  tests; skipped with a reason when the servers are not reachable).
* :class:`WorkerProcess`: a real ``celery -A workers.celery_app worker`` subprocess.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.conftest import ISOLATION_KEYS
from tests.support.faults import InjectedFaults

REPO = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = os.environ.get("PRIORFORGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("PRIORFORGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CLASS_NAMES = [str(i) for i in range(10)]


# -- checkpoints ------------------------------------------------------------------------------------
def make_checkpoint(folder: Path, condition: str) -> Path:
    from generation.checkpoint import save_checkpoint
    from generation.registry import build_model

    import torch

    torch.manual_seed(0)
    model = build_model("aae-cg", condition=condition, base_channels=4, hidden_dim=16, disc_hidden=8,
                        code_disc_hidden=[8], num_classes=10)
    return save_checkpoint(model, folder, dataset="digits", class_names=CLASS_NAMES if condition == "class" else [])


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    out = {cond: make_checkpoint(root / f"tiny-{cond}", cond) for cond in ("class", "cluster", "text", "none")}
    broken = root / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((out["class"] / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"this is not a safetensors file" * 10)
    out["broken"] = broken
    return out


def register_test_models(checkpoints: dict[str, Path]) -> None:
    from app.services.model_versions import register_model

    register_model("tiny", checkpoints["class"])
    register_model("clusters", checkpoints["cluster"])
    register_model("captions", checkpoints["text"])
    register_model("uncond", checkpoints["none"])
    register_model("broken", checkpoints["broken"])


# -- the app on SQLite ------------------------------------------------------------------------------
def base_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    config = {
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'app.sqlite3'}",
        "CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}",
        "STORAGE_ROOT": str(tmp_path / "images"),
        # a module-scoped app (the fuzz tests') is built before any test's isolated_cache, and the fuzzer uploads
        # data sets: every folder the app writes is named here
        "SECRET_KEY_FILE": str(tmp_path / "secret_key"),
        "DATASET_ROOT": str(tmp_path / "datasets"),
        "TRAINING_ROOT": str(tmp_path / "trainings"),
        "DEFAULT_MODEL": "tiny",
    }
    config.update(overrides)
    return config


# worker timings short enough for tests: heartbeats, leases and reconciliation in seconds
FAST_WORKER = {"HEARTBEAT_INTERVAL": 0.5, "LEASE_TIMEOUT": 4, "RECONCILE_INTERVAL": 1, "QUEUED_STALE_AFTER": 5}


def sqlite_app_for_worker(tmp_path: Path, checkpoints: dict[str, Path]):
    """(migrated app with the test models registered, its config for ``start_worker``) on SQLite and the
    embedded broker: the default set-up with no servers at all."""
    from app import create_app
    from app.core.migrate import upgrade

    config = base_config(tmp_path, **FAST_WORKER)
    config.pop("TESTING")  # the worker process runs without it
    app = create_app({"TESTING": True, **config})
    upgrade(app)
    with app.app_context():
        register_test_models(checkpoints)
    return app, config


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    """The app must read only what a test gives it; Prometheus counters (app/core/metrics.py) go to the test's
    own folder (this process's apps and the worker processes it starts), never to instance/."""
    isolation = set(ISOLATION_KEYS)  # tests/conftest.py
    for key in list(os.environ):
        if key.startswith("PRIORFORGE_") and not key.startswith("PRIORFORGE_TEST_") and key not in isolation:
            monkeypatch.delenv(key)
    for key in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))


@pytest.fixture
def app(tmp_path, checkpoints):
    from app import create_app
    from app.core.migrate import upgrade

    app = create_app(base_config(tmp_path))
    upgrade(app)
    with app.app_context():
        register_test_models(checkpoints)
    yield app
    with app.app_context():
        from app.core.extensions import db
        from app.services.outbox import sweeper_for

        sweeper_for(app).flush()
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def broker_messages(app) -> int:
    """Messages waiting in the embedded (SQLAlchemy/SQLite) broker."""
    path = app.config["CELERY_BROKER_URL"].removeprefix("sqla+sqlite:///")
    if not Path(path).exists():
        return 0
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "kombu_message" not in tables:
            return 0
        return conn.execute("SELECT COUNT(*) FROM kombu_message WHERE visible = 1").fetchone()[0]


def broker_payloads(app) -> list[dict]:
    """The messages waiting in the embedded broker, decoded (kombu's JSON envelope)."""
    import json

    path = app.config["CELERY_BROKER_URL"].removeprefix("sqla+sqlite:///")
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT payload FROM kombu_message WHERE visible = 1 ORDER BY id").fetchall()
    return [json.loads(row[0]) for row in rows]


def row_counts(app) -> dict[str, int]:
    from sqlalchemy import func, select

    from app.core.extensions import db
    from app.core.tables import Batch, Image, Job

    with app.app_context():
        return {model.__tablename__: db.session.scalar(select(func.count()).select_from(model))
                for model in (Job, Batch, Image)}


# -- real servers -----------------------------------------------------------------------------------
def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database for this test, dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(PG_ADMIN_URL)
    if not _port_open(admin.host or "127.0.0.1", admin.port or 5432):
        pytest.skip(f"PostgreSQL not reachable at {admin.host}:{admin.port} (set PRIORFORGE_TEST_POSTGRES_URL)")
    name = f"pf_test_{uuid.uuid4().hex[:12]}"
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield admin.set(database=name).render_as_string(hide_password=False)
    # a connection this test left open and unreachable warns when it is collected: collect now, so that the
    # warning names this test rather than whichever later test the collector happens to run in
    gc.collect()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url():
    """The shared Redis with a key prefix of this test's own; its keys are deleted afterwards."""
    import redis
    from sqlalchemy.engine import make_url

    url = make_url(REDIS_URL)
    if not _port_open(url.host or "127.0.0.1", url.port or 6379):
        pytest.skip(f"Redis not reachable at {REDIS_URL} (set PRIORFORGE_TEST_REDIS_URL)")
    prefix = f"pftest-{uuid.uuid4().hex[:10]}:"
    yield REDIS_URL, prefix
    client = redis.Redis.from_url(REDIS_URL)
    # the broker's keys, and the rate limiter's (the limits library puts its own prefix before ours)
    keys = [key for pattern in (f"{prefix}*", f"LIMITS:LIMITER/{prefix}*")
            for key in client.scan_iter(match=pattern, count=500)]
    if keys:
        client.delete(*keys)
    client.close()


class RedisServer:
    """A redis-server of the test's own (no persistence) on a free port, to restart at will."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import shutil

        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not on PATH (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _port_open("127.0.0.1", self.port), 30, "redis-server to listen")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        wait_for(lambda: not _port_open("127.0.0.1", self.port), 30, "redis-server to stop")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll ``predicate`` until it is truthy; the timeout only guards against hanging forever."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout} s")
        time.sleep(interval)


class WorkerProcess:
    """``celery -A workers.celery_app worker`` in its own process group, configured through PRIORFORGE_*."""

    def __init__(self, config: dict[str, Any], log_path: Path, queues: str = "generate,bulk,train",
                 faults: InjectedFaults | None = None):
        self.config = config
        self.log_path = log_path
        self.queues = queues
        self.faults = faults  # injected by tests/support/fault_worker.py (no setting can turn one on)
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        import json

        from tests.conftest import subprocess_env

        env = subprocess_env()  # the config below wins over the isolation folders it keeps
        env["OMP_NUM_THREADS"] = "1"
        env["PYTHONPATH"] = str(REPO)
        for key, value in self.config.items():
            env[f"PRIORFORGE_{key}"] = value if isinstance(value, str) else json.dumps(value)
        if self.faults is not None:
            env.update(self.faults.to_env())
        env["PF_TEST_WORKER_TMP"] = str(self.log_path.with_name(self.log_path.stem + "-tmp"))
        return env

    def start(self, timeout: float = 240, wait: bool = True) -> "WorkerProcess":
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fault_worker",  # the celery command, with PF_TEST_WORKER_TMP
             "-A", "workers.celery_app", "worker", "-Q", self.queues,
             "--concurrency", "1", "--loglevel", "INFO", "--without-mingle", "--without-gossip",
             "-n", f"test-{uuid.uuid4().hex[:8]}@%h"],
            cwd=REPO, env=self.env(), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 240) -> "WorkerProcess":
        wait_for(lambda: self._ready(), timeout, f"the worker to start (log: {self.log_path})", interval=0.5)
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
        return " ready." in self.log_text()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children): nothing gets to clean up."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(30)

    def stop(self) -> None:
        if self.alive:
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "log", None):
            self.log.close()


@pytest.fixture
def start_worker(tmp_path):
    workers: list[WorkerProcess] = []

    def start(config: dict[str, Any], name: str = "worker", queues: str = "generate,bulk,train",
              wait: bool = True, faults: InjectedFaults | None = None) -> WorkerProcess:
        worker = WorkerProcess(config, tmp_path / f"{name}-{len(workers)}.log", queues, faults)
        workers.append(worker)
        return worker.start(wait=wait)

    yield start
    for worker in workers:  # all are asked to stop at once, then awaited: their shutdowns overlap
        if worker.alive:
            assert worker.proc is not None
            os.killpg(worker.proc.pid, signal.SIGTERM)
    for worker in workers:
        if worker.proc is not None:
            try:
                worker.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        worker.stop()  # a worker still running is killed here; the log is closed
    from app.core.fastpath.doorbell import sweep

    for worker in workers:  # the sockets of a killed worker (its broker folder) are not left in /tmp
        for key in ("SQLALCHEMY_DATABASE_URI", "CELERY_BROKER_URL"):
            url = str(worker.config.get(key) or "")
            sweep(url.split("+", 1)[1] if url.startswith("sqla+") else url)
