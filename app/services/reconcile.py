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
is the likely cause of its pool process's death and is charged (``deaths``); it is failed once charged
``MAX_ATTEMPTS`` times. Only a pool process that died while its worker's main process lived on is charged: a
worker killed whole (a deploy, the OOM killer taking the main process too, a lost machine) says nothing about
its job, and a healthy job running through three such deploys must not be failed as poison. Each main process
renews its row of ``worker_nodes`` every RECONCILE_INTERVAL and each claim records it (``worker_main``), so the
main is dead when its process on this machine is gone or its row is older than LEASE_TIMEOUT, and alive when it
reconciles the job itself or its row is a lease newer than the job's last heartbeat; until one is known the
job waits a reconciliation or two. Batch-mates are re-queued without a charge, and batched again: most deaths
are not a job's doing (a deploy, the OOM killer, a lost machine), and the batch re-runs as one task. A job
whose batch dies a second time is ``isolated``: it runs alone from then on, so a poison job is charged by
killing its worker alone, and the others finish uncharged.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import delete, or_, select, update

from app.core import metrics, transitions
from app.core.extensions import db, rowcount
from app.core.tables import Job, WorkerNode, aware, utcnow
from app.services import outbox
from app.services.idempotency import forget_expired
from app.core.fastpath.job_events import announce_finished
from app.services.jobs import stage_messages
from app.services.trainings import reconcile_runs
from app.core.status import JobStatus

_last_expiry = [0.0]  # monotonic time of the last deletion of expired idempotency keys (once a minute)


# -- worker main processes --------------------------------------------------------------------------
_this_main: dict[str, Any] = {"id": None, "pool": False}
NODE_FORGET_AFTER = 24 * 3600  # a worker_nodes row not renewed for this long is deleted


def become_main_process() -> str:
    """A worker's main process, before it forks its pool: a new id for this start, which the pool processes
    inherit and record on the jobs they claim (``worker_main``)."""
    _this_main.update(id=uuid.uuid4().hex, pool=False)
    return str(_this_main["id"])


def become_pool_process() -> None:
    """A pool process forked by a worker's main process (Celery's ``worker_process_init``)."""
    _this_main["pool"] = True


def main_of_this_process() -> str | None:
    """The id a claim records: its main process's, in a pool process only (a worker without pool processes,
    such as ``--pool solo``, dies whole with any job: its deaths are charged as before)."""
    return _this_main["id"] if _this_main["pool"] else None


def beat_main_process(now: datetime | None = None) -> None:
    """Renew this main process's row of ``worker_nodes`` (insert it the first time) and commit."""
    main_id = _this_main["id"]
    if main_id is None or _this_main["pool"]:
        return
    now = now or utcnow()
    if rowcount(db.session.execute(update(WorkerNode).where(WorkerNode.id == main_id).values(seen_at=now))) == 0:
        db.session.add(WorkerNode(id=main_id, host=socket.gethostname(), pid=os.getpid(), started_at=now,
                                  seen_at=now))
    db.session.commit()


def whole_worker_died(main_id: str | None, beat: datetime | None, node: Any, now: datetime, host: str,
                      local: bool, lease: timedelta) -> bool | None:
    """Whether the main process of the dead job's worker died too (True: not the job's doing), lived on
    (False: the pool process died alone), or is not known yet (None: decide at a later reconciliation).
    ``node`` is the main's ``worker_nodes`` row (None: it never wrote one, an older worker: charged)."""
    if main_id is None or main_id == _this_main["id"]:  # unknown, or this very process: alive
        return False
    if node is None:
        return False
    if local and node.host == host and process_gone(int(node.pid)):
        return True
    seen = aware(node.seen_at)
    if seen < now - lease:
        return True
    if beat is not None and seen > beat + lease:  # it outlived the job's lease by its own beats
        return False
    return None


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
    lease_cutoff = now - timedelta(seconds=cfg["LEASE_TIMEOUT"])
    local = cfg["LOCAL_DEATH_CHECK"]
    host = socket.gethostname()
    max_deaths = cfg["MAX_ATTEMPTS"]
    counts = {"requeued_running": 0, "failed_running": 0, "requeued_uncharged": 0, "requeued_worker_lost": 0}
    running = db.session.execute(select(Job.id, Job.worker, Job.heartbeat_at, Job.claim_token, Job.deaths,
                                        Job.attempts, Job.worker_main).where(Job.status == JobStatus.RUNNING)).all()
    db.session.commit()
    by_worker: dict[str | None, list] = defaultdict(list)
    for row in running:
        by_worker[row.worker].append(row)
    dead: dict[str | None, list] = {}
    for worker, rows in by_worker.items():
        gone = local and local_process_gone(worker, host)
        if any(gone or row.heartbeat_at is None or aware(row.heartbeat_at) < lease_cutoff for row in rows):
            dead[worker] = rows
    mains = {row.worker_main for rows in dead.values() for row in rows} - {None}
    nodes = {node.id: node for node in db.session.execute(
        select(WorkerNode.id, WorkerNode.host, WorkerNode.pid, WorkerNode.seen_at)
        .where(WorkerNode.id.in_(mains)))} if mains else {}
    lease = timedelta(seconds=cfg["LEASE_TIMEOUT"])
    to_send: list[str] = []
    failed: list[str] = []
    for worker, rows in dead.items():
        gone = local and local_process_gone(worker, host)
        for row in rows:
            beat = aware(row.heartbeat_at)
            if not (gone or beat is None or beat < lease_cutoff):
                continue
            whole = whole_worker_died(row.worker_main, beat, nodes.get(row.worker_main), now, host, local, lease)
            if whole is None:
                continue  # its main process's fate decides: a reconciliation or two later
            if whole:  # the worker was killed whole: no charge, whatever ran with it
                if transitions.release_job(row.id, row.claim_token, now):
                    counts["requeued_worker_lost"] += 1
                    to_send.append(row.id)
                continue
            alone = len(rows) == 1  # the dead process decoded this job only: it is the likely cause
            deaths = row.deaths + (1 if alone else 0)
            # batched: run alone next time only if it was in a dying batch before (every claim but the first
            # followed a death, and the charged ones are counted): a one-off death's batch runs again as one
            # task, and a poison job is isolated at its second death
            isolate = alone or row.attempts - 1 - row.deaths >= 1
            if deaths >= max_deaths:
                if transitions.give_up_job(
                        row.id, row.claim_token, now, deaths,
                        f"the job's worker died {deaths} times while it ran alone (killed, out of memory, or "
                        f"past the hard time limit of {cfg['TASK_TIME_LIMIT']} s): the job is likely what "
                        f"kills it; giving up"):
                    counts["failed_running"] += 1
                    failed.append(row.id)
            elif transitions.release_job(row.id, row.claim_token, now, deaths=deaths, isolated=isolate):
                counts["requeued_running" if alone else "requeued_uncharged"] += 1
                to_send.append(row.id)
    return counts, to_send, failed


def resend_queued(now: datetime, older_than: float | None) -> list[str]:
    """Stage a new message (in the outbox) for every queued job whose last message is older than
    ``older_than`` seconds (None: all of them); their ids."""
    cond = [Job.status == JobStatus.QUEUED]
    if older_than is not None:
        cutoff = now - timedelta(seconds=older_than)
        cond.append(or_(Job.enqueued_at.is_(None), Job.enqueued_at < cutoff))
    ids = list(db.session.scalars(select(Job.id).where(*cond)))
    return transitions.stamp_resent(ids, now, *cond[1:]) if ids else []


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
    resent = resend_queued(now, cfg["QUEUED_STALE_AFTER"])
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
        db.session.execute(delete(WorkerNode).where(WorkerNode.seen_at < now - timedelta(seconds=NODE_FORGET_AFTER)))
        db.session.commit()
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
