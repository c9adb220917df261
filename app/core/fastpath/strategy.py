"""The generation task's Celery strategy: messages of jobs that are no longer queued are dropped in the
worker's main process, before they reach the pool.

Every job has its own message, but under load most jobs are decoded as companions of another job's task
(micro-batching), so by the time their own message arrives the job has succeeded or is running: the
message is a no-op. Celery would still hand each one to a pool process and back (pickling, a pipe round
trip, the task's tracing) before acknowledging it. Measured with ``bench/service_throughput.py`` at K = 32
clients of 1-image jobs, those no-ops took about two thirds of the worker's wall time (~9 ms each, most of
it between tasks, not in them). Here the main process reads the job's status with one indexed SELECT and
acknowledges the message at once when the job is not queued.

A message is only dropped when the row says the job is settled or taken (``running``: its worker holds the
lease, and the reconciliation re-sends it if that worker dies). A missing row goes to the pool as before,
which logs and drops it; so does every message when the database cannot be read here, so a database hiccup
never loses a job.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from celery.worker.strategy import default as default_strategy
from sqlalchemy import bindparam, select
from app.core import fastpath
from app.core.status import JobStatus

log = logging.getLogger(__name__)


def job_id_of(message: Any) -> str | None:
    """The job id argument of a ``generate_images`` message (protocol 2: body = [args, kwargs, embed])."""
    try:
        args = message.decode()[0]
        return str(args[0]) if args else None
    except Exception:  # an unexpected body: the pool's handling reports it
        return None


def skip_settled_jobs(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Callable[..., Any]:
    """A strategy (``Task.Strategy``) wrapping Celery's default one."""
    handle = default_strategy(task, app, consumer, **kwargs)
    flask_app = app.flask_app
    if not fastpath.enabled(flask_app.config):  # FAST_PATHS off: every message goes to the pool
        return handle
    connection_errors = consumer.connection_errors

    from app.core.extensions import db
    from app.core.tables import Job

    statement = select(Job.status).where(Job.id == bindparam("job_id"))

    def status_of(job_id: str) -> str | None:
        with flask_app.app_context():
            with db.engine.connect() as conn:
                status = conn.execute(statement, {"job_id": job_id}).scalar()
                conn.commit()  # not the close's rollback, which would drop psycopg's prepared statements
                return status

    def on_message(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> Any:
        job_id = job_id_of(message)
        if job_id is not None:
            try:
                status = status_of(job_id)
            except Exception as exc:  # the database is unreachable from here: let the task deal with it
                log.warning("job %s: could not read its status before the pool (%s)", job_id, exc)
                status = None
            if status is not None and status != JobStatus.QUEUED:
                ack(log, connection_errors)
                return None
        return handle(message, body, ack, reject, callbacks, **kw)

    return on_message
