"""Recovery with real worker processes: a killed pool process's job runs again within seconds
(the default timings, no test shortcuts), a poison job is isolated and failed while its batch-mates succeed
uncharged, and a job created while the broker is down goes out as soon as the broker is back, with no other
traffic. Time bounds here are loose guards against the old behaviour (60-120 s); bench/recovery.py measures."""

from __future__ import annotations

import os
import signal
import time

import pytest

from app.core.extensions import db
from tests.service.conftest import RedisServer, sqlite_app_for_worker, wait_for
from tests.service.test_worker import job_row, service, submit, wait_status  # noqa: F401  (a fixture)
from tests.support.faults import InjectedFaults

pytestmark = pytest.mark.integration

# the defaults of app/core/config.py, spelled out so that the test config (FAST) does not shorten them
DEFAULT_TIMINGS = {"HEARTBEAT_INTERVAL": 1.0, "LEASE_TIMEOUT": 4.0, "RECONCILE_INTERVAL": 1.0,
                   "QUEUED_STALE_AFTER": 120.0}


def test_a_killed_pool_process_is_replaced_and_its_job_runs_again_in_seconds(service, start_worker):
    make, config = service
    app = make()
    client = app.test_client()
    start_worker({**config, **DEFAULT_TIMINGS}, faults=InjectedFaults(task_delay=3))
    job_id = submit(client, model="tiny", label="4", n=2, seed=3)
    running = wait_status(app, job_id, ("running",))
    pid = int(running.worker.rpartition(":")[2])
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)  # the pool process only: its worker's main process notices at its next beat
    wait_for(lambda: job_row(app, job_id).attempts == 2, 60, "the job to be claimed again", interval=0.05)
    recovered = time.monotonic() - killed_at
    done = wait_status(app, job_id, ("succeeded", "failed"))
    assert done.status == "succeeded" and done.deaths == 1  # alone in its pass: charged
    assert recovered < 15, recovered  # was LEASE_TIMEOUT (60 s) + RECONCILE_INTERVAL (30 s)


def test_a_poison_job_is_isolated_and_failed_while_its_batch_mates_succeed_uncharged(
        tmp_path, checkpoints, start_worker):
    app, config = sqlite_app_for_worker(tmp_path, checkpoints)
    client = app.test_client()
    poison_seed = 666
    ids = [submit(client, label=str(i), n=2, seed=seed) for i, seed in enumerate([1, poison_seed, 2, 3])]
    start_worker(config, faults=InjectedFaults(poison_seed=poison_seed))  # the first task batches all four, and dies
    jobs = {job_id: wait_status(app, job_id, ("succeeded", "failed"), timeout=240) for job_id in ids}
    poison = jobs.pop(ids[1])
    assert poison.status == "failed", poison.error
    assert "died 3 times while it ran alone" in poison.error and "likely what kills it" in poison.error
    for job in jobs.values():
        assert job.status == "succeeded" and job.deaths == 0, (job.status, job.error)
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_a_job_created_while_the_broker_is_down_goes_out_when_it_returns(service, start_worker, tmp_path):
    make, config = service
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    try:
        own = {**config, **DEFAULT_TIMINGS, "CELERY_BROKER_URL": redis_server.url, "BROKER_KEY_PREFIX": "",
               "OUTBOX_RELAY_INTERVAL": 0.5}
        app = make(**{k: v for k, v in own.items() if k != "SQLALCHEMY_DATABASE_URI"})
        client = app.test_client()
        start_worker(own)
        wait_status(app, submit(client, model="tiny", label="1"), ("succeeded",))
        app.extensions["celery"].pool.force_close_all()
        redis_server.stop()
        job_id = submit(client, model="tiny", label="2", n=2)  # 202: stored, its message in the outbox
        from app.services.outbox import pending_count

        with app.app_context():
            assert pending_count() == 1
        redis_server.start()
        back_at = time.monotonic()
        done = wait_status(app, job_id, ("succeeded", "failed"), timeout=120)
        assert done.status == "succeeded", done.error
        assert time.monotonic() - back_at < 15  # was: ~123 s without other traffic (QUEUED_STALE_AFTER)
        # the job may have run from the message the worker re-sent on reconnecting; the original row goes out
        # with the next relay pass (a duplicate message is harmless: the claim absorbs it)
        def outbox_empty() -> bool:
            with app.app_context():
                return pending_count() == 0

        wait_for(outbox_empty, 15, "the outbox to be empty")
    finally:
        redis_server.stop()


def test_a_worker_killed_whole_is_not_charged_to_the_job_it_ran_alone(tmp_path, checkpoints, start_worker):
    """A deploy or an OOM kill takes every process of a worker: its lone job is re-run uncharged (with
    MAX_ATTEMPTS=1 one charged death would fail it). The pool process killed alone is charged (above)."""
    app, config = sqlite_app_for_worker(tmp_path, checkpoints)
    config = {**config, "MAX_ATTEMPTS": 1}
    client = app.test_client()
    doomed = start_worker(config, faults=InjectedFaults(task_delay=60))  # the job outlasts the worker
    job_id = submit(client, label="4", n=2, seed=3)
    survivor = start_worker(config, wait=False)  # boots while the first one runs the job
    running = wait_status(app, job_id, ("running",))
    assert running.worker_main is not None  # the main process that forked its pool process
    survivor.wait_ready()
    doomed.kill()  # SIGKILL to the whole process group: main process and pool process
    done = wait_status(app, job_id, ("succeeded", "failed"))
    assert done.status == "succeeded", done.error
    assert (done.deaths, done.isolated, done.attempts) == (0, False, 2)
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
