"""``?wait=S`` on the job and batch endpoints (app/core/fastpath/job_events.py): validation, the answer after the wait runs
out, and the wake-up when a job ends, by the database poll (embedded broker) and by Redis pub/sub. A job
is ended here by the API's cancel from another thread; tests/service/test_worker.py covers a real worker's
announcement. No test asserts a duration: the re-read interval is set longer than the wait, and the test
records the ids the watcher was woken for, so a "canceled" that only the final re-read at the end of the wait
found does not pass."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from app.core.extensions import db
from tests.service.conftest import base_config, register_test_models, row_counts, wait_for


def make_app(tmp_path, checkpoints, **overrides: Any):
    from app import create_app
    from app.core.migrate import upgrade

    app = create_app(base_config(tmp_path, **overrides))
    upgrade(app)
    with app.app_context():
        register_test_models(checkpoints)
    return app


def cancel_when_awaited(app, job_id: str) -> threading.Thread:
    """Cancel the job from another thread once a request is asleep waiting on it (as a client's cancel would).
    Not sooner: a cancel before the request's first read is found by that read, and no wake-up is tested."""
    from app.services import jobs
    from app.core.fastpath.job_events import watcher

    def run() -> None:
        with app.app_context():
            found = watcher()
            wait_for(lambda: job_id in found.awaited() and found.asleep() > 0, 60, "the request to wait on the job",
                     interval=0.02)
            jobs.cancel_job(job_id, admin=True)  # as its creator would (ownership: tests/service/test_hardening.py)
            db.session.remove()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def record_wakes(app) -> list[str]:
    """The job ids this app's watcher is woken for, from now on (by whichever path)."""
    from app.core.fastpath.job_events import watcher

    with app.app_context():
        found = watcher()
    woken: list[str] = []
    wake = found.wake

    def recording(job_ids):
        job_ids = list(job_ids)
        woken.extend(job_ids)
        return wake(job_ids)

    found.wake = recording
    return woken


def wait_while_another_thread_cancels(app) -> tuple[Any, str, list[str]]:
    """Submit a job, wait on it (?wait=30) while another thread cancels it: (the answer, the job's id, the ids
    the watcher was woken for)."""
    client = app.test_client()
    woken = record_wakes(app)
    job_id = client.post("/api/v1/jobs", json={"label": "1"}).get_json()["id"]
    thread = cancel_when_awaited(app, job_id)
    resp = client.get(f"/api/v1/jobs/{job_id}?wait=30")
    thread.join(30)
    return resp, job_id, woken


@pytest.mark.parametrize("raw", ["abc", "-1", "nan", "inf", "61", ""])
def test_a_bad_wait_is_a_422_naming_it_and_stores_nothing(client, app, raw):
    before = row_counts(app)
    resp = client.post(f"/api/v1/jobs?wait={raw}", json={"label": "1"})
    assert resp.status_code == 422 and resp.get_json()["field"] == "wait", resp.get_json()
    assert "wait must be a number of seconds from 0 to 60" in resp.get_json()["error"]
    assert row_counts(app) == before
    job_id = client.post("/api/v1/jobs", json={"label": "1"}).get_json()["id"]
    resp = client.get(f"/api/v1/jobs/{job_id}?wait={raw}")
    assert resp.status_code == 422 and resp.get_json()["field"] == "wait"


def test_when_the_wait_runs_out_the_job_comes_back_as_it_stands(client):
    # no worker here: the job stays queued
    resp = client.post("/api/v1/jobs?wait=0.2", json={"label": "1", "n": 2, "seed": 3})
    assert resp.status_code == 202
    body = resp.get_json()
    assert body["status"] == "queued" and body["images"] == [] and body["n"] == 2 and body["seed"] == 3
    assert resp.headers["Location"] == body["url"]
    resp = client.get(f"{body['url']}?wait=0.2")
    assert resp.status_code == 200 and resp.get_json()["status"] == "queued"
    resp = client.get(f"{body['url']}?wait=0")
    assert resp.status_code == 200 and resp.get_json()["status"] == "queued"
    batch = client.post("/api/v1/batches", json=[{"label": 1}, {"label": 2}]).get_json()
    resp = client.get(f"{batch['url']}?wait=0.2")
    assert resp.status_code == 200 and resp.get_json()["status"] == "queued"


def test_without_redis_the_database_poll_wakes_the_waiting_request(tmp_path, checkpoints):
    app = make_app(tmp_path, checkpoints, JOB_WAIT_RECHECK_INTERVAL=600, LOCAL_WAKEUPS=False)
    resp, job_id, woken = wait_while_another_thread_cancels(app)
    assert resp.status_code == 200 and resp.get_json()["status"] == "canceled", resp.get_json()
    assert job_id in woken

    # a batch answers once all its jobs have ended
    client = app.test_client()
    batch = client.post("/api/v1/batches", json=[{"label": 1}, {"label": 2}]).get_json()
    threads = [cancel_when_awaited(app, job["id"]) for job in batch["jobs"]]
    resp = client.get(f"{batch['url']}?wait=30")
    for thread in threads:
        thread.join(30)
    assert resp.get_json()["status"] == "canceled" and resp.get_json()["counts"]["canceled"] == 2


def test_without_redis_the_doorbell_wakes_the_waiting_request(tmp_path, checkpoints, monkeypatch):
    # the database poll finds nothing (and would come only every 10 min): a wake-up can only be the ring
    monkeypatch.setattr("app.core.fastpath.job_events.final_job_ids", lambda job_ids: set())
    app = make_app(tmp_path, checkpoints, JOB_WAIT_RECHECK_INTERVAL=600, JOB_WAIT_POLL_INTERVAL=600)
    resp, job_id, woken = wait_while_another_thread_cancels(app)
    assert resp.status_code == 200 and resp.get_json()["status"] == "canceled", resp.get_json()
    assert woken == [job_id]


def test_with_redis_the_announcement_wakes_the_waiting_request(tmp_path, checkpoints, redis_url):
    broker, prefix = redis_url
    app = make_app(tmp_path, checkpoints, CELERY_BROKER_URL=broker, BROKER_KEY_PREFIX=prefix,
                   JOB_WAIT_RECHECK_INTERVAL=600, JOB_WAIT_POLL_INTERVAL=600)
    try:
        resp, job_id, woken = wait_while_another_thread_cancels(app)
        assert resp.status_code == 200 and resp.get_json()["status"] == "canceled", resp.get_json()
        assert woken == [job_id]
    finally:
        app.extensions["celery"].pool.force_close_all()


def test_the_watcher_wakes_only_the_requests_waiting_on_an_ended_job(app):
    from app.core.fastpath.job_events import JobWatcher

    watcher = JobWatcher(app)
    a, b = threading.Event(), threading.Event()
    watcher._register(["j1", "j2"], a)
    watcher._register(["j2", "j3"], b)
    watcher.wake(["j1"])
    assert a.is_set() and not b.is_set()
    watcher.wake(["j3", "unknown"])
    assert b.is_set()
    watcher._unregister(["j1", "j2"], a)
    watcher._unregister(["j2", "j3"], b)
    assert watcher.awaited() == []


def test_with_the_fast_paths_off_a_waiting_request_is_woken_by_the_poll(tmp_path, checkpoints, redis_url):
    from app.core.fastpath.job_events import jobs_doorbell, watcher

    broker, prefix = redis_url
    app = make_app(tmp_path, checkpoints, CELERY_BROKER_URL=broker, BROKER_KEY_PREFIX=prefix, FAST_PATHS=False,
                   JOB_WAIT_RECHECK_INTERVAL=600, JOB_WAIT_POLL_INTERVAL=0.05)
    try:
        with app.app_context():
            assert watcher().url is None and not jobs_doorbell(app.config).enabled  # no pub/sub, no rings
        resp, job_id, woken = wait_while_another_thread_cancels(app)
        assert resp.status_code == 200 and resp.get_json()["status"] == "canceled", resp.get_json()
        assert woken == [job_id]  # by the database poll, the one path left
    finally:
        app.extensions["celery"].pool.force_close_all()


def test_a_submit_that_waits_reads_its_job_only_once_it_has_ended(tmp_path, checkpoints):
    """``POST /jobs?wait=`` watches the new job's id before storing it, so it sleeps at once: the one read of
    the job is the answer's, after the wake-up (a read before sleeping could only find it queued)."""
    from sqlalchemy import event

    from app.core.fastpath.job_events import watcher
    from app.services import jobs

    app = make_app(tmp_path, checkpoints, JOB_WAIT_RECHECK_INTERVAL=600, JOB_WAIT_POLL_INTERVAL=600)
    request_thread = threading.get_ident()
    reads: list[str] = []

    def count_reads(_conn, _cursor, statement, *_args) -> None:
        if threading.get_ident() == request_thread and statement.lstrip().upper().startswith("SELECT") \
                and "FROM jobs" in statement:
            reads.append(statement)

    def cancel_the_awaited_job() -> None:
        with app.app_context():
            found = watcher()
            wait_for(lambda: found.awaited() and found.asleep() > 0, 60, "the request to wait", interval=0.02)
            jobs.cancel_job(found.awaited()[0], admin=True)
            db.session.remove()

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", count_reads)
    try:
        thread = threading.Thread(target=cancel_the_awaited_job, daemon=True)
        thread.start()
        resp = app.test_client().post("/api/v1/jobs?wait=30", json={"label": "1"})
        thread.join(30)
    finally:
        event.remove(engine, "before_cursor_execute", count_reads)
    assert resp.status_code == 200 and resp.get_json()["status"] == "canceled", resp.get_json()
    assert resp.headers["Location"] == resp.get_json()["url"]
    assert len(reads) == 1, reads
