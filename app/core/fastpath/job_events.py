"""Waiting for jobs to end without polling over HTTP (``?wait=S`` on the job and batch endpoints).

A client that asks to wait is answered when its jobs are final (succeeded, failed, canceled) or after ``S``
seconds, whichever comes first. How a waiting request learns that a job ended:

* **Redis broker:** whoever ends a job (the worker's task, a cancel, the reconciliation) publishes its id on
  one pub/sub channel after the commit (:func:`announce_finished`). Each web process keeps one subscriber
  thread that wakes the requests waiting on those ids.
* **Any other broker (the embedded one):** one thread per web process reads, every
  ``JOB_WAIT_POLL_INTERVAL`` seconds and only while someone waits, which of the awaited jobs are final, with
  one query for all of them, and wakes their requests. Whoever ends a job on this machine also rings a
  doorbell (:mod:`app.core.fastpath.doorbell`, ``LOCAL_WAKEUPS``) with its id, which wakes those requests at once; the poll
  finds the jobs ended elsewhere.

The row stays the truth: a wake-up only says "look again", and a waiting request also re-reads its jobs at
least every ``JOB_WAIT_RECHECK_INTERVAL`` seconds, so a lost notification (a Redis reconnect) costs at most
that much latency, never a wrong answer. A waiting request holds no database connection while it sleeps, so
many of them do not exhaust the connection pool (they do hold a web server thread: docs/service.md).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Iterable, TypeVar

from flask import Flask, current_app
from sqlalchemy import select

from app.core import fastpath
from app.core.fastpath.doorbell import MAX_DATAGRAM, Doorbell
from app.core.extensions import db
from app.core.tables import Job
from app.core.status import FINAL

log = logging.getLogger(__name__)

CHANNEL = "priorforge:jobs-finished"
T = TypeVar("T")


def redis_url(config: Any) -> str | None:
    """The Redis server that carries the notifications: the broker's, when the broker is Redis (None with the
    fast paths off: the waiters then poll the database)."""
    if not fastpath.enabled(config):
        return None
    broker = str(config.get("CELERY_BROKER_URL") or "")
    return broker if broker.startswith(("redis://", "rediss://")) else None


def channel_name(config: Any) -> str:
    return f"{config.get('BROKER_KEY_PREFIX') or ''}{CHANNEL}"


_publishers: dict[str, Any] = {}
_doorbells: dict[tuple[str, bool], Doorbell] = {}
_publishers_lock = threading.Lock()


def _publisher(url: str) -> Any:
    """One Redis client per URL and process (a forked child makes its own: the pid is part of the key)."""
    import redis

    key = f"{os.getpid()}:{url}"
    with _publishers_lock:
        client = _publishers.get(key)
        if client is None:
            client = _publishers[key] = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        return client


def jobs_doorbell(config: Any) -> Doorbell:
    """The doorbell of the web processes that share this database (disabled with ``LOCAL_WAKEUPS`` off)."""
    key = config["SQLALCHEMY_DATABASE_URI"]
    enabled = bool(config.get("LOCAL_WAKEUPS", True)) and fastpath.enabled(config)
    with _publishers_lock:
        found = _doorbells.get((key, enabled))
        if found is None:
            found = _doorbells[(key, enabled)] = Doorbell.for_key("jobs", key, enabled)
        return found


def id_datagrams(job_ids: list[str]) -> list[bytes]:
    """Comma-separated ids, cut between ids into datagrams a listener reads whole."""
    datagrams, current = [], b""
    for job_id in job_ids:
        encoded = job_id.encode()
        if current and len(current) + 1 + len(encoded) > MAX_DATAGRAM:
            datagrams.append(current)
            current = b""
        current = encoded if not current else current + b"," + encoded
    return datagrams + [current] if current else datagrams


def announce_finished(job_ids: Iterable[str], config: Any = None) -> None:
    """Tell waiting requests that these jobs may have ended (call after the commit). Never raises: without the
    notification a waiting request still sees the job at its next re-read (or poll)."""
    ids = [job_id for job_id in job_ids if job_id]
    config = config if config is not None else current_app.config
    url = redis_url(config)
    if not ids:
        return
    if url is None:
        try:
            jobs_doorbell(config).ring(id_datagrams(ids))
        except Exception as exc:  # the database poll covers it
            log.warning("could not ring for %d finished job(s): %s", len(ids), exc)
        return
    try:
        _publisher(url).publish(channel_name(config), ",".join(ids))
    except Exception as exc:  # Redis down: the waiters' periodic re-read covers it
        log.warning("could not announce %d finished job(s): %s", len(ids), exc)


def final_job_ids(job_ids: Iterable[str]) -> set[str]:
    """Which of these jobs are final, read on a connection of its own (returned to the pool at once)."""
    ids = list(job_ids)
    if not ids:
        return set()
    with db.engine.connect() as conn:
        return set(conn.scalars(select(Job.id).where(Job.id.in_(ids), Job.status.in_(FINAL))))


class JobWatcher:
    """Per web process: requests register the job ids they wait on and sleep on an event; one thread wakes
    them (Redis subscriber, or the database poll). Safe across ``fork``: a child starts its own thread."""

    def __init__(self, app: Flask):
        self.app = app
        self.url = redis_url(app.config)
        self.channel = channel_name(app.config)
        self.poll_interval = app.config["JOB_WAIT_POLL_INTERVAL"]
        self.recheck_interval = app.config["JOB_WAIT_RECHECK_INTERVAL"]
        self._waiters: dict[str, set[threading.Event]] = {}
        self._lock = threading.Lock()
        self._someone_waits = threading.Event()
        self._subscribed = threading.Event()
        self._asleep = 0  # requests sleeping on their wake event now (a gauge for tests and metrics)
        self._pid: int | None = None
        self._thread: threading.Thread | None = None
        # at most this many requests wait at once in this process; the others answer at once (as with wait=0),
        # so waiting clients cannot take every web server thread (docs/security.md)
        self._slots = threading.BoundedSemaphore(max(1, app.config["JOB_WAIT_MAX_CONCURRENT"]))

    # -- the waiting side -------------------------------------------------------------------------------
    def wait_until_ended(self, seconds: float, read: Callable[[], tuple[T, list[str]]],
                         job_ids: list[str] | None = None, start: Callable[[], bool] | None = None) -> T:
        """``read()`` -> (what to answer with, ids of its jobs not final yet), read from the database.
        Reads; while jobs are pending and time is left, sleeps until one of them is announced (or the
        re-read interval passes) and reads again; returns the last read's answer.

        Ids are registered before the read that finds them pending (``job_ids``: known up front, registered
        before the first read; else a read, then the registration, then a second read), so an end announced
        after that read always wakes us. A read per wake-up is all the database work: the answer's own
        queries. No connection is held while asleep. With every waiting slot of the process taken, it reads
        once and answers (as with a wait of 0).

        ``start()``, when given, runs once after ``job_ids`` are registered and before any read: it creates the
        jobs (a submit that waits) and says whether they are certainly pending. True skips the first read, which
        could only find them queued: an end announced from then on wakes us, since we registered first."""
        if seconds > 0 and not self._slots.acquire(blocking=False):
            seconds = 0.0
        elif seconds > 0:
            try:
                return self._wait(seconds, read, job_ids, start)
            finally:
                self._slots.release()
        return self._wait(seconds, read, job_ids, start)

    def _wait(self, seconds: float, read: Callable[[], tuple[T, list[str]]], job_ids: list[str] | None,
              start: Callable[[], bool] | None = None) -> T:
        deadline = time.monotonic() + seconds
        wake = threading.Event()
        registered: set[str] = set()
        try:
            if seconds > 0:
                # subscribed (or polling) before the first read: an end announced after it is never missed
                self._ensure_thread()
            if job_ids and seconds > 0:
                self._register(job_ids, wake)
                registered.update(job_ids)
            answer: T | None = None
            if start is not None and start() and job_ids and seconds > 0:
                pending = list(job_ids)  # just created, and registered before that: nothing to read yet
            else:
                answer, pending = read()
            while pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._ensure_thread()
                unregistered = [job_id for job_id in pending if job_id not in registered]
                if unregistered:  # registered only now: read once more, so nothing ended in between
                    self._register(unregistered, wake)
                    registered.update(unregistered)
                else:
                    db.session.commit()  # end the read's transaction: the connection goes back to the pool
                    # Redis not subscribed yet (starting, reconnecting): read as often as the poll would
                    ready = self.url is None or self._subscribed.is_set()
                    with self._lock:
                        self._asleep += 1
                    try:
                        wake.wait(min(remaining, self.recheck_interval if ready else self.poll_interval))
                    finally:
                        with self._lock:
                            self._asleep -= 1
                    wake.clear()
                db.session.expire_all()  # the next read goes to the database, not the session's copies
                answer, pending = read()
            if answer is None:  # time ran out before the first read
                answer, _ = read()
            return answer
        finally:
            self._unregister(list(registered), wake)

    def _register(self, job_ids: list[str], wake: threading.Event) -> None:
        with self._lock:
            for job_id in job_ids:
                self._waiters.setdefault(job_id, set()).add(wake)
            self._someone_waits.set()

    def _unregister(self, job_ids: list[str], wake: threading.Event) -> None:
        with self._lock:
            for job_id in job_ids:
                events = self._waiters.get(job_id)
                if events is not None:
                    events.discard(wake)
                    if not events:
                        del self._waiters[job_id]
            if not self._waiters:
                self._someone_waits.clear()

    def wake(self, job_ids: Iterable[str]) -> None:
        with self._lock:
            events = [event for job_id in job_ids for event in self._waiters.get(job_id, ())]
        for event in events:
            event.set()

    def awaited(self) -> list[str]:
        with self._lock:
            return list(self._waiters)

    def asleep(self) -> int:
        """How many requests are asleep now, waiting for a wake-up or their re-read."""
        with self._lock:
            return self._asleep

    # -- the waking side --------------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
                return
            self._pid = os.getpid()
            self._subscribed.clear()
            target = self._listen if self.url else self._poll
            self._thread = threading.Thread(target=target, name="priorforge-job-watcher", daemon=True)
            self._thread.start()
        if self.url:  # the first waiter gives the subscription a moment, so its end is not missed by a second
            self._subscribed.wait(1.0)

    def _listen(self) -> None:
        import redis

        if self.url is None:  # no Redis: _poll listens instead
            return
        while True:
            try:
                client = redis.Redis.from_url(self.url, socket_connect_timeout=2, health_check_interval=30)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                self._subscribed.set()
                while True:
                    message = pubsub.get_message(timeout=30.0)
                    if message and message.get("type") == "message":
                        data = message["data"]
                        text = data.decode() if isinstance(data, bytes) else str(data)
                        self.wake(text.split(","))
            except Exception as exc:  # Redis restarted or unreachable: the waiters re-read until we are back
                self._subscribed.clear()
                log.warning("job notifications: lost the Redis subscription (%s); retrying in 1 s", exc)
                time.sleep(1.0)

    def _poll(self) -> None:
        listener = jobs_doorbell(self.app.config).listen()  # None: no doorbell, the poll alone
        try:
            while True:
                self._someone_waits.wait()
                try:
                    with self.app.app_context():
                        awaited = self.awaited()
                        if awaited:
                            self.wake(final_job_ids(awaited))
                except Exception as exc:  # a database hiccup: the next poll tries again
                    log.warning("job notifications: poll failed (%s)", exc)
                if listener is None:
                    time.sleep(self.poll_interval)
                    continue
                # until the next poll, wake the requests of every id rung on this machine
                deadline = time.monotonic() + self.poll_interval
                while (remaining := deadline - time.monotonic()) > 0:
                    for datagram in listener.wait(remaining):
                        self.wake(datagram.decode(errors="replace").split(","))
        finally:
            if listener is not None:
                listener.close()


def watcher() -> JobWatcher:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    found = app.extensions.get("priorforge_job_watcher")
    if found is None:
        found = app.extensions["priorforge_job_watcher"] = JobWatcher(app)
    return found


def parse_wait(raw: str | None, limit: float) -> float | None:
    """The ``wait`` query parameter: None when absent, else seconds in [0, limit]; ValueError says why not."""
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"wait must be a number of seconds from 0 to {limit:g}, got {raw!r}") from None
    if not 0 <= seconds <= limit:  # also refuses nan and inf
        raise ValueError(f"wait must be a number of seconds from 0 to {limit:g}, got {raw!r}")
    return seconds


def wait_until_ended(seconds: float, read: Callable[[], tuple[T, list[str]]],
                     job_ids: list[str] | None = None, start: Callable[[], bool] | None = None) -> T:
    """:meth:`JobWatcher.wait_until_ended` with this process's watcher."""
    return watcher().wait_until_ended(seconds, read, job_ids, start)
