"""What a pool process reports after its tasks: the jobs that ended (/metrics) and its row of
``worker_status`` (the admin's queue page)."""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from sqlalchemy import select

from app.core import metrics
from app.core.extensions import db
from app.core.status import JobStatus
from app.core.tables import Job, ModelVersion, aware
from workers.model_cache import loaded_models

log = logging.getLogger(__name__)


def record_finished(job_ids: list[str], model: str, lease: Any) -> None:
    """Count the task's jobs that ended (by model, status and lane) and their latencies from submission
    (/metrics). The jobs that succeeded are known to the task (``lease.succeeded``: their snapshots and the
    finishing commit's time; started: the task's claim); the others (failed, canceled) are read back, once,
    after the task's last commit. Never raises."""
    try:
        from app.services.metrics import lane_name

        for job, finished in lease.succeeded.values():
            created = aware(job.created_at) if job.created_at else None
            metrics.job_finished(model, JobStatus.SUCCEEDED, lane_name(job.batch_id, job.n), job.n,
                                 (lease.claimed_at - created).total_seconds() if created else None,
                                 (finished - created).total_seconds() if created else None)
        job_ids = [job_id for job_id in job_ids if job_id not in lease.succeeded]
        if not job_ids:
            return
        db.session.rollback()
        rows = db.session.execute(
            select(Job.status, Job.n, Job.batch_id, Job.created_at, Job.started_at, Job.finished_at, ModelVersion.name)
            .join(ModelVersion, Job.model_version_id == ModelVersion.id)
            .where(Job.id.in_(job_ids), Job.status.in_((JobStatus.SUCCEEDED, JobStatus.FAILED)))).all()
        db.session.rollback()  # a read: ending it commits nothing (a task's job rows change in two commits)
        for row in rows:
            created, started, finished = aware(row.created_at), aware(row.started_at), aware(row.finished_at)
            metrics.job_finished(row.name, row.status, lane_name(row.batch_id, row.n), row.n,
                                 (started - created).total_seconds() if started and created else None,
                                 (finished - created).total_seconds() if finished and created else None)
    except Exception as exc:
        db.session.rollback()
        log.warning("metrics of jobs %s: %s: %s", job_ids, type(exc).__name__, exc)


_tasks_run = [0]
# a busy worker writes its status row at most this often (and at once when its loaded models change): the row
# is for a page that reloads every 10 s, and a commit per task would double a task's commits
WORKER_STATUS_EVERY = 5.0
_status_written: dict[str, Any] = {"at": None, "models": None}


def note_worker(node: str | None) -> None:
    """This pool process's row of ``worker_status`` (the admin's queue page): its loaded models. Never raises."""
    _tasks_run[0] += 1
    try:
        from app.services.dashboard import note_worker as note

        keys = loaded_models()
        now, last = time.monotonic(), _status_written["at"]
        if last is not None and now - last < WORKER_STATUS_EVERY and _status_written["models"] == keys:
            return
        _status_written.update(at=now, models=keys)
        labels = {row.id: f"{row.name} v{row.version}" for row in db.session.execute(
            select(ModelVersion.id, ModelVersion.name, ModelVersion.version).where(
                ModelVersion.id.in_([version_id for version_id, _ in keys])))} if keys else {}
        note(f"{socket.gethostname()}:{os.getpid()}", node, [labels.get(version_id, f"version id {version_id}")
                                                             for version_id, _ in keys],
             _tasks_run[0])
    except Exception as exc:
        db.session.rollback()
        log.warning("worker status: %s: %s", type(exc).__name__, exc)
