"""Machine-local wake-ups (app/core/fastpath/doorbell.py) and the embedded broker that uses them (app/core/fastpath/embedded_broker.py).

No test asserts a duration. Where a wake-up is under test, the poll it replaces is set to an hour, so the
awaited thing can only arrive through the doorbell; the join's timeout is a liveness guard, not a figure.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from pathlib import Path

import pytest

from app.core.fastpath.doorbell import MAX_DATAGRAM, SUFFIX, Doorbell, folder_for

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix sockets")


@pytest.fixture
def bell() -> Doorbell:
    return Doorbell.for_key("test", f"unit-{uuid.uuid4().hex}")


def sockets_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def test_a_ring_reaches_every_listener_with_its_payloads(bell):
    first, second = bell.listen(), bell.listen()
    try:
        assert first.drain() == [b""]  # the second's sweep for stale sockets on arrival
        bell.ring([b"a,b", b"c"])
        assert first.wait(5) == [b"a,b", b"c"]
        assert second.wait(5) == [b"a,b", b"c"]
        assert first.drain() == []  # each datagram is read once
        bell.ring()
        assert second.wait(5) == [b""]
    finally:
        first.close()
        second.close()


def test_a_wait_ends_when_another_thread_rings(bell):
    listener = bell.listen()
    try:
        received: list[list[bytes]] = []
        thread = threading.Thread(target=lambda: received.append(listener.wait(3600)), daemon=True)
        thread.start()
        bell.ring([b"x"])
        thread.join(30)
        assert received == [[b"x"]]
        thread = threading.Thread(target=lambda: received.append(listener.wait(3600)), daemon=True)
        thread.start()
        listener.ring_self()
        thread.join(30)
        assert received[1] == [b""]
    finally:
        listener.close()


def test_a_stale_socket_is_removed_and_the_last_listener_removes_the_folders(bell):
    listener = bell.listen()
    assert bell.folder is not None and bell.folder.is_dir()
    # a socket file whose process is gone (killed without closing it)
    stale = bell.folder / f"999999-dead{SUFFIX}"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(stale))
    dead.close()
    assert stale.name in sockets_in(bell.folder)
    bell.ring()
    assert sockets_in(bell.folder) == [listener.path.name]
    assert listener.drain() == [b""]
    stale_again = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale_again.bind(str(stale))
    stale_again.close()
    newcomer = bell.listen()  # a new listener sweeps too, and does not ring itself
    assert sockets_in(bell.folder) == sorted([listener.path.name, newcomer.path.name])
    assert listener.wait(5) == [b""] and newcomer.drain() == []
    newcomer.close()
    listener.close()
    assert not bell.folder.exists() and not bell.folder.parent.exists()
    bell.ring()  # nobody listens: nothing happens
    again = bell.listen()  # and the folders come back for the next one
    assert again is not None and again.path.exists()
    again.close()


def test_a_folder_someone_else_may_write_is_not_used(tmp_path):
    folder = tmp_path / "shared" / "jobs"
    folder.mkdir(parents=True)
    os.chmod(folder, 0o777)
    bell = Doorbell(folder)
    assert bell.listen() is None
    bell.ring()  # no error, nothing sent
    os.chmod(folder, 0o700)
    listener = bell.listen()
    assert listener is not None
    listener.close()


def test_a_disabled_doorbell_does_nothing():
    bell = Doorbell.for_key("test", "disabled", enabled=False)
    assert not bell.enabled and bell.listen() is None
    bell.ring([b"ignored"])


def test_folders_depend_on_what_the_processes_share():
    assert folder_for("jobs", "sqlite:///a.db") == folder_for("jobs", "sqlite:///a.db")
    assert folder_for("jobs", "sqlite:///a.db") != folder_for("jobs", "sqlite:///b.db")
    assert folder_for("jobs", "sqlite:///a.db") != folder_for("broker", "sqlite:///a.db")
    assert len(str(folder_for("broker", "x" * 500) / f"{2**22}-0123abcd{SUFFIX}")) < 100  # Unix socket limit


def test_job_ids_are_cut_into_whole_datagrams(bell):
    from app.core.fastpath.job_events import id_datagrams

    ids = [str(uuid.uuid4()) for _ in range(600)]
    datagrams = id_datagrams(ids)
    assert len(datagrams) > 1 and all(len(d) <= MAX_DATAGRAM for d in datagrams)
    assert b",".join(datagrams).decode().split(",") == ids
    assert id_datagrams([]) == []
    with pytest.raises(ValueError, match="at most"):
        bell.ring([b"x" * (MAX_DATAGRAM + 1)])


# -- announcements without Redis -------------------------------------------------------------------
def test_without_redis_a_finished_job_is_rung_to_the_web_processes(app):
    from app.core.fastpath.job_events import announce_finished, jobs_doorbell

    listener = jobs_doorbell(app.config).listen()
    try:
        announce_finished(["j1", "j2"], app.config)
        assert listener.wait(5) == [b"j1,j2"]
    finally:
        listener.close()


def test_local_wakeups_off_rings_nothing(app):
    from app.core.fastpath.job_events import announce_finished, jobs_doorbell

    listener = jobs_doorbell(app.config).listen()
    try:
        announce_finished(["j1"], {**app.config, "LOCAL_WAKEUPS": False})
        assert listener.wait(0.2) == []
    finally:
        listener.close()


@pytest.mark.parametrize("value", ["yes", 2, None])
def test_a_bad_local_wakeups_is_refused_when_the_app_starts(tmp_path, value):
    from app import create_app
    from tests.service.conftest import base_config

    with pytest.raises(ValueError, match="LOCAL_WAKEUPS must be bool"):
        create_app(base_config(tmp_path, LOCAL_WAKEUPS=value))


# -- the embedded broker ---------------------------------------------------------------------------
def test_the_poll_is_a_slow_fallback_only_where_every_publisher_rings(tmp_path):
    """A SQLite broker file with rings on: every publisher is on this machine and rings, so the worker looks at the
    table every half second as a fallback; without rings, or on a shared database server, every 50 ms; a value
    set by the operator wins."""
    from app import create_app
    from app.core.fastpath import embedded_broker
    from tests.service.conftest import base_config

    sqlite, server = f"sqla+sqlite:///{tmp_path}/broker.db", "sqla+postgresql://db.internal/broker"
    assert embedded_broker.polling_interval(sqlite, None, local_wakeups=True) == embedded_broker.RING_FALLBACK_POLL
    assert embedded_broker.polling_interval(sqlite, None, local_wakeups=False) == embedded_broker.POLL
    assert embedded_broker.polling_interval(server, None, local_wakeups=True) == embedded_broker.POLL
    assert embedded_broker.polling_interval(sqlite, 0.2, local_wakeups=True) == 0.2
    before = embedded_broker.Transport.polling_interval, embedded_broker.Transport.local_wakeups
    try:
        create_app(base_config(tmp_path, CELERY_BROKER_URL=sqlite, FAST_PATHS=False))
        assert embedded_broker.Transport.polling_interval == embedded_broker.POLL  # the fast paths off: polls alone
        with pytest.raises(ValueError, match="BROKER_POLLING_INTERVAL"):
            create_app(base_config(tmp_path, BROKER_POLLING_INTERVAL="fast"))
    finally:  # the transport's settings are class attributes: later tests get the defaults back
        embedded_broker.Transport.polling_interval, embedded_broker.Transport.local_wakeups = before


class Consumer:
    """A kombu consumer of one queue on the embedded broker, draining in a thread of its own."""

    def __init__(self, url: str, prefetch: int = 1):
        from kombu import Connection, Exchange, Queue

        self.queue = Queue("q", Exchange("q", type="direct"), routing_key="q")
        self.connection = Connection(url)
        self.connection.transport.polling_interval = 3600  # the fallback poll never comes in a test
        self.received: list = []
        self.consumer = self.connection.Consumer(self.queue, callbacks=[self._on_message])
        self.consumer.qos(prefetch_count=prefetch)
        self.consumer.consume()

    def _on_message(self, body, message) -> None:
        self.received.append((body, message))

    def drain_until_waiting(self) -> threading.Thread:
        """Start ``drain_events`` in a thread; return once it found nothing it may take and waits on the
        doorbell (so what ends that wait is what the test does next)."""
        waiting = threading.Event()
        listener = self.connection.transport._own_listener()
        assert listener is not None
        wait = listener.wait

        def wait_and_tell(timeout):
            waiting.set()
            return wait(timeout)

        listener.wait = wait_and_tell
        thread = threading.Thread(target=self.connection.drain_events, daemon=True)
        thread.start()
        assert waiting.wait(30), "the consumer never waited"
        return thread

    def close(self) -> None:
        self.consumer.cancel()
        self.connection.release()


def publish(url: str, body: dict) -> None:
    from kombu import Connection, Exchange, Queue

    queue = Queue("q", Exchange("q", type="direct"), routing_key="q")
    with Connection(url) as connection:
        connection.Producer().publish(body, exchange=queue.exchange, routing_key="q", declare=[queue])


@pytest.fixture
def broker_url(tmp_path):
    from app.core.fastpath import embedded_broker

    embedded_broker.register()
    return embedded_broker.broker_url(f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}")


def listeners_of(url: str) -> list[str]:
    return sockets_in(folder_for("broker", url.split("+", 1)[1]))


def test_the_broker_url_selects_the_doorbell_transport(broker_url):
    from kombu import Connection

    from app.core.fastpath.embedded_broker import Transport, broker_url as url_for

    assert broker_url.startswith("sqladoorbell+sqlite:///")
    assert url_for("redis://localhost:6379/0") == "redis://localhost:6379/0"
    with Connection(broker_url) as connection:
        assert isinstance(connection.transport, Transport)


def test_a_publish_wakes_a_consumer_waiting_on_an_empty_queue(broker_url):
    from app.core.fastpath import doorbell

    publish(broker_url, {"warm": "up"})  # creates the tables and the queue
    consumer = Consumer(broker_url)
    try:
        consumer.connection.drain_events(timeout=30)
        consumer.received.pop()[1].ack()
        thread = consumer.drain_until_waiting()
        assert listeners_of(broker_url)
        publish(broker_url, {"n": 1})
        thread.join(30)
        assert [body for body, _ in consumer.received] == [{"n": 1}]
        assert doorbell.supported()
    finally:
        consumer.close()
    assert listeners_of(broker_url) == []  # closing the connection removed its socket


def test_an_ack_wakes_the_consumer_for_the_next_message(broker_url):
    publish(broker_url, {"n": 1})
    publish(broker_url, {"n": 2})
    consumer = Consumer(broker_url, prefetch=1)
    try:
        consumer.connection.drain_events(timeout=30)
        assert [body for body, _ in consumer.received] == [{"n": 1}]
        # the one prefetch slot is taken: the loop finds nothing it may take and waits
        thread = consumer.drain_until_waiting()
        consumer.received[0][1].ack()  # from this thread, as a pool's result handler does
        thread.join(30)
        assert [body for body, _ in consumer.received] == [{"n": 1}, {"n": 2}]
    finally:
        consumer.close()


def test_local_wakeups_switches_the_embedded_brokers_doorbell(tmp_path):
    from kombu import Connection

    from app import create_app
    from tests.service.conftest import base_config
    from app.core.queue import celery_config

    try:
        on = celery_config(create_app(base_config(tmp_path)))
        assert on["broker_url"].startswith("sqladoorbell+sqlite:///")
        with Connection(on["broker_url"]) as connection:
            assert connection.transport.doorbell.enabled
        off = celery_config(create_app(base_config(tmp_path, LOCAL_WAKEUPS=False)))
        assert off["broker_url"] == on["broker_url"]  # the same transport, without the doorbell
        with Connection(off["broker_url"]) as connection:
            assert not connection.transport.doorbell.enabled
            assert connection.transport._own_listener() is None  # it polls, as kombu does
        redis = celery_config(create_app(base_config(tmp_path, CELERY_BROKER_URL="redis://127.0.0.1:6379/0")))
        assert redis["broker_url"] == "redis://127.0.0.1:6379/0"
    finally:
        from app.core.fastpath.embedded_broker import Transport

        Transport.local_wakeups = True  # a class attribute: leave it as the default app sets it


def test_the_brokers_sqlite_file_uses_write_ahead_logging(tmp_path, broker_url):
    import sqlite3

    publish(broker_url, {"n": 1})
    with sqlite3.connect(tmp_path / "broker.sqlite3") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sweep_removes_what_killed_processes_left_and_keeps_live_listeners():
    from app.core.fastpath.doorbell import sweep

    key = f"sweep-{uuid.uuid4().hex}"
    live = Doorbell.for_key("jobs", key).listen()
    broker = Doorbell.for_key("broker", key)
    orphan = broker.listen()
    # as if its process had been killed: the file stays, but nothing reads it any more
    dead_path = orphan.path
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead_path.unlink()
    dead.bind(str(dead_path))
    dead.close()
    sweep(key)
    assert not broker.folder.exists()  # only a dead socket was there
    assert sockets_in(live.path.parent) == [live.path.name]
    live.close()
    assert not live.path.parent.parent.exists()
    sweep(key)  # nothing left: no error
    orphan.close()
