"""The admin's queue page (``/admin/queue``): each lane's depth and oldest job, the generation workers'
pool processes with their loaded models and current jobs, recent failures, and the last hour's throughput and
latency in 5-minute buckets. Everything is read from the database, so the page is the same from any web
process; workers write their own row of ``worker_status`` after each task (:func:`note_worker`).
"""

from __future__ import annotations

import socket
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from app.core.extensions import db, rowcount
from app.core.tables import Job, ModelVersion, WorkerStatus, aware, iso, utcnow
from app.services.metrics import queue_state
from app.services.reconcile import local_process_gone
from app.core.status import JobStatus

BUCKET_SECONDS = 300  # the charts' bars: 12 of 5 minutes
WINDOW_SECONDS = 3600
WORKER_FORGET_AFTER = 24 * 3600  # a worker not seen for this long is no longer listed
MAX_ROWS = 50_000  # finished jobs read for the charts at most (the newest)


def note_worker(worker: str, node: str | None, models: list[str], tasks: int) -> None:
    """Upsert a pool process's row (one UPDATE, an INSERT the first time) and commit."""
    now = utcnow()
    values = {"node": node, "models": models, "tasks": tasks, "seen_at": now}
    if rowcount(db.session.execute(update(WorkerStatus).where(WorkerStatus.worker == worker).values(**values))) == 0:
        db.session.add(WorkerStatus(worker=worker, started_at=now, **values))
    try:
        db.session.commit()
    except IntegrityError:  # two first tasks at once cannot happen in one process; a pid reused: update it
        db.session.rollback()


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def dashboard(now: datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    host = socket.gethostname()
    lanes = queue_state(now)

    running = db.session.execute(select(Job.id, Job.worker, Job.n, Job.progress, Job.started_at, ModelVersion.name)
                                 .join(ModelVersion, Job.model_version_id == ModelVersion.id)
                                 .where(Job.status == JobStatus.RUNNING)).all()
    jobs_of: dict[str | None, list[dict[str, Any]]] = {}
    for row in running:
        jobs_of.setdefault(row.worker, []).append({"id": row.id, "model": row.name, "n": row.n,
                                                   "progress": round(float(row.progress or 0), 2),
                                                   "started_at": iso(row.started_at)})
    workers = []
    for w in db.session.scalars(select(WorkerStatus).where(
            WorkerStatus.seen_at >= now - timedelta(seconds=WORKER_FORGET_AFTER)).order_by(WorkerStatus.worker)):
        gone = local_process_gone(w.worker, host)
        workers.append({"worker": w.worker, "node": w.node, "models": list(w.models or []), "tasks": w.tasks,
                        "seen_at": iso(w.seen_at), "seen_ago_s": round((now - aware(w.seen_at)).total_seconds()),
                        "state": "gone" if gone else ("busy" if jobs_of.get(w.worker) else "idle"),
                        "jobs": jobs_of.pop(w.worker, [])})
    for worker, jobs in jobs_of.items():  # running jobs of a process that has not finished a task yet
        workers.append({"worker": worker, "node": None, "models": [], "tasks": 0, "seen_at": None,
                        "seen_ago_s": None, "state": "busy", "jobs": jobs})

    failures = [{"id": row.id, "model": row.name, "error": row.error, "finished_at": iso(row.finished_at),
                 "attempts": row.attempts}
                for row in db.session.execute(
                    select(Job.id, Job.error, Job.finished_at, Job.attempts, ModelVersion.name)
                    .join(ModelVersion, Job.model_version_id == ModelVersion.id)
                    .where(Job.status == JobStatus.FAILED).order_by(Job.finished_at.desc()).limit(10))]

    start = now - timedelta(seconds=WINDOW_SECONDS)
    buckets: list[dict[str, Any]] = [
        {"start": iso(start + timedelta(seconds=i * BUCKET_SECONDS)), "jobs": 0, "images": 0, "failed": 0,
         "latencies": []} for i in range(WINDOW_SECONDS // BUCKET_SECONDS)]
    for status, n, created, finished in db.session.execute(
            select(Job.status, Job.n, Job.created_at, Job.finished_at)
            .where(Job.finished_at >= start, Job.status.in_((JobStatus.SUCCEEDED, JobStatus.FAILED)))
            .order_by(Job.finished_at.desc()).limit(MAX_ROWS)):
        if finished is None or created is None:  # the query asks for finished jobs; the columns allow NULL
            continue
        finished, created = aware(finished), aware(created)
        index = min(len(buckets) - 1, max(0, int((finished - start).total_seconds() // BUCKET_SECONDS)))
        bucket = buckets[index]
        if status == JobStatus.FAILED:
            bucket["failed"] += 1
            continue
        bucket["jobs"] += 1
        bucket["images"] += n
        bucket["latencies"].append((finished - created).total_seconds())
    for bucket in buckets:
        latencies = bucket.pop("latencies")
        bucket["p50_s"] = _round(_percentile(latencies, 0.5))
        bucket["p95_s"] = _round(_percentile(latencies, 0.95))
    db.session.commit()
    return {"now": iso(now), "lanes": lanes, "workers": workers, "failures": failures, "hour": buckets,
            "totals": {"jobs": sum(b["jobs"] for b in buckets), "images": sum(b["images"] for b in buckets),
                       "failed": sum(b["failed"] for b in buckets)}}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def bar_chart(values: list[float | None], *, width: int = 360, height: int = 80) -> dict[str, Any]:
    """Bars of an inline SVG (the template draws them with presentation attributes: no style, no script, so
    the page stays under the site's Content-Security-Policy)."""
    numbers = [v or 0.0 for v in values]
    top = max(numbers) if numbers and max(numbers) > 0 else 1.0
    slot = width / max(1, len(numbers))
    bars = []
    for i, (value, raw) in enumerate(zip(numbers, values)):
        h = round((value / top) * (height - 14), 1)
        bars.append({"x": round(i * slot + 1, 1), "y": round(height - h, 1), "w": round(slot - 2, 1), "h": h,
                     "value": raw})
    return {"width": width, "height": height, "bars": bars, "max": top}
