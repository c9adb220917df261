"""Worker-side set-up: per-process database engines and the periodic reconciliation.

Why a timer in the worker rather than celery beat: a job only makes progress while a worker runs, so tying
the reconciliation to the workers loses nothing, needs no extra process, no schedule file and works with the
embedded broker. It runs on the worker's own timer (the main process's event loop, so forking new pool
processes never happens while another thread holds a lock), and every repair it makes is a conditional
UPDATE on the job row, so several workers reconciling at once never send the same job twice.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, bootsteps
from celery.signals import worker_process_init
from flask import Flask

from app.core.extensions import db
from app.services.reconcile import reconcile

log = logging.getLogger(__name__)


def install(celery_app: Celery, flask_app: Flask) -> None:
    class Reconciler(bootsteps.StartStopStep):
        requires = {"celery.worker.components:Timer"}

        def __init__(self, worker: Any, **kwargs: Any) -> None:
            self.tref = None
            self.first = None

        def start(self, worker: Any) -> None:
            interval = float(flask_app.config["RECONCILE_INTERVAL"])
            if interval <= 0:
                return
            self.first = worker.timer.call_after(min(2.0, interval), self.run)
            self.tref = worker.timer.call_repeatedly(interval, self.run)

        def stop(self, worker: Any) -> None:
            for ref in (self.first, self.tref):
                if ref is not None:
                    ref.cancel()

        def run(self) -> None:
            with flask_app.app_context():
                try:
                    counts = reconcile()
                    if any(counts.values()):
                        log.warning("reconciliation: %s", counts)
                except Exception as exc:  # the DB or broker may be down for a while: try again next time
                    log.warning("reconciliation failed: %s: %s", type(exc).__name__, exc)
                    db.session.rollback()
                finally:
                    db.session.remove()

    celery_app.steps["worker"].add(Reconciler)

    @worker_process_init.connect(weak=False)
    def _fresh_engine(**_: Any) -> None:
        # connections opened in the parent must not be shared with the forked pool process
        with flask_app.app_context():
            db.engine.dispose(close=False)
