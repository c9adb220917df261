"""The transactional outbox: a task message is a row of ``outbox``, written in the same transaction as the job
(or re-queue) it is for, and published to the broker after the commit; the row is deleted once the broker
has taken the message. So a job is never stored without its message, nor a message sent for a job that was
not stored, and a broker that is down when a job is created (or re-queued) delays its message, never loses it.

Who publishes:

* the process that wrote the rows, right after its commit (:func:`publish_pending` with their ids): the usual
  case, no added latency. It knows what the rows say (its session noted them when it staged them), so it
  publishes without reading them back. The rows of what went out are deleted by the process's
  :class:`Sweeper`, for all its requests together, every ``OUTBOX_SWEEP_INTERVAL`` seconds: one statement
  (and one connection checkout) for many jobs instead of one per request;
* a :class:`Relay` thread per process that found the broker down (it tries every ``OUTBOX_RELAY_INTERVAL``
  until the outbox is empty, then stops), and one in every worker that runs all the time, for the rows of a
  process that died between its commit and its publish. A relay leaves rows younger than
  ``OUTBOX_RELAY_GRACE`` to the process that wrote them (published, or waiting for its sweep). When the broker
  returns, everything pending goes out within the grace and one interval.

A message may go out twice: two relays (SQLite has no ``SKIP LOCKED``), or a process killed after its publish
and before its sweep. A duplicate is harmless: the worker drops the message of a job that is no longer queued
and claims a job with a conditional update (docs/reliability.md).
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
import weakref
from datetime import timedelta
from typing import Any, Iterable

from flask import Flask, current_app
from sqlalchemy import ColumnElement, Insert, bindparam, delete, event, insert, select
from sqlalchemy.orm import Session

from app.core.extensions import db
from app.core.tables import OutboxMessage, table_of, utcnow
from app.services.queue import publish

log = logging.getLogger(__name__)
BATCH = 500  # rows a relay reads at a time
STAGED = "priorforge_outbox_staged"  # Session.info: outbox id -> (task, queue, ref id) of rows it staged


# a SQL condition with the values of its bind parameters: the condition is built once (a module constant),
# so the statement that checks it is built and compiled once too
SqlCondition = tuple[ColumnElement[bool], dict[str, Any]]


@functools.lru_cache(maxsize=8)
def _insert_if(condition: ColumnElement[bool]) -> Insert:
    """``INSERT INTO outbox ... SELECT <the row> WHERE <condition> RETURNING id`` (one per condition object)."""
    table = table_of(OutboxMessage)
    row = select(bindparam("outbox_task", type_=table.c.task.type), bindparam("outbox_queue", type_=table.c.queue.type),
                 bindparam("outbox_ref", type_=table.c.ref_id.type),
                 bindparam("outbox_created", type_=table.c.created_at.type)).where(condition)
    return insert(table).from_select(["task", "queue", "ref_id", "created_at"], row).returning(table.c.id)


def add(task_name: str, queue: str, ref_ids: Iterable[str], only_if: SqlCondition | None = None) -> list[int]:
    """Stage one message per id in the current session (the caller commits it with its rows); the outbox ids
    (read now: after the commit another relay may have published and deleted the rows). ``only_if``: a SQL
    condition checked by the first row's INSERT itself (a quota, say, at no extra round trip); when it does
    not hold nothing is staged and the result is empty."""
    refs = list(ref_ids)
    if not refs:
        return []
    now = utcnow()
    ids: list[int] = []
    if only_if is not None:
        condition, params = only_if
        inserted = db.session.execute(_insert_if(condition), {
            **params, "outbox_task": task_name, "outbox_queue": queue, "outbox_ref": refs[0], "outbox_created": now,
        }).scalar()
        if inserted is None:
            return []
        ids.append(inserted)
    if len(refs) > len(ids):
        ids += db.session.execute(_INSERT_MANY, [{"task": task_name, "queue": queue, "ref_id": ref_id, "created_at": now}
                                                 for ref_id in refs[len(ids):]]).scalars().all()
    db.session.info.setdefault(STAGED, {}).update(
        {outbox_id: (task_name, queue, ref_id) for outbox_id, ref_id in zip(ids, refs)})
    return ids


_INSERT_MANY = insert(table_of(OutboxMessage)).returning(table_of(OutboxMessage).c.id, sort_by_parameter_order=True)


@event.listens_for(Session, "after_rollback")
def _forget_staged(session: Session) -> None:
    """Rows rolled back were never stored: nothing of theirs may be published."""
    session.info.pop(STAGED, None)


def _publish_staged(messages: list[tuple[int, tuple[str, str, str]]]) -> tuple[list[int], Exception | None]:
    """Publish messages this process staged and committed, and hand the rows of those that went out to the
    sweeper. Returns the ids sent and the first error."""
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
        sweeper_for(current_app._get_current_object()).discard(sent)  # type: ignore[attr-defined]
    return sent, failure


class Sweeper:
    """Deletes the outbox rows of published messages, many at once: a thread wakes when rows are handed to it,
    waits ``interval`` seconds for more, and deletes them all in one autocommit statement. A row it could not
    delete (the database is down) is kept for its next pass; a row it never deletes (the process is killed) is
    published again by a relay after the grace: a duplicate, which is harmless. Safe across ``fork``: a child
    starts with nothing handed over and its own thread."""

    def __init__(self, app: Flask, interval: float):
        self.app, self.interval = app, interval
        self._ids: list[int] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None

    def discard(self, ids: Iterable[int]) -> None:
        """Delete these rows soon (at once when the interval is 0)."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child: its parent's ids and thread are not its own
                self._pid, self._ids, self._thread = os.getpid(), [], None
            self._ids.extend(ids)
            if self.interval > 0 and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._run, name="priorforge-outbox-sweeper", daemon=True)
                self._thread.start()
        if self.interval <= 0:
            self.flush()
        else:
            self._wake.set()

    def flush(self, at_exit: bool = False) -> int:
        """Delete what was handed over until now; returns how many rows it deleted (0 on a database error)."""
        with self._lock:
            ids, self._ids = self._ids, []
        if not ids:
            return 0
        try:
            with self.app.app_context(), \
                    db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(delete(OutboxMessage).where(OutboxMessage.id.in_(ids)))
            return len(ids)
        except Exception as exc:  # the database: keep them for the next pass
            (log.info if at_exit else log.warning)("outbox sweeper: %d row(s) kept for the next pass (%s: %s)", len(ids), type(exc).__name__, exc)
            with self._lock:
                self._ids[:0] = ids
            return 0

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            threading.Event().wait(self.interval)  # gather the rows of the requests of the next moment
            self.flush()


_sweepers: weakref.WeakSet[Sweeper] = weakref.WeakSet()


def sweeper_for(app: Flask) -> Sweeper:
    """This app's sweeper (made once per app)."""
    sweeper = app.extensions.get("priorforge_outbox_sweeper")
    if sweeper is None:
        sweeper = app.extensions["priorforge_outbox_sweeper"] = Sweeper(app, app.config["OUTBOX_SWEEP_INTERVAL"])
        _sweepers.add(sweeper)
    return sweeper


@atexit.register
def _sweep_at_exit() -> None:
    """What a process handed over in its last moment is deleted as it exits (a relay would send it again)."""
    for sweeper in list(_sweepers):
        sweeper.flush(at_exit=True)


def publish_pending(ids: list[int] | None = None, *, kick: bool = True, grace: float = 0.0) -> int:
    """Publish the outbox rows ``ids`` (None: the oldest pending ones older than ``grace`` seconds, up to BATCH)
    and delete them; returns how many went out. Never raises: on a broker error what is left stays for the
    relay, which is started (``kick``)."""
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
            elif grace > 0:
                query = query.where(OutboxMessage.created_at < utcnow() - timedelta(seconds=grace))
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

    def __init__(self, app: Flask, interval: float, always: bool = False, grace: float = 0.0):
        self.app, self.interval, self.always, self.grace = app, interval, always, grace
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
                    while publish_pending(kick=False, grace=self.grace) >= BATCH:  # a backlog: go on at once
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
            app, app.config["OUTBOX_RELAY_INTERVAL"], always=always, grace=app.config["OUTBOX_RELAY_GRACE"])
    relay.always = relay.always or always
    return relay
