"""Every state change of a job or a training run: each one conditional UPDATE, fenced by the state it leaves
and, out of ``running``, by the claim token of the attempt that holds the row, so two processes never both
make it (docs/architecture.md, "A job's states and who moves them").

The functions run in the caller's session and leave the transaction to the caller (its commit is what makes
the move, together with whatever else the caller writes: image rows, an outbox message), except the lease
renewals, which run on a connection of their own from a heartbeat thread. Each says the moves it makes with
:func:`moves`; ``tests/service/test_status.py`` checks them against :data:`app.core.status.MOVES` and that no
other module writes a state.
"""
from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import BindParameter, ColumnElement, Connection, Update, bindparam, case, or_, tuple_, update

from app.core.extensions import db, rowcount
from app.core.status import LIVE, JobStatus
from app.core.tables import Job, TrainingRun, utcnow

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED,
                                                JobStatus.FAILED, JobStatus.CANCELED)
ERROR_LIMIT = 2000  # characters of an error message kept on the row

F = TypeVar("F", bound=Callable[..., Any])
# function name -> the (from, to) moves it makes, for the tests
DECLARED: dict[str, frozenset[tuple[JobStatus, JobStatus]]] = {}


def moves(*pairs: tuple[JobStatus, JobStatus]) -> Callable[[F], F]:
    """Declare the state moves a transition makes."""
    def register(function: F) -> F:
        DECLARED[f"{function.__module__}.{function.__qualname__}"] = frozenset(pairs)
        return function
    return register


def _returning() -> bool:
    return bool(db.engine.dialect.update_returning)


# -- jobs -------------------------------------------------------------------------------------------------------
def _job_held(job_id: str, token: str) -> tuple[ColumnElement[bool], ...]:
    """The row is this attempt's: still running, under its claim token."""
    return Job.id == job_id, Job.claim_token == token, Job.status == RUNNING


@moves((QUEUED, RUNNING))
def claim_jobs(job_ids: Iterable[str], *, worker: str, worker_main: str | None) -> dict[str, str]:
    """queued -> running for this attempt, each job with its own fresh claim token; job id -> token of the
    jobs claimed (the others were not queued any more: not ours)."""
    now = utcnow()
    values = {"status": RUNNING, "attempts": Job.attempts + 1, "started_at": now, "heartbeat_at": now,
              "worker": worker, "progress": 0.0, "error": None, "worker_main": worker_main}
    offered = {job_id: str(uuid.uuid4()) for job_id in job_ids}
    if len(offered) > 1 and _returning():  # one statement for all of them
        claimed = db.session.scalars(
            update(Job).where(Job.id.in_(list(offered)), Job.status == QUEUED)
            .values(claim_token=case(offered, value=Job.id), **values).returning(Job.id)).all()
        return {job_id: offered[job_id] for job_id in claimed}
    return {job_id: token for job_id, token in offered.items()
            if rowcount(db.session.execute(_claim_one(), {"claim_job": job_id, "claim_token": token, "claim_now": now,
                                                          "claim_worker": worker, "claim_main": worker_main})) == 1}


@functools.cache
def _claim_one() -> Update:
    """One job's claim (every task's first write): built and compiled once, run with its values bound."""
    now: BindParameter[datetime] = bindparam("claim_now")
    return update(Job).where(Job.id == bindparam("claim_job"), Job.status == QUEUED).values(
        claim_token=bindparam("claim_token"), status=RUNNING, attempts=Job.attempts + 1, started_at=now,
        heartbeat_at=now, worker=bindparam("claim_worker"), progress=0.0, error=None,
        worker_main=bindparam("claim_main"))


@moves((RUNNING, RUNNING))
def renew_job(conn: Connection, job_id: str, token: str, **values: Any) -> bool:
    """The lease renewed (``heartbeat_at``, and ``values`` such as progress) on ``conn``; False when the job is
    no longer this attempt's."""
    return conn.execute(update(Job).where(*_job_held(job_id, token))
                        .values(heartbeat_at=utcnow(), **values)).rowcount == 1


@moves((RUNNING, SUCCEEDED))
def succeed_jobs(tokens: dict[str, str], now: datetime) -> set[str]:
    """running -> succeeded for each job still held under its token; the ids that moved."""
    done = {"status": SUCCEEDED, "progress": 1.0, "finished_at": now, "heartbeat_at": now}
    if len(tokens) > 1 and _returning():  # one statement for all of them
        return set(db.session.scalars(
            update(Job).where(tuple_(Job.id, Job.claim_token).in_(list(tokens.items())), Job.status == RUNNING)
            .values(**done).returning(Job.id)))
    return {job_id for job_id, token in tokens.items()
            if rowcount(db.session.execute(_succeed_one(), {"done_job": job_id, "done_token": token,
                                                            "done_now": now})) == 1}


@functools.cache
def _succeed_one() -> Update:
    """One job's success (every task's last write): built and compiled once."""
    now: BindParameter[datetime] = bindparam("done_now")
    return update(Job).where(Job.id == bindparam("done_job"), Job.claim_token == bindparam("done_token"),
                             Job.status == RUNNING).values(status=SUCCEEDED, progress=1.0, finished_at=now,
                                                           heartbeat_at=now)


@moves((RUNNING, FAILED))
def fail_job(job_id: str, token: str, message: str) -> bool:
    """running -> failed with ``message``, if still held under ``token``."""
    return rowcount(db.session.execute(update(Job).where(*_job_held(job_id, token)).values(
        status=FAILED, error=message[:ERROR_LIMIT], finished_at=utcnow()))) == 1


@moves((RUNNING, QUEUED), (RUNNING, FAILED))
def requeue_job(job_id: str, token: str, reason: str, max_attempts: int) -> JobStatus | None:
    """Back to queued (its worker could not finish it for a cause outside the job: the object store was down),
    or failed once attempted ``max_attempts`` times; the new state, None if the job was no longer held."""
    held = _job_held(job_id, token)
    if rowcount(db.session.execute(update(Job).where(*held, Job.attempts >= max_attempts).values(
            status=FAILED, finished_at=utcnow(),
            error=f"the object store was unavailable {max_attempts} times: {reason}"[:ERROR_LIMIT]))):
        return FAILED
    if rowcount(db.session.execute(update(Job).where(*held).values(
            status=QUEUED, claim_token=None, progress=0.0, enqueued_at=utcnow(),
            error=f"waiting for the object store: {reason}"[:ERROR_LIMIT]))):
        return QUEUED
    return None


@moves((QUEUED, CANCELED), (RUNNING, CANCELED))
def cancel_job(job_id: str) -> bool:
    """queued/running -> canceled; its worker, if any, notices at its next lease renewal (the token is gone)."""
    return rowcount(db.session.execute(update(Job).where(Job.id == job_id, Job.status.in_(LIVE))
                                       .values(status=CANCELED, finished_at=utcnow(), claim_token=None))) == 1


@moves((RUNNING, QUEUED))
def release_job(job_id: str, token: str | None, now: datetime, **charge: Any) -> bool:
    """running -> queued: its worker died (the reconciliation); ``charge``: ``deaths`` and ``isolated`` when
    the death is charged to the job."""
    return rowcount(db.session.execute(
        update(Job).where(Job.id == job_id, Job.status == RUNNING, Job.claim_token == token)
        .values(status=QUEUED, enqueued_at=now, claim_token=None, progress=0.0, **charge))) == 1


@moves((RUNNING, FAILED))
def give_up_job(job_id: str, token: str | None, now: datetime, deaths: int, error: str) -> bool:
    """running -> failed: its worker died too often while it ran alone (the reconciliation)."""
    return rowcount(db.session.execute(
        update(Job).where(Job.id == job_id, Job.status == RUNNING, Job.claim_token == token)
        .values(status=FAILED, finished_at=now, claim_token=None, deaths=deaths, error=error[:ERROR_LIMIT]))) == 1


@moves()
def stamp_resent(job_ids: list[str], now: datetime, *still: ColumnElement[bool]) -> list[str]:
    """Queued jobs whose message is sent again get ``enqueued_at = now``, fenced by ``still`` (the staleness
    that chose them): two reconcilers at once send each job once. The ids stamped."""
    where = (Job.id.in_(job_ids), Job.status == QUEUED, *still)
    if _returning():
        return list(db.session.scalars(update(Job).where(*where).values(enqueued_at=now).returning(Job.id)))
    db.session.execute(update(Job).where(*where).values(enqueued_at=now))
    return job_ids


# -- training runs ----------------------------------------------------------------------------------------------
def _run_held(run_id: str, token: str) -> tuple[ColumnElement[bool], ...]:
    return TrainingRun.id == run_id, TrainingRun.claim_token == token, TrainingRun.status == RUNNING


@moves((QUEUED, RUNNING), (RUNNING, RUNNING))
def claim_run(run_id: str, *, worker: str, lease_cutoff: datetime) -> str | None:
    """The run for this attempt: queued, or running under a lease older than ``lease_cutoff`` (its worker
    died); the new claim token, or None when it is not ours."""
    token = str(uuid.uuid4())
    now = utcnow()
    expired = or_(TrainingRun.heartbeat_at.is_(None), TrainingRun.heartbeat_at < lease_cutoff)
    res = db.session.execute(update(TrainingRun).where(
        TrainingRun.id == run_id, TrainingRun.cancel_requested.is_(False),
        or_(TrainingRun.status == QUEUED, (TrainingRun.status == RUNNING) & expired))
        .values(status=RUNNING, claim_token=token, attempts=TrainingRun.attempts + 1, heartbeat_at=now,
                started_at=db.func.coalesce(TrainingRun.started_at, now), phase="starting", error=None,
                worker=worker)
        # no in-Python evaluation of the WHERE against loaded rows: SQLite hands back naive datetimes
        .execution_options(synchronize_session=False))
    return token if rowcount(res) == 1 else None


@moves((RUNNING, RUNNING))
def renew_run(conn: Connection, run_id: str, token: str, **values: Any) -> tuple[bool, bool]:
    """The run's lease renewed (with ``values``: progress, elapsed time) on ``conn``; (still ours, cancel
    requested)."""
    row = conn.execute(update(TrainingRun).where(*_run_held(run_id, token))
                       .values(heartbeat_at=utcnow(), **values).returning(TrainingRun.cancel_requested)).first()
    return (False, False) if row is None else (True, bool(row[0]))


@moves((RUNNING, SUCCEEDED), (RUNNING, FAILED), (RUNNING, CANCELED))
def finish_run(run_id: str, token: str, status: JobStatus, **values: Any) -> bool:
    """running -> ``status`` (a final state) with ``values``, if still held under ``token``."""
    if not status.final:
        raise ValueError(f"a run finishes in a final state, not {status}")
    now = utcnow()
    values.setdefault("eta_seconds", None)
    return rowcount(db.session.execute(update(TrainingRun).where(*_run_held(run_id, token))
                                       .values(status=status, finished_at=now, heartbeat_at=now, **values))) == 1


@moves()
def link_run_version(run_id: str, model_version_id: int) -> None:
    """The model version a succeeded run registered."""
    db.session.execute(update(TrainingRun).where(TrainingRun.id == run_id, TrainingRun.status == SUCCEEDED)
                       .values(model_version_id=model_version_id))


@moves((QUEUED, CANCELED))
def cancel_run(run_id: str) -> JobStatus | None:
    """A queued run is canceled at once; a running one is asked to stop (``cancel_requested``: its worker
    saves a checkpoint and finishes it as canceled within a heartbeat). CANCELED, RUNNING (asked), or None
    when it had ended already."""
    if rowcount(db.session.execute(update(TrainingRun).where(TrainingRun.id == run_id, TrainingRun.status == QUEUED)
                                   .values(status=CANCELED, finished_at=utcnow(), phase=CANCELED,
                                           claim_token=None, eta_seconds=None))):
        return CANCELED
    if rowcount(db.session.execute(update(TrainingRun).where(TrainingRun.id == run_id, TrainingRun.status == RUNNING)
                                   .values(cancel_requested=True))):
        return RUNNING
    return None


@moves((RUNNING, QUEUED), (RUNNING, FAILED), (RUNNING, CANCELED))
def release_run(run_id: str, now: datetime, lease_cutoff: datetime, status: JobStatus, **values: Any) -> bool:
    """A run whose lease is older than ``lease_cutoff`` (its worker died, the reconciliation): queued again to
    resume, failed (abandoned too often), or canceled (it was asked to stop)."""
    if status not in (QUEUED, FAILED, CANCELED):
        raise ValueError(f"a released run is queued, failed or canceled, not {status}")
    stale = or_(TrainingRun.heartbeat_at.is_(None), TrainingRun.heartbeat_at < lease_cutoff)
    values = {**values, "status": status, "claim_token": None}
    if status == QUEUED:
        values["enqueued_at"] = now
    else:
        values.update(finished_at=now, eta_seconds=None)
    return rowcount(db.session.execute(update(TrainingRun).where(TrainingRun.id == run_id,
                                                                 TrainingRun.status == RUNNING, stale)
                                       .values(**values)
                                       .execution_options(synchronize_session=False))) == 1


@moves()
def stamp_resent_run(run_id: str, now: datetime, queued_cutoff: datetime) -> bool:
    """A queued run whose message is older than ``queued_cutoff`` gets ``enqueued_at = now`` before it is sent
    again, fenced by that staleness: two reconcilers at once send it once."""
    stale = or_(TrainingRun.enqueued_at.is_(None), TrainingRun.enqueued_at < queued_cutoff)
    return rowcount(db.session.execute(update(TrainingRun).where(TrainingRun.id == run_id,
                                                                 TrainingRun.status == QUEUED, stale)
                                       .values(enqueued_at=now)
                                       .execution_options(synchronize_session=False))) == 1
