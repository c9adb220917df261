"""The transactional outbox: a task message is a row of ``outbox``, written in the same transaction as the job
(or re-queue) it is for, and published to the broker after the commit; the row is deleted once the broker
has taken the message. So a job is never stored without its message, nor a message sent for a job that was
not stored, and a broker that is down when a job is created (or re-queued) delays its message, never loses it.

Who publishes:

* the process that wrote the rows, right after its commit (:func:`publish_pending` with their ids): the usual
  case, no added latency. It knows what the rows say (its session noted them when it staged them), so it
  publishes without reading them back and deletes what went out in one statement;
* a :class:`Relay` thread per process that found the broker down (it tries every ``OUTBOX_RELAY_INTERVAL``
  until the outbox is empty, then stops), and one in every worker that runs all the time, for the rows of a
  process that died between its commit and its publish. When the broker returns, everything pending goes out
  within one interval.

Two relays may publish the same row (SQLite has no ``SKIP LOCKED``): a duplicate message is harmless, the task
claims its job with a conditional update (docs/service.md, "Reliability").
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Iterable

from flask import Flask, current_app
from sqlalchemy import delete, event, select
from sqlalchemy.orm import Session

from app.core.extensions import db
from app.core.tables import OutboxMessage
from app.services.queue import publish

log = logging.getLogger(__name__)
BATCH = 500  # rows a relay reads at a time
STAGED = "priorforge_outbox_staged"  # Session.info: outbox id -> (task, queue, ref id) of rows it staged


def add(task_name: str, queue: str, ref_ids: Iterable[str]) -> list[int]:
    """Stage one message per id in the current session (the caller commits it with its rows); the outbox ids
    (read now: after the commit another relay may have published and deleted the rows)."""
    rows = [OutboxMessage(task=task_name, queue=queue, ref_id=ref_id) for ref_id in ref_ids]
    if not rows:
        return []
    db.session.add_all(rows)
    db.session.flush()
    staged = db.session.info.setdefault(STAGED, {})
    staged.update({row.id: (task_name, queue, row.ref_id) for row in rows})
    return [row.id for row in rows]


@event.listens_for(Session, "after_rollback")
def _forget_staged(session: Session) -> None:
    """Rows rolled back were never stored: nothing of theirs may be published."""
    session.info.pop(STAGED, None)


def _publish_staged(messages: list[tuple[int, tuple[str, str, str]]]) -> tuple[list[int], Exception | None]:
    """Publish messages this process staged and committed, then delete the rows of those that went out (one
    statement, no transaction around it: a row left behind by a failure is only sent again by a relay, and a
    duplicate is harmless). Returns the ids sent and the first error."""
    sent: list[int] = []
    failure: Exception | None = None
    for outbox_id, (task, queue, ref_id) in messages:
        try:
            publish(task, ref_id, queue)
        except Exception as exc:  # the broker is down: the rest waits for the relay
            failure = exc
            break
        sent.append(outbox_id)
    if sent:
        try:
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(delete(OutboxMessage).where(OutboxMessage.id.in_(sent)))
        except Exception as exc:  # the database: the relay sends these again
            failure = failure or exc
    return sent, failure


def publish_pending(ids: list[int] | None = None, *, kick: bool = True) -> int:
    """Publish the outbox rows ``ids`` (None: the oldest pending ones, up to BATCH) and delete them; returns how
    many went out. Never raises: on a broker error what is left stays for the relay, which is started (``kick``)."""
    if ids is not None and len(ids) > BATCH:
        return sum(publish_pending(ids[i:i + BATCH], kick=kick) for i in range(0, len(ids), BATCH))
    if ids is not None and not ids:
        return 0
    staged = db.session.info.get(STAGED, {}) if ids is not None else {}
    if ids is not None and all(i in staged for i in ids):
        sent, failure = _publish_staged([(i, staged.pop(i)) for i in ids])
        if failure is not None and kick:
            _kick_relay(len(sent), failure)
        return len(sent)
    sent = []
    failure = None
    try:
        with db.engine.begin() as conn:
            query = select(OutboxMessage.id, OutboxMessage.task, OutboxMessage.queue, OutboxMessage.ref_id) \
                .order_by(OutboxMessage.id).limit(BATCH).with_for_update(skip_locked=True)
            if ids is not None:
                query = query.where(OutboxMessage.id.in_(ids))
            for row in conn.execute(query).all():
                try:
                    publish(row.task, row.ref_id, row.queue)
                except Exception as exc:  # the broker is down: the rest waits for the relay
                    failure = exc
                    break
                sent.append(row.id)
            if sent:  # what went out is deleted, in the transaction that read (and on PostgreSQL locked) it
                conn.execute(delete(OutboxMessage).where(OutboxMessage.id.in_(sent)))
    except Exception as exc:  # the database: the relay tries again (a message sent twice is harmless)
        failure = exc
    if failure is not None and kick:
        _kick_relay(len(sent), failure)
    return len(sent)


def _kick_relay(sent: int, failure: Exception) -> None:
    log.warning("outbox: %d message(s) sent, the rest wait for the relay (%s: %s)", sent,
                type(failure).__name__, failure)
    relay_for(current_app._get_current_object()).kick()  # type: ignore[attr-defined]


def pending_count() -> int:
    from sqlalchemy import func

    with db.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(OutboxMessage)) or 0)


class Relay:
    """A thread that publishes the outbox every ``interval`` seconds. ``always``: it never stops (a worker);
    otherwise it runs from a :meth:`kick` until the outbox is empty (a web process that found the broker down).
    Safe across ``fork``: a child starts its own thread."""

    def __init__(self, app: Flask, interval: float, always: bool = False):
        self.app, self.interval, self.always = app, interval, always
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._stop = threading.Event()

    def kick(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._pid, self._stop = os.getpid(), threading.Event()
                self._thread = threading.Thread(target=self._run, name="priorforge-outbox-relay", daemon=True)
                self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        stop = self._stop
        while not stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if stop.is_set():
                return
            try:
                with self.app.app_context():
                    while publish_pending(kick=False) >= BATCH:  # a backlog: go on at once
                        pass
                    if not self.always and pending_count() == 0:
                        return
            except Exception as exc:  # the database is down: try again next interval
                log.warning("outbox relay: %s: %s", type(exc).__name__, exc)


def relay_for(app: Flask, always: bool = False) -> Relay:
    """This app's relay (made once per app)."""
    relay = app.extensions.get("priorforge_outbox_relay")
    if relay is None:
        relay = app.extensions["priorforge_outbox_relay"] = Relay(
            app, app.config["OUTBOX_RELAY_INTERVAL"], always=always)
    relay.always = relay.always or always
    return relay
