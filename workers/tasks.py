"""The worker's tasks: ``generate_images(job_id)`` (steps 4-5 of docs/architecture.md) and the reconciliation.

``generate_images`` is idempotent and safe to deliver more than once:

1. it reads the job's row (one statement); a job no longer ``queued`` is left alone;
2. it claims the job (:func:`workers.lease.claim_many`: ``queued`` -> ``running`` under a fresh claim
   token, so only one delivery works on a job) and, when the model is loaded already, queued jobs of the
   same model version to decode with it, all in one transaction; a :class:`~workers.lease.Lease` renews
   them from a thread while the task runs;
3. :func:`workers.decoding.run_job` loads the model (:mod:`workers.model_cache`), decodes the jobs together
   and hands their images to :mod:`workers.job_images`, which writes the PNGs under keys derived from the job
   id and marks the jobs ``succeeded`` with their image rows in one transaction fenced by the claim tokens,
   so the rows appear exactly once;
4. whatever happened is recorded here: a canceled job's files removed, a failure or a timeout recorded on
   each job it held, a job whose store was down re-queued; then the waiting requests are woken.

A job whose worker died is found by the reconciliation (:func:`app.services.reconcile.reconcile`) and sent
again. Models load lazily in the pool process that runs the task (never in the parent: CUDA must not be
initialised before the fork).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from flask import current_app
from sqlalchemy import bindparam, select

from app.core import metrics
from app.core.extensions import db
from app.core.tables import Job, ModelVersion
from app.core.queue import GENERATE_TASK, RECONCILE_TASK
from app.core.storage import StorageUnavailable
from app.core.fastpath.job_events import announce_finished
from app.core.status import JobStatus
from workers.batching import JobSnapshot, stage_clock
from workers.decoding import claim_companions, run_job
from workers.failures import readable
from workers.job_images import remove_unrecorded_files
from workers.lease import JobAborted, Lease, claim_many, commit_without_flush_wait, finish_failed, requeue
from workers.model_cache import VersionSnapshot, model_cached
from workers.worker_status import note_worker, record_finished

log = logging.getLogger(__name__)

# PRIORFORGE_LOG_STAGE_TIMES=1: log each task's time per stage (workers.batching.stage_clock), for profiling
LOG_STAGE_TIMES = os.environ.get("PRIORFORGE_LOG_STAGE_TIMES", "") in ("1", "true", "yes")


@functools.cache
def _lookup_statement() -> Any:
    """The job's status, its snapshot and its model version's, in one statement (built once)."""
    return select(Job.status, Job.isolated, *JobSnapshot.columns(), *VersionSnapshot.columns()) \
        .join(ModelVersion, Job.model_version_id == ModelVersion.id).where(Job.id == bindparam("job_id"))


@shared_task(name=GENERATE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True,
             Strategy="app.core.fastpath.strategy:skip_settled_jobs")
def generate_images(self: Any, job_id: str) -> str:
    try:
        return _generate_images_timed(job_id)
    finally:
        note_worker(getattr(self.request, "hostname", None))


def _generate_images_timed(job_id: str) -> str:
    if not LOG_STAGE_TIMES:
        return _generate_images(job_id)
    stage_clock.reset()  # one task at a time in a pool process
    stage_clock.enabled = True
    t0 = time.perf_counter()
    try:
        return _generate_images(job_id)
    finally:
        stage_clock.enabled = False
        log.info("job %s: %.1f ms; stages (ms): %s", job_id, (time.perf_counter() - t0) * 1e3,
                 ", ".join(f"{stage} {seconds * 1e3:.1f}" for stage, seconds in stage_clock.seconds.items()))


def _generate_images(job_id: str) -> str:
    with stage_clock("lookup"):  # one plain row (no ORM objects): most messages under load are no-ops
        row = db.session.execute(_lookup_statement(), {"job_id": job_id}).first()
    if row is None:
        log.warning("job %s does not exist; dropping its message", job_id)
        return "missing"
    if row.status != JobStatus.QUEUED:
        # succeeded/failed/canceled: done already; running: another delivery holds the lease
        return f"skipped ({row.status})"
    isolated = bool(row.isolated)  # its last worker died while it was batched: it runs alone this time
    primary = JobSnapshot(*row[2:2 + len(JobSnapshot.columns())])
    version = VersionSnapshot(*row[2 + len(JobSnapshot.columns()):])
    cfg = current_app.config
    # The claim, and when the model is already loaded the companions' claims too, in one transaction. A
    # model still to load is loaded before companions are claimed: a load that fails fails this job only.
    with stage_clock("claim"):
        token = claim_many([job_id], commit=False).get(job_id)
        if token is None:
            db.session.rollback()
            return "skipped (claimed elsewhere)"
        lease = Lease(job_id, token, cfg["HEARTBEAT_INTERVAL"])
        companions: list[JobSnapshot] | None
        if isolated or primary.operation:  # an interpolation decodes codes of its own: never batched
            companions = []
        else:
            companions = claim_companions(primary, lease, in_transaction=True) if model_cached(version) else None
        commit_without_flush_wait()
    try:
        with lease:
            outcomes = run_job(primary, version, lease, companions)
        return outcomes.get(job_id, "aborted")
    except JobAborted:
        log.info("job %s was canceled or taken over; stopping", job_id)
        for member in lease.tokens:
            remove_unrecorded_files(member)
        return "aborted"
    except SoftTimeLimitExceeded:
        for member, member_token in lease.tokens.items():
            finish_failed(member, member_token, f"timed out: the job ran past the soft time limit of "
                                                f"{cfg['TASK_SOFT_TIME_LIMIT']} s")
        return "timeout"
    except StorageUnavailable as exc:  # the store is at fault, not the job: back to the queue
        log.warning("job %s: the object store is unavailable, the job goes back to the queue: %s", job_id, exc)
        for member, member_token in lease.tokens.items():
            requeue(member, member_token, str(exc))
        return "requeued"
    except Exception as exc:  # a failing model must not take the worker down: record and move on
        log.exception("job %s failed", job_id)
        for member, member_token in lease.tokens.items():
            finish_failed(member, member_token, readable(exc))
        return JobStatus.FAILED
    finally:
        # wake the requests waiting on these jobs (?wait=): whatever became of them, it is committed now
        announce_finished(list(lease.tokens))
        metrics.leases_lost(lease.lost_count)
        record_finished(list(lease.tokens), version.name, lease)


@shared_task(name=RECONCILE_TASK, ignore_result=True)
def reconcile() -> dict[str, int]:
    from app.services.reconcile import reconcile as run

    return run()
