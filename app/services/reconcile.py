"""The reconciliation: repairs what a lost message or a dead worker leaves behind, for jobs and training runs.
Every worker runs it on a timer (:mod:`workers.bootsteps`)."""

from __future__ import annotations

from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import or_, select, update

from app.core.extensions import db
from app.core.models import Job, utcnow
from app.services.job_events import announce_finished
from app.services.jobs import resend_jobs
from app.services.trainings import reconcile_runs


def reconcile(now: datetime | None = None) -> dict[str, int]:
    """Repair what a lost message or a dead worker leaves behind; safe to run from many workers at once.

    * ``running`` jobs whose lease (``heartbeat_at``) is older than LEASE_TIMEOUT: their worker died. They go
      back to ``queued`` and are sent again, or are failed once they have been attempted MAX_ATTEMPTS times.
    * ``queued`` jobs whose last message is older than QUEUED_STALE_AFTER: the message may have been lost (a
      broker restart without persistence, a worker killed holding it). They are sent again. A duplicate is
      harmless: the task claims the row with a conditional update, so only one delivery does the work.

    Each repair is a conditional UPDATE on the row, so two reconcilers never both send the same job.
    """
    cfg = current_app.config
    now = now or utcnow()
    lease_cutoff = now - timedelta(seconds=float(cfg["LEASE_TIMEOUT"]))
    queued_cutoff = now - timedelta(seconds=float(cfg["QUEUED_STALE_AFTER"]))
    max_attempts = int(cfg["MAX_ATTEMPTS"])
    counts = {"requeued_running": 0, "failed_running": 0, "resent_queued": 0}
    to_send: list[str] = []
    failed: list[str] = []

    stale = db.session.execute(select(Job.id, Job.attempts).where(
        Job.status == "running", or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < lease_cutoff))).all()
    for job_id, attempts in stale:
        cond = (Job.id == job_id, Job.status == "running",
                or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < lease_cutoff))
        if attempts >= max_attempts:
            res = db.session.execute(update(Job).where(*cond).values(
                status="failed", finished_at=now, claim_token=None,
                error=f"the job was abandoned by its worker {attempts} times (worker died or hit the hard time "
                      f"limit of {cfg['TASK_TIME_LIMIT']} s); giving up"))
            counts["failed_running"] += res.rowcount
            if res.rowcount:
                failed.append(job_id)
        else:
            res = db.session.execute(update(Job).where(*cond).values(
                status="queued", enqueued_at=now, claim_token=None, progress=0.0))
            if res.rowcount:
                counts["requeued_running"] += 1
                to_send.append(job_id)
        db.session.commit()

    lost = db.session.scalars(select(Job.id).where(
        Job.status == "queued", or_(Job.enqueued_at.is_(None), Job.enqueued_at < queued_cutoff))).all()
    for job_id in lost:
        res = db.session.execute(update(Job).where(
            Job.id == job_id, Job.status == "queued",
            or_(Job.enqueued_at.is_(None), Job.enqueued_at < queued_cutoff)).values(enqueued_at=now))
        db.session.commit()
        if res.rowcount:
            counts["resent_queued"] += 1
            to_send.append(job_id)
    if to_send:
        resend_jobs(to_send)  # each on its lane (generate or bulk)
    if failed:
        announce_finished(failed)
    counts.update(reconcile_runs(now))
    return counts
