"""Reliability with real worker processes (``celery -A workers.celery_app worker``) against PostgreSQL and
Redis: reproducibility through the API, a failing model, duplicate deliveries, SIGKILL mid-job, a broker
restart, the soft time limit. Timeouts here only guard against hanging; no test asserts a duration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from app.core.extensions import db
from app.core.tables import Image, Job, utcnow
from app.core.tables import aware
from tests.service.conftest import RedisServer, register_test_models, sqlite_app_for_worker, wait_for
from tests.support.faults import InjectedFaults

pytestmark = pytest.mark.integration

FAST = {"HEARTBEAT_INTERVAL": 0.5, "LEASE_TIMEOUT": 4, "RECONCILE_INTERVAL": 1, "QUEUED_STALE_AFTER": 5}


@pytest.fixture
def service(tmp_path, pg_url, redis_url, checkpoints):
    """(app, worker config) for PostgreSQL + Redis; start workers with ``start_worker(config)``."""
    from app import create_app
    from app.core.migrate import upgrade

    broker, prefix = redis_url
    config: dict[str, Any] = {"SQLALCHEMY_DATABASE_URI": pg_url, "CELERY_BROKER_URL": broker,
                              "BROKER_KEY_PREFIX": prefix, "STORAGE_ROOT": str(tmp_path / "images"),
                              "DEFAULT_MODEL": "tiny", **FAST}
    apps = []

    def make(**overrides: Any):
        app = create_app({"TESTING": True, **config, **overrides})
        apps.append(app)
        return app

    app = make()
    upgrade(app)
    with app.app_context():
        register_test_models(checkpoints)
    yield make, config
    for app in apps:
        app.extensions["celery"].pool.force_close_all()
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def job_row(app, job_id: str) -> Job:
    with app.app_context():
        db.session.expire_all()
        job = db.session.get(Job, job_id)
        db.session.expunge(job)
        return job


def wait_status(app, job_id: str, statuses: tuple[str, ...], timeout: float = 180) -> Job:
    return wait_for(lambda: (lambda j: j if j.status in statuses else None)(job_row(app, job_id)),
                    timeout, f"job {job_id} to reach {statuses}")


def image_count(app, job_id: str) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Image).where(Image.job_id == job_id))


def files_of(config: dict[str, Any], job_id: str) -> list[str]:
    folder = Path(config["STORAGE_ROOT"]) / "jobs" / job_id
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def submit(client, **body) -> str:
    resp = client.post("/api/v1/jobs", json=body)
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["id"]


def pixels(client, job_id: str) -> list[bytes]:
    """The decoded pixels of a job's PNGs (the files differ in their text chunks: they name the job)."""
    import io

    from PIL import Image as PILImage

    job = client.get(f"/api/v1/jobs/{job_id}").get_json()
    out = []
    for image in job["images"]:
        resp = client.get(image["png_url"])
        assert resp.status_code == 200 and resp.mimetype == "image/png"
        with PILImage.open(io.BytesIO(resp.data)) as picture:
            assert picture.size == (28, 28)
            out.append(picture.tobytes())
        resp.close()
    return out


def test_worker_serves_reproducibly_survives_a_bad_model_and_ignores_duplicates(service, start_worker):
    make, config = service
    app = make()
    client = app.test_client()
    worker = start_worker(config)

    first = submit(client, model="tiny", label="3", n=4, seed=7)
    wait_status(app, first, ("succeeded",))
    again = submit(client, model="tiny", label=3, n=4, seed=7)
    other = submit(client, model="tiny", label="3", n=4, seed=8)
    wait_status(app, again, ("succeeded",))
    wait_status(app, other, ("succeeded",))
    a, b, c = pixels(client, first), pixels(client, again), pixels(client, other)
    assert len(a) == 4 and a == b  # same model version, condition, n and seed: same pixels
    assert a != c
    meta = client.get(client.get(f"/api/v1/jobs/{first}").get_json()["images"][2]["url"]).get_json()
    assert meta["parameters"]["seed"] == 9 and meta["parameters"]["label"] == "3"
    assert meta["parameters"]["model"] == "tiny" and meta["parameters"]["model_version"] == 1

    # a corrupt checkpoint fails its job with a readable message; the same worker goes on serving
    bad = submit(client, model="broken", label="1")
    failed = wait_status(app, bad, ("failed", "succeeded"))
    assert failed.status == "failed"
    assert failed.error.startswith("could not load model 'broken' version 1"), failed.error
    assert client.get(f"/api/v1/jobs/{bad}").get_json()["error"] == failed.error
    good = submit(client, model="tiny", label="5", n=2)
    wait_status(app, good, ("succeeded",))
    assert worker.alive

    # a duplicate delivery of a finished job changes nothing
    from app.services.queue import send_jobs

    with app.app_context():
        assert send_jobs([first]) == 1
    marker = submit(client, model="tiny", label="1")  # one pool process, FIFO: done after the duplicate
    wait_status(app, marker, ("succeeded",))
    assert image_count(app, first) == 4 and files_of(config, first) == ["000.png", "001.png", "002.png", "003.png"]
    assert job_row(app, first).attempts == 1
    # the duplicate was dropped by the worker's main process (app/core/fastpath/strategy.py): no task ran for it
    assert "skipped (" not in worker.log_text()

    # a batch through the same worker
    resp = client.post("/api/v1/batches", json=[{"model": "tiny", "label": i, "n": 2} for i in range(3)])
    batch_url = resp.get_json()["url"]
    wait_for(lambda: client.get(batch_url).get_json()["status"] == "succeeded", 180, "the batch")
    assert client.get(batch_url).get_json()["counts"]["succeeded"] == 3

    # waiting instead of polling (?wait=): the worker's announcement on Redis wakes the request. The
    # re-read interval is longer than the wait, so only the notification can answer "succeeded"
    waiting = make(JOB_WAIT_RECHECK_INTERVAL=600).test_client()
    resp = waiting.post("/api/v1/jobs?wait=60", json={"model": "tiny", "label": "4", "n": 3, "seed": 7})
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["status"] == "succeeded" and [image["index"] for image in body["images"]] == [0, 1, 2]
    assert resp.headers["Location"] == body["url"]
    resp = waiting.post("/api/v1/batches", json=[{"model": "tiny", "label": i} for i in range(3)])
    resp = waiting.get(f"{resp.get_json()['url']}?wait=60")
    assert resp.status_code == 200 and resp.get_json()["status"] == "succeeded", resp.get_json()


def test_sigkill_mid_job_then_new_worker_finishes_it_exactly_once(service, start_worker):
    make, config = service
    app = make()
    client = app.test_client()
    slow = start_worker(config, name="slow", faults=InjectedFaults(task_delay=30))
    job_id = submit(client, model="tiny", label="4", n=3, seed=1)
    running = wait_status(app, job_id, ("running",))
    assert running.attempts == 1
    slow.kill()  # SIGKILL the worker and its pool process mid-job

    start_worker(config, name="fresh")
    done = wait_status(app, job_id, ("succeeded", "failed"))
    assert done.status == "succeeded", done.error
    assert done.attempts == 2
    assert image_count(app, job_id) == 3
    assert files_of(config, job_id) == ["000.png", "001.png", "002.png"]
    # and it stays that way: a later job goes through the same worker after any stray redelivery
    marker = submit(client, model="tiny", label="1")
    wait_status(app, marker, ("succeeded",))
    assert image_count(app, job_id) == 3 and job_row(app, job_id).status == "succeeded"


def test_broker_restart_loses_no_job(service, start_worker, tmp_path):
    make, config = service
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    try:
        own = {**config, "CELERY_BROKER_URL": redis_server.url, "BROKER_KEY_PREFIX": ""}
        app = make(CELERY_BROKER_URL=redis_server.url, BROKER_KEY_PREFIX="")
        client = app.test_client()
        start_worker(own, faults=InjectedFaults(task_delay=2))
        jobs = [submit(client, model="tiny", label=str(i), n=2, seed=i) for i in range(4)]
        wait_status(app, jobs[0], ("running", "succeeded"))
        app.extensions["celery"].pool.force_close_all()
        restarted_at = utcnow()
        redis_server.stop()  # the queued messages are gone with it (no persistence)
        redis_server.start()
        for job_id in jobs:
            done = wait_status(app, job_id, ("succeeded", "failed"), timeout=240)
            assert done.status == "succeeded", done.error
            assert image_count(app, job_id) == 2
            assert files_of(config, job_id) == ["000.png", "001.png"]
        # the jobs waiting in Redis were lost with it and sent again by the reconciliation
        resent = [j for j in jobs[1:] if aware(job_row(app, j).enqueued_at) > restarted_at]
        assert resent
    finally:
        redis_server.stop()


def test_cancel_stops_a_running_job(service, start_worker):
    make, config = service
    app = make()
    client = app.test_client()
    worker = start_worker(config, faults=InjectedFaults(task_delay=60))
    created = client.post("/api/v1/jobs", json={"model": "tiny", "label": "2", "n": 2}).get_json()
    job_id = created["id"]
    wait_status(app, job_id, ("running",))
    resp = client.post(f"/api/v1/jobs/{job_id}/cancel", headers={"X-Cancel-Secret": created["cancel_secret"]})
    assert resp.status_code == 200 and resp.get_json()["status"] == "canceled"
    wait_for(lambda: "'aborted'" in worker.log_text(), 120, "the worker to stop the canceled job")
    job = job_row(app, job_id)
    assert job.status == "canceled" and image_count(app, job_id) == 0 and files_of(config, job_id) == []
    assert worker.alive


def test_soft_time_limit_fails_the_job_with_a_timeout_message(service, start_worker):
    make, config = service
    app = make()
    client = app.test_client()
    start_worker({**config, "TASK_SOFT_TIME_LIMIT": 2, "TASK_TIME_LIMIT": 30}, faults=InjectedFaults(task_delay=60))
    job_id = submit(client, model="tiny", label="2")
    done = wait_status(app, job_id, ("failed", "succeeded"))
    assert done.status == "failed"
    assert "timed out" in done.error and "soft time limit of 2" in done.error
    assert image_count(app, job_id) == 0


@pytest.mark.integration
def test_default_setup_sqlite_with_the_embedded_broker(tmp_path, checkpoints, start_worker):
    """No servers at all: SQLite + kombu's SQLAlchemy transport, a separate worker process."""
    app, config = sqlite_app_for_worker(tmp_path, checkpoints)
    client = app.test_client()
    start_worker(config)
    job_id = submit(client, label="6", n=3, seed=5)
    done = wait_status(app, job_id, ("succeeded", "failed"))
    assert done.status == "succeeded", done.error
    assert len(pixels(client, job_id)) == 3 and image_count(app, job_id) == 3
    # ?wait= without Redis: the web process's database poll sees the job end (the re-read interval is
    # longer than the wait, so nothing else could answer "succeeded")
    app.config["JOB_WAIT_RECHECK_INTERVAL"] = 600
    resp = client.post("/api/v1/jobs?wait=60", json={"label": "2", "n": 2})
    assert resp.status_code == 200 and resp.get_json()["status"] == "succeeded", resp.get_json()
    assert len(resp.get_json()["images"]) == 2
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_without_servers_the_worker_listens_and_its_rings_wake_the_waiting_request(
        tmp_path, checkpoints, start_worker, monkeypatch):
    """LOCAL_WAKEUPS (app/core/fastpath/doorbell.py) in the real processes: the worker's consumer has its socket in the
    broker's doorbell folder (tests/service/test_doorbell.py shows what a ring does to it; the worker's own
    loop also looks every 2 s, so its wake-up cannot be told apart here), and a job's end, rung by the worker,
    wakes the request waiting on it: the web process's database poll finds nothing here (patched) and comes
    every hour, and the test records the wake-up. A clean stop removes the worker's socket."""
    from app.core.fastpath.doorbell import folder_for
    from tests.service.test_wait import record_wakes

    app, config = sqlite_app_for_worker(tmp_path, checkpoints)
    hour = {"JOB_WAIT_POLL_INTERVAL": 3600, "JOB_WAIT_RECHECK_INTERVAL": 3600}
    config.update(hour)
    app.config.update(hour)
    monkeypatch.setattr("app.core.fastpath.job_events.final_job_ids", lambda job_ids: set())
    woken = record_wakes(app)
    client = app.test_client()
    worker = start_worker(config)
    broker_folder = folder_for("broker", config["CELERY_BROKER_URL"].split("+", 1)[1])
    # the consumer binds its socket on its first wait, just after the worker says it is ready
    wait_for(lambda: broker_folder.is_dir() and list(broker_folder.iterdir()), 30, "the worker to listen",
             interval=0.05)
    for label in ("3", "4"):
        resp = client.post("/api/v1/jobs?wait=60", json={"label": label, "n": 2})
        assert resp.status_code == 200 and resp.get_json()["status"] == "succeeded", resp.get_json()
        assert resp.get_json()["id"] in woken
    worker.stop()
    assert not broker_folder.exists() or not list(broker_folder.iterdir())
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
