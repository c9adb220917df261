"""A task's hold on what it runs: the claim token of each job (:class:`Lease`) or of a training run
(:class:`RunLease`), renewed (``heartbeat_at``) by one :class:`Heartbeat` thread while the task runs, so the
reconciliation tells a live task from a dead one (docs/architecture.md, "A job's states and who moves them")."""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import datetime
from typing import Any, Self

from flask import current_app

from app.core import transitions
from app.core.extensions import db
from app.core.tables import utcnow
from app.services.reconcile import main_of_this_process

log = logging.getLogger(__name__)


class JobAborted(Exception):
    """The job was canceled or taken over while this attempt ran."""


class Heartbeat:
    """A thread that calls :meth:`beat` every ``interval`` seconds while the ``with`` block runs; a failed beat
    (a database hiccup) is logged and the next one tries again."""

    def __init__(self, name: str, interval: float):
        self.name, self.interval = name, interval
        self.engine = db.engine
        self.lost = threading.Event()  # set once nothing renewed is ours any more
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception as exc:  # a DB hiccup: try again next beat
                log.warning("%s: lease renewal failed: %s", self.name, exc)

    def beat(self) -> None:
        raise NotImplementedError


class Lease(Heartbeat):
    """Renews ``heartbeat_at`` from a thread while the jobs of one task run.

    It starts with the job of the task's message; :meth:`add` adds the jobs claimed to be batched with it.
    A job whose row is no longer ours (canceled, or re-queued by the reconciliation) goes to ``lost_jobs``;
    ``lost`` is set once every job is lost.
    """

    def __init__(self, job_id: str, token: str, interval: float):
        super().__init__(f"job {job_id}", interval)
        self.job_id = job_id
        self.tokens: dict[str, str] = {job_id: token}
        self.lost_jobs: set[str] = set()
        self.lost_count = 0  # jobs whose renewal found the row no longer ours (metrics: leases lost)
        # /metrics without reading the rows back: when the task's claims were made, and the jobs that succeeded
        # (job id -> (snapshot, finished_at), set by the finishing commit)
        self.claimed_at = utcnow()
        self.succeeded: dict[str, tuple[Any, datetime]] = {}
        self._lock = threading.Lock()

    def add(self, job_id: str, token: str) -> None:
        with self._lock:
            self.tokens[job_id] = token

    def drop(self, job_id: str) -> None:
        """The job is finished (or lost): the lease stops renewing it."""
        with self._lock:
            self.lost_jobs.add(job_id)

    def live(self) -> dict[str, str]:
        """job id -> claim token of the jobs still ours."""
        with self._lock:
            return {job_id: token for job_id, token in self.tokens.items() if job_id not in self.lost_jobs}

    def beat(self) -> None:
        self.renew()

    def renew(self, *, one_transaction: bool = False, **values: Any) -> None:
        """Renew every live job (and set ``values``); a job whose row is no longer ours is lost.

        The heartbeat thread renews each job in its own transaction: it never holds one job's row lock while
        waiting for another's, so it cannot deadlock with the task's transactions, which lock several job
        rows at once. The task's own progress update (``one_transaction``) renews them all with one commit."""
        lost = []
        live = self.live()
        if one_transaction:
            with self.engine.begin() as conn:
                for job_id, token in live.items():
                    if not transitions.renew_job(conn, job_id, token, **values):
                        lost.append(job_id)
        else:
            for job_id, token in live.items():
                with self.engine.begin() as conn:
                    if self.engine.dialect.name == "postgresql":
                        # a renewal lost in a crash costs nothing (the next one comes in a second): no fsync wait
                        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                    if not transitions.renew_job(conn, job_id, token, **values):
                        lost.append(job_id)
        with self._lock:
            self.lost_jobs.update(lost)
            self.lost_count += len(lost)
        if not self.live():
            self.lost.set()

    def check(self) -> None:
        if self.lost.is_set():
            raise JobAborted()


class RunLease(Heartbeat):
    """Renews the run's ``heartbeat_at`` from a thread and watches for a cancel request or a lost claim.

    Once :meth:`start_clock` is called, every renewal also writes the run's elapsed time (the earlier attempts'
    and this one's wall time), so it keeps moving while nothing else reports: loading the data, saving a
    checkpoint, the evaluation."""

    def __init__(self, run_id: str, token: str, interval: float):
        super().__init__(f"training run {run_id}", interval)
        self.run_id, self.token = run_id, token
        self.cancel = threading.Event()
        self._clock: tuple[float, float] | None = None  # (elapsed before this attempt, monotonic start)

    def start_clock(self, elapsed_before: float) -> None:
        self._clock = (float(elapsed_before), time.monotonic())

    def elapsed(self) -> float | None:
        """The run's elapsed wall time (None before :meth:`start_clock`)."""
        if self._clock is None:
            return None
        return self._clock[0] + time.monotonic() - self._clock[1]

    def beat(self) -> None:
        self.write()  # with the elapsed time

    def write(self, **values: Any) -> None:
        """Renew the lease (and set ``values``, and the elapsed time) if the run is still ours; notice a cancel
        request."""
        elapsed = self.elapsed()
        if elapsed is not None:
            values.setdefault("elapsed_seconds", elapsed)
        self.store(values)

    def store(self, values: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            ours, cancel = transitions.renew_run(conn, self.run_id, self.token, **values)
        if not ours:
            self.lost.set()
        elif cancel:
            self.cancel.set()


# -- claiming and giving back, each in its own transaction ----------------------------------------------
def commit_without_flush_wait() -> None:
    """Commit a generation task's claim or success without waiting for PostgreSQL to flush it to disk (an
    fsync, twice per task: 0.17 ms at rest on the 2-core benchmark machine, 3.8 ms with its disk busy;
    bench/commit_flush.py). Lost in a database crash (up to
    three times wal_writer_delay, 0.6 s by default), such a commit is redone, never lost: a lost claim leaves
    the job queued, and the reconciliation sends it again; a lost success leaves it running under a lease
    that nobody renews, so it is queued again and decoded from its seed to the same images. The web's job
    INSERT, failures and training runs keep waiting for the flush."""
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.connection().exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
    db.session.commit()


def claim_many(job_ids: list[str], *, commit: bool = True) -> dict[str, str]:
    """queued -> running for this attempt (:func:`app.core.transitions.claim_jobs`), in one transaction (left
    open with ``commit=False``); job id -> claim token of the jobs claimed."""
    try:
        # worker_main: a death of this pool process is charged to its jobs only if the main process lived on
        tokens = transitions.claim_jobs(job_ids, worker=f"{socket.gethostname()}:{os.getpid()}",
                                        worker_main=main_of_this_process())
        if commit:
            commit_without_flush_wait()
    except BaseException:
        db.session.rollback()
        raise
    return tokens


def claim(job_id: str) -> str | None:
    """queued -> running for this attempt; returns the claim token, or None when the job is not ours."""
    return claim_many([job_id]).get(job_id)


def finish_failed(job_id: str, token: str, message: str) -> None:
    db.session.rollback()
    transitions.fail_job(job_id, token, message)
    db.session.commit()


def requeue(job_id: str, token: str, reason: str) -> None:
    """queued again (fenced by the claim token): the reconciliation re-sends it after QUEUED_STALE_AFTER, a
    back-off while the store is down; failed once it has been attempted MAX_ATTEMPTS times."""
    db.session.rollback()
    transitions.requeue_job(job_id, token, reason, current_app.config["MAX_ATTEMPTS"])
    db.session.commit()
