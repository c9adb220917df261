"""The embedded broker: kombu's SQLAlchemy transport (a table the worker polls) with a doorbell.

kombu's loop for a virtual transport fetches a message from each queue and, when there is none (or the worker
may not take more: ``worker_prefetch_multiplier``), sleeps ``polling_interval`` before it looks again. So a
message published just after a look waited for the next one (``BROKER_POLLING_INTERVAL``, 25 ms on average at
50 ms), and so did the next message after a task ended, because its acknowledgement frees the slot while the
loop sleeps.

Here the sleep is a wait on this process's socket in an :class:`app.core.fastpath.doorbell.Doorbell` folder derived from the
broker URL: every publish on this machine rings it after its commit, and an acknowledgement wakes the
acknowledging process's own loop. The poll stays as the fallback at the same interval, so a publisher that
cannot ring (on another machine, when the broker table is on a database server) is found as before.
Everything else (tables, messages, fetching) is kombu's, but for three changes: the tables are
created under a file lock (two processes starting together raced to create them), a fetched message is
deleted instead of kept invisible for ever, and :func:`cleanup` (every worker, at start and every
``BROKER_CLEANUP_INTERVAL``) deletes what older versions left and VACUUMs a mostly empty file.

On SQLite the broker's file is also switched to write-ahead logging, as the app's database is (app/core/factory.py):
the web processes' publishes and the worker's fetches then no longer create and delete a rollback journal at
each commit, and readers do not wait for the writer. Commits still reach the disk (``synchronous`` stays
FULL), so an accepted job's message survives a power cut. Measured in docs/benchmarks.md, "rings against polls".
"""

from __future__ import annotations

import os
import socket
import sqlite3
from pathlib import Path
from time import monotonic
from typing import Any

from filelock import FileLock
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as kombu_sqla
from kombu.transport.virtual import Empty
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from sqlalchemy import event, text

from app.core.fastpath.doorbell import Doorbell, Listener
from app.core.files import sqlite_connect_listener

# the URL scheme prefix that selects this transport (``<prefix>+sqlite:///...``, like kombu's ``sqla+``)
ALIAS = "sqladoorbell"
TRANSPORT_PATH = "app.core.fastpath.embedded_broker:Transport"


def register() -> None:
    """Make ``sqladoorbell+<database URL>`` resolve to :class:`Transport` (kombu's alias table is its hook for
    naming transports in URLs)."""
    TRANSPORT_ALIASES.setdefault(ALIAS, TRANSPORT_PATH)


def broker_url(url: str) -> str:
    """The URL that Celery is given for a ``sqla+`` broker URL of the configuration."""
    return ALIAS + url[len("sqla"):] if url.startswith("sqla+") else url


# seconds between the worker's looks at the broker table: with rings on a SQLite file the poll only catches a
# ring that went missing, since every publisher of that file is on this machine; an idle worker's looks cost 0.09
# of a core at 0.05 s and 0.02 at 0.5 (docs/benchmarks.md, "rings against polls"). Without rings, or on a database
# server that publishers on other machines share, the poll is how a message is found.
RING_FALLBACK_POLL = 0.5
POLL = 0.05


def polling_interval(url: str, configured: float | None, local_wakeups: bool) -> float:
    """``BROKER_POLLING_INTERVAL`` when set, else the default for the broker ``url`` (``sqla+...``)."""
    if configured is not None:
        return configured
    return RING_FALLBACK_POLL if local_wakeups and _sqlite_path(url) is not None else POLL


def _write_ahead_log(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def _sqlite_path(url: str) -> Path | None:
    """The file of a ``[sqla[doorbell]+]sqlite:///path`` URL (None: another database, or in memory)."""
    url = url.split("+", 1)[1] if url.startswith(("sqla+", ALIAS + "+")) else url
    if not url.startswith("sqlite:///") or url in ("sqlite://", "sqlite:///:memory:"):
        return None
    return Path(url[len("sqlite:///"):])


def _file_lock(url: str) -> FileLock | None:
    """A lock file beside the broker's SQLite file: one process at a time creates the tables."""
    path = _sqlite_path(url)
    if path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock")


class Channel(kombu_sqla.Channel):
    def _engine_from_config(self) -> Any:
        engine = super()._engine_from_config()
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _write_ahead_log)
            event.listen(engine, "connect", sqlite_connect_listener(engine.url.database))  # 0600
        return engine

    def _open(self) -> Any:
        """kombu's, with the tables created under a file lock: kombu creates them in every process that opens
        the broker, and two processes starting together both found them missing ("table kombu_queue already
        exists")."""
        hostname = self.connection.client.hostname
        if hostname in self._engines:
            return self._engines[hostname]
        lock = _file_lock(hostname)
        if lock is None:
            return super()._open()
        with lock:
            return super()._open()

    def _get(self, queue: str) -> Any:  # type: ignore[override]  # kombu's stubs name a timeout kombu never passes
        """kombu's fetch, deleting the message instead of marking it invisible: kombu never reads an invisible
        row again (an unacknowledged message is held in the consumer's memory and put back from there), so the
        rows only made the table grow forever."""
        obj = self._get_or_create(queue)
        session = self.session
        if session.bind.name == "sqlite":
            session.execute(text("BEGIN IMMEDIATE TRANSACTION"))
        try:
            msg = session.query(self.message_cls).with_for_update() \
                .filter(self.message_cls.queue_id == obj.id, self.message_cls.visible != False) \
                .order_by(self.message_cls.sent_at, self.message_cls.id).limit(1).first()  # noqa: E712
            if msg is None:
                raise Empty()
            payload = loads(bytes_to_str(msg.payload))
            session.delete(msg)
            return payload
        finally:
            session.commit()

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]  # as kombu calls it
        super()._put(queue, payload, **kwargs)  # committed when this returns
        self.connection.doorbell.ring()

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        super().basic_ack(delivery_tag, multiple=multiple)
        self.connection.wake_own_loop()  # a prefetch slot is free: look now, not at the next poll

    def basic_reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        super().basic_reject(delivery_tag, requeue=requeue)
        self.connection.wake_own_loop()


class Transport(kombu_sqla.Transport):
    Channel = Channel
    local_wakeups = True  # LOCAL_WAKEUPS (app.core.queue.celery_config sets it); False: kombu's polling alone

    def __init__(self, client: Any, **kwargs: Any):
        super().__init__(client, **kwargs)
        self.doorbell = Doorbell.for_key("broker", str(client.hostname), enabled=self.local_wakeups)
        self._listener: Listener | None = None

    def _own_listener(self) -> Listener | None:
        """This process's socket, bound by the first wait (only consumers wait; publishers never bind)."""
        if self._listener is not None and self._listener.pid != os.getpid():
            self._listener = None  # inherited across fork: the parent's socket, not ours
        if self._listener is None:
            self._listener = self.doorbell.listen()
        return self._listener

    def wake_own_loop(self) -> None:
        if self._listener is not None and self._listener.pid == os.getpid():
            self._listener.ring_self()

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:  # type: ignore[override]
        """kombu's ``virtual.Transport.drain_events``, waiting on the doorbell where it sleeps."""
        listener = self._own_listener()
        if listener is None:
            return super().drain_events(connection, timeout=timeout)
        time_start = monotonic()
        polling_interval = self.polling_interval
        if timeout and polling_interval and polling_interval > timeout:
            polling_interval = timeout
        while True:
            listener.drain()  # rings from before this look are answered by it; later ones end the wait below
            try:
                self.cycle.get(self._deliver, timeout=timeout)  # type: ignore[attr-defined]  # set by kombu
                return
            except Empty:
                if timeout is not None and monotonic() - time_start >= timeout:
                    raise socket.timeout() from None
                listener.wait(polling_interval)

    def close_connection(self, connection: Any) -> None:
        try:
            super().close_connection(connection)
        finally:
            if self._listener is not None:
                self._listener.close()
                self._listener = None


def cleanup(url: str, vacuum_ratio: float = 0.5) -> dict[str, int]:
    """Keep the broker's SQLite file small: delete the consumed rows older versions left (``visible = 0``:
    kombu kept every delivered message), and VACUUM when more than ``vacuum_ratio`` of the file is free pages.
    Safe while the service runs (a VACUUM waits for, and briefly holds, the write lock). Run by every worker at
    start and every ``BROKER_CLEANUP_INTERVAL``."""
    path = _sqlite_path(url)
    if path is None or not path.exists():
        return {"deleted": 0, "vacuumed": 0}
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        deleted = conn.execute("DELETE FROM kombu_message WHERE visible = 0").rowcount \
            if "kombu_message" in tables else 0
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        vacuumed = 0
        if pages > 64 and free > vacuum_ratio * pages:
            conn.execute("VACUUM")
            vacuumed = 1
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return {"deleted": max(0, deleted), "vacuumed": vacuumed}
    finally:
        conn.close()
