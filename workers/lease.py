"""A task's hold on the jobs it runs: the claim token of each job, renewed (``heartbeat_at``) from a thread while
the task runs, so the reconciliation tells a live task from a dead one (docs/architecture.md, "A job's states
and who moves them")."""
from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy import update

from app.core.extensions import db
from app.core.status import JobStatus
from app.core.tables import Job, utcnow

log = logging.getLogger(__name__)


class JobAborted(Exception):
    """The job was canceled or taken over while this attempt ran."""


class Lease:
    """Renews ``heartbeat_at`` from a thread while the jobs of one task run.

    It starts with the job of the task's message; :meth:`add` adds the jobs claimed to be batched with it.
    A job whose row is no longer ours (canceled, or re-queued by the reconciliation) goes to ``lost_jobs``;
    ``lost`` is set once every job is lost.
    """

    def __init__(self, job_id: str, token: str, interval: float):
        self.job_id, self.interval = job_id, interval
        self.tokens: dict[str, str] = {job_id: token}
        self.lost_jobs: set[str] = set()
        self.lost_count = 0  # jobs whose renewal found the row no longer ours (metrics: leases lost)
        self.engine = db.engine
        self.lost = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> "Lease":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

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

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.renew()
            except Exception as exc:  # a DB hiccup: try again next beat
                log.warning("job %s: lease renewal failed: %s", self.job_id, exc)

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
                    if conn.execute(self._renewal(job_id, token, values)).rowcount == 0:
                        lost.append(job_id)
        else:
            for job_id, token in live.items():
                with self.engine.begin() as conn:
                    if self.engine.dialect.name == "postgresql":
                        # a renewal lost in a crash costs nothing (the next one comes in a second): no fsync wait
                        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                    if conn.execute(self._renewal(job_id, token, values)).rowcount == 0:
                        lost.append(job_id)
        with self._lock:
            self.lost_jobs.update(lost)
            self.lost_count += len(lost)
        if not self.live():
            self.lost.set()

    @staticmethod
    def _renewal(job_id: str, token: str, values: dict[str, Any]) -> Any:
        return update(Job).where(Job.id == job_id, Job.claim_token == token, Job.status == JobStatus.RUNNING) \
            .values(heartbeat_at=utcnow(), **values)

    def check(self) -> None:
        if self.lost.is_set():
            raise JobAborted()
