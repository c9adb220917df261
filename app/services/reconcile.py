"""The reconciliation: repairs what a lost message or a dead worker leaves behind, for jobs and training runs.
Every worker runs it on a timer (:mod:`workers.bootsteps`), every ``RECONCILE_INTERVAL`` (1 s by default).

A worker's death is found two ways (measured in docs/benchmarks.md, "Recovery"):

* **its process is gone**: a running job's ``worker`` column names the pool process that claimed it
  (``host:pid``). A job of a process of this machine that no longer exists (or is a zombie) was abandoned:
  it is re-queued at once, without waiting for its lease (``LOCAL_DEATH_CHECK``). A pool process killed
  (SIGKILL, out of memory, the hard time limit) is noticed by its own worker's next reconciliation, a whole
  worker killed by any other worker on the machine.
* **its lease expired**: ``heartbeat_at`` older than ``LEASE_TIMEOUT`` (4 s; renewed every
  ``HEARTBEAT_INTERVAL``, 1 s): a worker on another machine, or a process that hangs.

Attempts are charged fairly: the jobs of one dead process are the batch it was decoding. A job that ran alone
is the likely cause of its worker's death and is charged (``deaths``); it is failed once charged
``MAX_ATTEMPTS`` times. Batch-mates are re-queued without a charge, and batched again: most deaths are not a
job's doing (a deploy, the OOM killer, a lost machine), and the batch re-runs as one task. A job whose batch
dies a second time is ``isolated``: it runs alone from then on, so a poison job is charged by killing its
worker alone, and the others finish uncharged.
"""

from __future__ import annotations

import os
import socket
import time
from collections import defaultdict
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import or_, select, update

from app.core import metrics
from app.core.extensions import db
from app.core.models import Job, utcnow
from app.services import outbox
from app.services.idempotency import forget_expired
from app.services.job_events import announce_finished
from app.services.jobs import stage_messages
from app.services.trainings import reconcile_runs

_last_expiry = [0.0]  # monotonic time of the last deletion of expired idempotency keys (once a minute)


def process_gone(pid: int) -> bool:
    """True when no process ``pid`` exists on this machine or it is a zombie (exited, not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: alive
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False


def local_process_gone(worker: str | None, host: str) -> bool:
    """A ``host:pid`` worker of this machine whose process is gone."""
    if not worker or ":" not in worker:
        return False
    name, _, pid = worker.rpartition(":")
    return name == host and pid.isdigit() and process_gone(int(pid))


def release_abandoned(now: datetime) -> tuple[dict[str, int], list[str], list[str]]:
    """Re-queue (or fail) the running jobs whose worker died; (counts, ids to send, ids failed)."""
    cfg = current_app.config
    lease_cutoff = now - timedelta(seconds=float(cfg["LEASE_TIMEOUT"]))
    local = bool(cfg["LOCAL_DEATH_CHECK"])
    host = socket.gethostname()
    max_deaths = int(cfg["MAX_ATTEMPTS"])
    counts = {"requeued_running": 0, "failed_running": 0, "requeued_uncharged": 0}
    running = db.session.execute(select(Job.id, Job.worker, Job.heartbeat_at, Job.claim_token, Job.deaths,
                                        Job.attempts).where(Job.status == "running")).all()
    db.session.commit()
    by_worker: dict[str | None, list] = defaultdict(list)
    for row in running:
        by_worker[row.worker].append(row)
    to_send: list[str] = []
    failed: list[str] = []
    for worker, rows in by_worker.items():
        gone = local and local_process_gone(worker, host)
        for row in rows:
            beat = row.heartbeat_at
            if beat is not None and beat.tzinfo is None:
                beat = beat.replace(tzinfo=now.tzinfo)
            if not (gone or beat is None or beat < lease_cutoff):
                continue
            alone = len(rows) == 1  # the dead process decoded this job only: it is the likely cause
            deaths = row.deaths + (1 if alone else 0)
            # batched: run alone next time only if it was in a dying batch before (every claim but the first
            # followed a death, and the charged ones are counted): a one-off death's batch runs again as one
            # task, and a poison job is isolated at its second death
            isolate = alone or row.attempts - 1 - row.deaths >= 1
            cond = (Job.id == row.id, Job.status == "running", Job.claim_token == row.claim_token)
            if deaths >= max_deaths:
                result = db.session.execute(update(Job).where(*cond).values(
                    status="failed", finished_at=now, claim_token=None, deaths=deaths,
                    error=f"the job's worker died {deaths} times while it ran alone (killed, out of memory, or "
                          f"past the hard time limit of {cfg['TASK_TIME_LIMIT']} s): the job is likely what "
                          f"kills it; giving up"))
                if result.rowcount:
                    counts["failed_running"] += 1
                    failed.append(row.id)
            else:
                result = db.session.execute(update(Job).where(*cond).values(
                    status="queued", enqueued_at=now, claim_token=None, progress=0.0, deaths=deaths,
                    isolated=isolate))
                if result.rowcount:
                    counts["requeued_running" if alone else "requeued_uncharged"] += 1
                    to_send.append(row.id)
    return counts, to_send, failed


def resend_queued(now: datetime, older_than: float | None) -> list[str]:
    """Stage a new message (in the outbox) for every queued job whose last message is older than
    ``older_than`` seconds (None: all of them); their ids."""
    cond = [Job.status == "queued"]
    if older_than is not None:
        cutoff = now - timedelta(seconds=older_than)
        cond.append(or_(Job.enqueued_at.is_(None), Job.enqueued_at < cutoff))
    ids = list(db.session.scalars(select(Job.id).where(*cond)))
    if ids:
        # conditional: two reconcilers at once send each job once (the second finds enqueued_at moved)
        sent = db.session.scalars(update(Job).where(Job.id.in_(ids), *cond).values(enqueued_at=now)
                                  .returning(Job.id)).all() if db.engine.dialect.update_returning else ids
        ids = list(sent)
    return ids


def reconcile(now: datetime | None = None) -> dict[str, int]:
    """Repair what a lost message or a dead worker leaves behind; safe to run from many workers at once.

    * ``running`` jobs whose worker died (:func:`release_abandoned`): re-queued and sent again, or failed.
    * ``queued`` jobs whose last message is older than QUEUED_STALE_AFTER: the message may have been lost (a
      broker restarted without persistence while no worker was connected). They are sent again. A duplicate is
      harmless: the task claims the row with a conditional update, so only one delivery does the work.

    Every repair is a conditional UPDATE, committed with its message (the outbox) in one transaction.
    """
    cfg = current_app.config
    now = now or utcnow()
    counts, to_send, failed = release_abandoned(now)
    resent = resend_queued(now, float(cfg["QUEUED_STALE_AFTER"]))
    counts["resent_queued"] = len(resent)
    messages = stage_messages([*to_send, *resent])  # each on its lane and queue
    db.session.commit()
    if messages:
        outbox.publish_pending(messages)
    if failed:
        announce_finished(failed)
    if time.monotonic() - _last_expiry[0] > 60:
        _last_expiry[0] = time.monotonic()
        forget_expired(now)
    counts.update(reconcile_runs(now))
    metrics.recovered(counts)  # /metrics: priorforge_jobs_recovered_total{action}
    return counts


def after_broker_outage() -> int:
    """A worker's connection to the broker came back: the broker may have restarted without its messages
    (Redis without persistence), so every queued job is sent again now rather than after
    QUEUED_STALE_AFTER. Returns how many."""
    now = utcnow()
    # all of them: a message published just before the broker died is lost too (a threshold of even a second
    # left such jobs to QUEUED_STALE_AFTER, measured at 114 s); another worker reconnecting at the same time
    # sends them once more, and the claim absorbs it
    ids = resend_queued(now, None)
    messages = stage_messages(ids)
    db.session.commit()
    if messages:
        outbox.publish_pending(messages)
    metrics.recovered({"resent_after_broker_outage": len(ids)})
    return len(ids)
