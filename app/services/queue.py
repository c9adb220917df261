"""Sending task messages by name (:mod:`app.core.queue` has the names): the web process never imports the
tasks, so it never imports the model code they run."""

from __future__ import annotations

import logging
from typing import Iterable

from flask import current_app
from kombu.utils.uuid import uuid
from sqlalchemy import select

from app.core.extensions import db
from app.core.tables import Job, ModelVersion
from app.core.queue import GENERATE_TASK

log = logging.getLogger(__name__)


def job_queues(job_ids: Iterable[str], lane: str | None = None) -> dict[str, list[str]]:
    """Queue -> job ids. ``lane`` is None for the interactive lane (``GENERATE_QUEUE``, ``generate``) or ``bulk``
    for batches and large jobs, so they cannot starve small ones. A model routed by ``MODEL_QUEUES`` (e.g.
    ``{"cifar10-text": "generate.gpu"}``) goes to its queue in either lane: a deployment mixing GPU and CPU
    nodes starts each node's worker on the queues it should serve (docs/scaling.md)."""
    cfg = current_app.config
    routes, lane = cfg["MODEL_QUEUES"], lane or cfg["GENERATE_QUEUE"]
    job_ids = list(job_ids)
    if not routes:
        return {lane: job_ids} if job_ids else {}
    names = dict(db.session.execute(select(Job.id, ModelVersion.name).join(
        ModelVersion, Job.model_version_id == ModelVersion.id).where(Job.id.in_(job_ids))).all())
    by_queue: dict[str, list[str]] = {}
    for job_id in job_ids:
        by_queue.setdefault(routes.get(names.get(job_id), lane), []).append(job_id)
    return by_queue


def send_jobs(job_ids: Iterable[str], queue: str | None = None) -> int:
    """Publish one ``generate_images`` message per job directly, on the queues of :func:`job_queues`; returns
    how many went out. The services send through the outbox (``jobs.stage_messages``); this direct send is for
    tools and tests that publish an extra message on purpose (a duplicate delivery)."""
    return sum(send_messages(GENERATE_TASK, ids, q, "job") for q, ids in job_queues(job_ids, queue).items())


def send_messages(task_name: str, ids: Iterable[str], queue: str, what: str) -> int:
    """One message of task ``task_name`` per id on ``queue``; returns how many went out.

    A broker that is down is not an error for the client: the row stays ``queued`` in the database and the
    reconciliation sends it again once the broker is back.
    """
    sent = 0
    for row_id in ids:
        try:
            publish(task_name, row_id, queue)
            sent += 1
        except Exception as exc:  # broker unreachable: reconciliation will send it later
            log.warning("could not send %s %s to the broker (%s); reconciliation will retry", what, row_id, exc)
    return sent


# one quick reconnect: a connection of the pool broken by a broker restart is replaced at once, and a broker
# that is down fails the publish within a fraction of a second (the outbox's relay tries again)
PERSISTENT_DELIVERY_MODE = 2  # what Celery sends (a broker that persists keeps the message across its restart)
QUICK_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


def publish(task_name: str, row_id: str, queue: str) -> None:
    """Publish one message; raises when the broker does not take it.

    Celery's own message (``amqp.as_task_v2``: protocol 2, what ``send_task`` sends) through a producer of its
    pool, straight to the queue: the anonymous exchange, whose routing key is the queue's name, which is where
    ``send_task`` routes a direct exchange's message too. ``send_task`` itself is skipped: its routing,
    option merging and per-message queue declaration were a quarter of a submit's CPU, and the queue needs
    no declaration on this path (kombu's virtual transports push straight onto the named queue)."""
    celery = current_app.extensions["celery"]
    # time limits are the worker's own (its configuration): None keeps the message from carrying any
    headers, properties, body, _ = celery.amqp.as_task_v2(
        uuid(), task_name, args=[row_id], kwargs={}, time_limit=None, soft_time_limit=None,
        argsrepr=repr([row_id]), kwargsrepr="{}")
    with celery.producer_or_acquire() as producer:
        producer.publish(body, exchange="", routing_key=queue, serializer="json", headers=headers,
                         delivery_mode=PERSISTENT_DELIVERY_MODE, retry=True, retry_policy=QUICK_RETRY,
                         **properties)
