"""Worker-side set-up: per-process database engines, the periodic reconciliation, the outbox relay, quick
reconnection to the broker, and the embedded broker's clean-up.

Why a timer in the worker rather than celery beat: a job only makes progress while a worker runs, so tying
the reconciliation to the workers loses nothing, needs no extra process, no schedule file and works with the
embedded broker. It runs on the worker's own timer (the main process's event loop, so forking new pool
processes never happens while another thread holds a lock), and every repair it makes is a conditional
UPDATE on the job row, so several workers reconciling at once never send the same job twice.

A pool process's death stalled its worker for 10 s (Celery's ``worker_lost_wait``); here 0.5 s.

Broker outages: Celery's consumer reconnects with kombu's default back-off (2, 4, 6 ... 30 s), so a
worker came back up to several seconds after Redis did; :class:`Consumer` retries every 0.2-1 s instead. Each
reconnection after the first runs :func:`app.services.reconcile.after_broker_outage`: a broker restarted
without persistence has lost its messages, so the queued jobs are sent again at once.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

from celery import Celery, bootsteps
from celery.signals import worker_process_init
from celery.worker.consumer import Consumer as CeleryConsumer
from flask import Flask

from app.core.extensions import db
from app.services.outbox import publish_pending
from app.services.reconcile import (after_broker_outage, beat_main_process, become_main_process,
                                    become_pool_process, reconcile)
from app.services.webhooks import Dispatcher

log = logging.getLogger(__name__)

# the consumer's reconnection back-off: first try at once, then every 0.2 s growing to 1 s at most
RECONNECT = {"interval_start": 0, "interval_step": 0.2, "interval_max": 1.0}


class Consumer(CeleryConsumer):
    """Celery's consumer, reconnecting to the broker within a second of its return (``worker_consumer``)."""

    def ensure_connected(self, conn: Any) -> Any:
        conn.ensure_connection = functools.partial(conn.ensure_connection, **RECONNECT)
        try:
            return super().ensure_connected(conn)
        finally:
            del conn.ensure_connection  # the instance attribute: the class's method again


def _in_app(flask_app: Flask, what: str, fn: Callable[[], Any]) -> Any:
    with flask_app.app_context():
        try:
            return fn()
        except Exception as exc:  # the DB or broker may be down for a while: try again next time
            log.warning("%s failed: %s: %s", what, type(exc).__name__, exc)
            db.session.rollback()
        finally:
            db.session.remove()


def install(celery_app: Celery, flask_app: Flask) -> None:
    cfg = flask_app.config
    celery_app.conf.worker_consumer = f"{__name__}:Consumer"
    # after a pool process dies, billiard waits this long for a result it might have sent before it marks the
    # task lost (10 s by default); until then the task holds its pool slot and, with a prefetch of one, the
    # worker fetches nothing. Results are not stored here (task_ignore_result): nothing is worth the wait
    celery_app.conf.worker_lost_wait = 0.5

    become_main_process()  # before the pool is forked: its processes record it on the jobs they claim

    def run_reconcile() -> None:
        _in_app(flask_app, "worker heartbeat", beat_main_process)  # this main process lives (worker_nodes)
        counts = _in_app(flask_app, "reconciliation", reconcile)
        if counts and any(counts.values()):
            log.warning("reconciliation: %s", counts)

    def run_relay() -> None:
        _in_app(flask_app, "outbox relay", lambda: publish_pending(grace=cfg["OUTBOX_RELAY_GRACE"]))

    def run_cleanup() -> None:
        from app.core.fastpath import embedded_broker

        _in_app(flask_app, "embedded broker clean-up", lambda: embedded_broker.cleanup(cfg["CELERY_BROKER_URL"]))

    timers: list[tuple[float, Callable[[], None]]] = [(cfg["RECONCILE_INTERVAL"], run_reconcile),
                                                      (cfg["OUTBOX_RELAY_INTERVAL"], run_relay)]
    if cfg["CELERY_BROKER_URL"].startswith("sqla+"):
        timers.append((cfg["BROKER_CLEANUP_INTERVAL"], run_cleanup))

    dispatcher = Dispatcher(flask_app)

    class Timers(bootsteps.StartStopStep):
        """The periodic work, each first run just after start (a sweep of what dead workers left)."""

        requires = {"celery.worker.components:Timer"}

        def __init__(self, worker: Any, **kwargs: Any) -> None:
            self.refs: list[Any] = []

        def start(self, worker: Any) -> None:
            dispatcher.start()  # webhooks: a thread, since a POST may wait WEBHOOK_TIMEOUT seconds
            for interval, fn in timers:
                if interval > 0:
                    self.refs.append(worker.timer.call_after(0.1, fn))
                    self.refs.append(worker.timer.call_repeatedly(interval, fn))

        def stop(self, worker: Any) -> None:
            dispatcher.stop()
            for ref in self.refs:
                ref.cancel()
            self.refs.clear()

    class AfterReconnect(bootsteps.StartStopStep):
        """Started again by Celery at every reconnection to the broker."""

        requires = {"celery.worker.consumer.connection:Connection"}

        def __init__(self, consumer: Any, **kwargs: Any) -> None:
            self.connections = 0

        def start(self, consumer: Any) -> None:
            self.connections += 1
            if self.connections > 1:
                sent = _in_app(flask_app, "re-sending after a broker outage", after_broker_outage)
                log.warning("broker connection restored: %s queued job(s) sent again", sent)

    celery_app.steps["worker"].add(Timers)
    celery_app.steps["consumer"].add(AfterReconnect)

    @worker_process_init.connect(weak=False)
    def _fresh_engine(**_: Any) -> None:
        become_pool_process()
        # connections opened in the parent must not be shared with the forked pool process
        with flask_app.app_context():
            db.engine.dispose(close=False)
