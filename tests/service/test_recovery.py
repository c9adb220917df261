"""Recovery on the Flask test client and SQLite, no servers: idempotent creation, the outbox,
finding dead workers (a process gone on this machine, an expired lease) and charging their deaths fairly,
the embedded broker's table creation and clean-up. The same with real processes: test_recovery_workers.py."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.core.extensions import db
from app.core.tables import IdempotencyKey, Job, OutboxMessage, utcnow
from tests.service.conftest import REPO, broker_messages, broker_payloads, row_counts

HOST = socket.gethostname()


# -- Idempotency-Key ------------------------------------------------------------------------------------
# anonymous clients' keys must be unguessable (docs/security.md): random values, as a client would send
RETRY_1, RETRY_2, BATCH_KEY = "7c0f2e5a-9b41-4d3e-a8f6-1e2d3c4b5a69", "0d9e8f7a-6b5c-4d3e-9f1a-2b3c4d5e6f70", "b-5f2a9c1e7d3b4a60"
def test_a_retry_with_the_same_key_returns_the_first_job(app, client):
    before, msgs = row_counts(app), broker_messages(app)
    body = {"model": "tiny", "label": "3", "n": 2}  # no seed: a random one, so a second job would differ
    first = client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": RETRY_1})
    again = client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": RETRY_1})
    assert first.status_code == again.status_code == 202
    assert again.get_json()["id"] == first.get_json()["id"] and again.get_json()["status"] == "queued"
    assert row_counts(app)["jobs"] == before["jobs"] + 1 and broker_messages(app) == msgs + 1
    # the same key with another body is refused; another key makes another job
    other = client.post("/api/v1/jobs", json={**body, "n": 3}, headers={"Idempotency-Key": RETRY_1})
    assert other.status_code == 422 and "different request" in other.get_json()["error"]
    assert client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": RETRY_2}).get_json()["id"] \
        != first.get_json()["id"]
    assert client.post("/api/v1/jobs", json=body).status_code == 202  # no key: no check
    assert row_counts(app)["jobs"] == before["jobs"] + 3


def test_a_replay_reports_the_job_as_it_stands(app, client):
    """A replayed POST answered 202 {"status": "queued"} for a job that had already succeeded."""
    body = {"model": "tiny", "label": "3", "n": 2}
    first = client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": RETRY_1})
    assert first.status_code == 202 and first.get_json()["status"] == "queued"
    job_id = first.get_json()["id"]
    again = client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": RETRY_1})
    assert again.status_code == 202 and again.get_json()["status"] == "queued" and again.get_json()["n"] == 2
    with app.app_context():
        db.session.execute(update(Job).where(Job.id == job_id).values(status="succeeded", progress=1.0,
                                                                       finished_at=utcnow()))
        db.session.commit()
    done = client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": RETRY_1})
    assert done.status_code == 200 and done.headers["Location"] == f"/api/v1/jobs/{job_id}"
    assert (done.get_json()["id"], done.get_json()["status"], done.get_json()["progress"]) == (job_id, "succeeded", 1.0)
    assert done.get_json()["cancel_secret"] == first.get_json()["cancel_secret"]
    assert row_counts(app)["jobs"] == 1


def test_a_broker_outage_does_not_cancel_running_jobs(app):
    """Set explicitly: Celery 6 changes the default to cancelling every running acks_late task on a lost
    connection, which would throw away the work of jobs that keep their claim and lease in the database."""
    celery_app = app.extensions["celery"]
    assert celery_app.conf.task_acks_late is True
    assert celery_app.conf.worker_cancel_long_running_tasks_on_connection_loss is False
    from app.core.queue import celery_config

    with app.app_context():  # in the service's own settings (which the workers build on), not a default
        assert celery_config(app)["worker_cancel_long_running_tasks_on_connection_loss"] is False


@pytest.mark.parametrize("key", ["", " ", "x" * 201, "naïve"])
def test_a_malformed_key_is_refused_before_anything_is_stored(app, client, key):
    before = row_counts(app)
    resp = client.post("/api/v1/jobs", json={"label": "1"}, headers={"Idempotency-Key": key})
    assert resp.status_code == 422 and "Idempotency-Key" in resp.get_json()["error"]
    assert row_counts(app) == before


def test_batches_are_idempotent_too(app, client):
    items = [{"model": "tiny", "label": str(i)} for i in range(3)]
    first = client.post("/api/v1/batches", json=items, headers={"Idempotency-Key": BATCH_KEY})
    again = client.post("/api/v1/batches", json=items, headers={"Idempotency-Key": BATCH_KEY})
    assert first.status_code == again.status_code == 202
    assert first.get_json()["id"] == again.get_json()["id"]
    assert row_counts(app)["batches"] == 1 and row_counts(app)["jobs"] == 3
    upload = {"file": (__import__("io").BytesIO(b"label\n1\n2\n"), "jobs.csv")}
    resp = client.post("/api/v1/batches", data=upload, headers={"Idempotency-Key": BATCH_KEY},
                       content_type="multipart/form-data")
    assert resp.status_code == 422  # the same key for another request


def test_expired_keys_are_forgotten(app):
    from app.services.idempotency import forget_expired

    with app.app_context():
        db.session.add(IdempotencyKey(scope="jobs", key="old", request_hash="0" * 64, resource_id="x",
                                      created_at=utcnow() - timedelta(days=2)))
        db.session.add(IdempotencyKey(scope="jobs", key="new", request_hash="0" * 64, resource_id="y"))
        db.session.commit()
        assert forget_expired(utcnow()) == 1
        assert db.session.scalars(select(IdempotencyKey.key)).all() == ["new"]


def test_the_key_is_in_the_openapi_document(client):
    paths = client.get("/api/v1/openapi.json").get_json()["paths"]
    for path in ("/jobs", "/batches"):
        names = [p["name"] for p in paths[path]["post"]["parameters"]]
        assert "Idempotency-Key" in names, path


# -- the outbox -----------------------------------------------------------------------------------------
def test_a_job_and_its_message_are_one_transaction_and_the_message_waits_for_the_broker(app, client, monkeypatch):
    from app.services import outbox

    def broker_down(*args, **kwargs):
        raise ConnectionRefusedError("the broker is down")

    monkeypatch.setattr("app.services.outbox.publish", broker_down)
    kicked = []
    monkeypatch.setattr(outbox.Relay, "kick", lambda self: kicked.append(self))
    msgs = broker_messages(app)
    resp = client.post("/api/v1/jobs", json={"label": "5"})
    assert resp.status_code == 202  # stored and answered: its message is in the outbox
    job_id = resp.get_json()["id"]
    with app.app_context():
        assert db.session.scalars(select(OutboxMessage.ref_id)).all() == [job_id]
    assert broker_messages(app) == msgs and kicked  # the relay was started
    monkeypatch.undo()
    with app.app_context():  # the broker is back: the relay's pass publishes it and empties the outbox
        assert outbox.publish_pending(kick=False) == 1
        assert outbox.pending_count() == 0
    assert broker_payloads(app)[-1]["headers"]["argsrepr"] == repr([job_id])


def test_the_relay_thread_publishes_until_the_outbox_is_empty(app):
    from app.core.queue import GENERATE_TASK
    from app.services import outbox

    app.config.update(OUTBOX_RELAY_INTERVAL=0.05, OUTBOX_RELAY_GRACE=0.2)
    with app.app_context():
        outbox.add(GENERATE_TASK, "generate", ["a", "b"])
        db.session.commit()
        relay = outbox.relay_for(app)
        relay.kick()
        relay._thread.join(10)
        assert not relay._thread.is_alive() and outbox.pending_count() == 0
    assert broker_messages(app) == 2


def test_published_rows_are_deleted_together_and_a_relay_leaves_young_rows_to_their_writer(app, client):
    from app.core.queue import GENERATE_TASK
    from app.services import outbox

    app.config["OUTBOX_SWEEP_INTERVAL"] = 60.0  # the test sweeps by hand
    msgs = broker_messages(app)
    ids = [client.post("/api/v1/jobs", json={"label": str(i)}).get_json()["id"] for i in range(2)]
    assert broker_messages(app) == msgs + 2  # published at once
    with app.app_context():
        assert sorted(db.session.scalars(select(OutboxMessage.ref_id))) == sorted(ids)  # their rows wait for the sweep
        assert outbox.publish_pending(kick=False, grace=30) == 0  # a relay leaves them to their writer
        assert outbox.sweeper_for(app).flush() == 2 and outbox.pending_count() == 0
        # a writer that died before its publish leaves an old row: a relay's pass sends it
        db.session.add(OutboxMessage(task=GENERATE_TASK, queue="generate", ref_id="orphan",
                                     created_at=utcnow() - timedelta(seconds=60)))
        db.session.commit()
        assert outbox.publish_pending(kick=False, grace=30) == 1 and outbox.pending_count() == 0
    assert broker_messages(app) == msgs + 3


def test_the_sweeper_thread_deletes_published_rows_by_itself(app, client):
    from app.services import outbox

    app.config["OUTBOX_SWEEP_INTERVAL"] = 0.05
    assert client.post("/api/v1/jobs", json={"label": "1"}).status_code == 202
    deadline = time.monotonic() + 10
    with app.app_context():
        while outbox.pending_count() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert outbox.pending_count() == 0


# -- dead workers and fair charging ---------------------------------------------------------------------
def running_job(client, app, worker: str, *, beat_age: float = 0.0, deaths: int = 0) -> str:
    job_id = client.post("/api/v1/jobs", json={"label": "2"}).get_json()["id"]
    with app.app_context():
        db.session.execute(update(Job).where(Job.id == job_id).values(
            status="running", worker=worker, claim_token="t-" + job_id[:8], attempts=deaths + 1, deaths=deaths,
            heartbeat_at=utcnow() - timedelta(seconds=beat_age)))
        db.session.commit()
    return job_id


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def job(app, job_id: str) -> Job:
    with app.app_context():
        row = db.session.get(Job, job_id, populate_existing=True)
        db.session.expunge(row)
        return row


def test_a_dead_local_process_is_found_at_once_and_a_live_one_is_left_alone(app, client):
    from app.services.reconcile import reconcile

    dead = running_job(client, app, f"{HOST}:{dead_pid()}")  # fresh lease, but its process is gone
    alive = running_job(client, app, f"{HOST}:{__import__('os').getpid()}")
    elsewhere = running_job(client, app, "another-host:1")  # fresh lease on another machine: alive
    msgs = broker_messages(app)
    with app.app_context():
        counts = reconcile()
    assert counts["requeued_running"] == 1
    assert job(app, dead).status == "queued" and job(app, dead).deaths == 1  # alone: charged
    assert job(app, alive).status == job(app, elsewhere).status == "running"
    assert broker_messages(app) == msgs + 1
    app.config["LOCAL_DEATH_CHECK"] = False  # leases alone: the dead process's job waits for its lease
    again = running_job(client, app, f"{HOST}:{dead_pid()}")
    with app.app_context():
        reconcile()
    assert job(app, again).status == "running"


def test_an_expired_lease_requeues_the_job(app, client):
    from app.services.reconcile import reconcile

    stale = running_job(client, app, "another-host:1", beat_age=app.config["LEASE_TIMEOUT"] + 1)
    with app.app_context():
        reconcile()
    assert job(app, stale).status == "queued" and job(app, stale).isolated


def test_batch_mates_of_a_death_are_not_charged_and_run_alone_after_a_second_one(app, client):
    from app.services.reconcile import reconcile

    worker = f"{HOST}:{dead_pid()}"
    mates = [running_job(client, app, worker) for _ in range(3)]
    with app.app_context():
        counts = reconcile()
    assert counts["requeued_uncharged"] == 3 and counts["requeued_running"] == 0
    for job_id in mates:
        row = job(app, job_id)
        assert (row.status, row.deaths, row.isolated) == ("queued", 0, False)  # batched again
    # claimed again (attempt 2), batched with a new job, and that worker dies too: the old ones run alone next
    worker = f"{HOST}:{dead_pid()}"
    with app.app_context():
        db.session.execute(update(Job).where(Job.id.in_(mates)).values(
            status="running", worker=worker, attempts=2, claim_token="t2", heartbeat_at=utcnow()))
        db.session.commit()
    new = running_job(client, app, worker)
    with app.app_context():
        assert reconcile()["requeued_uncharged"] == 4
    assert all(job(app, j).isolated and job(app, j).deaths == 0 for j in mates)
    assert not job(app, new).isolated


def test_a_job_that_kills_its_worker_alone_too_often_is_failed_as_poison(app, client):
    from app.services.reconcile import reconcile

    limit = app.config["MAX_ATTEMPTS"]
    poison = running_job(client, app, f"{HOST}:{dead_pid()}", deaths=limit - 1)
    with app.app_context():
        assert reconcile()["failed_running"] == 1
    row = job(app, poison)
    assert row.status == "failed" and row.deaths == limit
    assert f"died {limit} times while it ran alone" in row.error and "likely what kills it" in row.error


def test_an_isolated_job_is_never_a_companion(app, client):
    from workers.batching import JobSnapshot, companion_candidates

    ids = [client.post("/api/v1/jobs", json={"label": "1"}).get_json()["id"] for _ in range(3)]
    with app.app_context():
        db.session.execute(update(Job).where(Job.id == ids[1]).values(isolated=True))
        db.session.commit()
        primary = JobSnapshot.of(db.session.get(Job, ids[0]))
        assert [c.id for c in companion_candidates(primary, 64)] == [ids[2]]


# -- the embedded broker --------------------------------------------------------------------------------
OPEN_BROKER = """
import sys
from kombu import Connection
from app.core.fastpath import embedded_broker
embedded_broker.register()
with Connection(embedded_broker.broker_url(sys.argv[1])) as conn:
    conn.default_channel.session  # opens the engine: creates the tables
    print("ok")
"""


def test_processes_starting_together_create_the_broker_tables_once(tmp_path):
    for attempt in range(3):
        url = f"sqla+sqlite:///{tmp_path / f'broker-{attempt}.sqlite3'}"
        procs = [subprocess.Popen([sys.executable, "-c", OPEN_BROKER, url], cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(4)]
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0 and out.strip() == "ok", err[-2000:]
            assert "already exists" not in err


def test_consumed_messages_are_deleted_and_cleanup_bounds_the_file(tmp_path):
    from kombu import Connection

    from app.core.fastpath import embedded_broker

    embedded_broker.register()
    url = f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}"
    path = tmp_path / "broker.sqlite3"
    with Connection(embedded_broker.broker_url(url)) as conn:
        queue = conn.SimpleQueue("q")
        for i in range(300):
            queue.put({"i": i, "pad": "x" * 2000})
        for _ in range(300):
            queue.get(timeout=5).ack()
        queue.close()
    with sqlite3.connect(path) as sq:
        assert sq.execute("SELECT count(*) FROM kombu_message").fetchone()[0] == 0
        # what an older version left: consumed rows kept invisible
        sq.executemany("INSERT INTO kombu_message (visible, timestamp, payload, version, queue_id) "
                       "VALUES (0, CURRENT_TIMESTAMP, ?, 1, 1)", [("y" * 2000,)] * 300)
    before = path.stat().st_size
    assert embedded_broker.cleanup(url)["deleted"] == 300
    again = embedded_broker.cleanup(url)
    with sqlite3.connect(path) as sq:
        assert sq.execute("SELECT count(*) FROM kombu_message").fetchone()[0] == 0
    assert again["deleted"] == 0 and path.stat().st_size < before / 2


def test_gunicorn_has_no_shared_control_socket_and_waits_for_waiting_requests():
    namespace: dict = {}
    exec((REPO / "gunicorn.conf.py").read_text(), namespace)
    assert namespace["control_socket_disable"] is True
    assert namespace["graceful_timeout"] > 60  # JOB_WAIT_MAX_SECONDS
    assert "--config gunicorn.conf.py" in (REPO / "Procfile").read_text()


def test_outbox_rows_count(app):  # the model and the migration agree on the table (a smoke check)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(OutboxMessage)) == 0


def test_a_worker_killed_whole_is_not_charged_and_a_pool_process_that_died_alone_is(app, client, monkeypatch):
    """The main process recorded with the job (worker_main) decides: gone on this machine or silent for a lease
    -> the whole worker was killed, no charge; alive past the job's lease, or this very process -> charged."""
    import os

    from app.core.tables import WorkerNode
    from app.services import reconcile as rec

    lease = app.config["LEASE_TIMEOUT"]
    cases = {"killed": running_job(client, app, f"{HOST}:{dead_pid()}"),
             "silent": running_job(client, app, "another-host:5", beat_age=lease + 1),
             "beating": running_job(client, app, "another-host:6", beat_age=lease + 1),
             "mine": running_job(client, app, f"{HOST}:{dead_pid()}")}
    with app.app_context():
        now = utcnow()  # the main processes' last beats, after the jobs' (a lease ago for "silent")
        db.session.add_all([WorkerNode(id="killed", host=HOST, pid=dead_pid(), seen_at=now),
                            WorkerNode(id="silent", host="another-host", pid=1, seen_at=now - timedelta(seconds=lease + 1)),
                            WorkerNode(id="beating", host="another-host", pid=2, seen_at=now),
                            WorkerNode(id="mine", host=HOST, pid=os.getpid(), seen_at=now)])
        for main, job_id in cases.items():
            db.session.execute(update(Job).where(Job.id == job_id).values(worker_main=main))
        db.session.commit()
        counts = rec.reconcile()
    assert (counts["requeued_worker_lost"], counts["requeued_running"]) == (2, 1)
    for main in ("killed", "silent"):
        assert (job(app, cases[main]).status, job(app, cases[main]).deaths) == ("queued", 0)
    assert (job(app, cases["beating"]).status, job(app, cases["beating"]).deaths) == ("queued", 1)
    # a live main process of this machine that is not this one: its own reconciliation charges the job
    assert job(app, cases["mine"]).status == "running"
    monkeypatch.setitem(rec._this_main, "id", "mine")
    with app.app_context():
        assert rec.reconcile()["requeued_running"] == 1
    assert (job(app, cases["mine"]).status, job(app, cases["mine"]).deaths) == ("queued", 1)
