"""app/core/fastpath/strategy.py: the worker's main process drops the messages of jobs that are not queued any more
(batched as companions, finished, canceled) before they reach the pool; every other message goes on to
Celery's own handling. Celery's default strategy is replaced by a recorder here; tests/service/test_worker.py
runs the real one in a real worker."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import update

from app.core.extensions import db
from app.core.tables import Job


class Message:
    def __init__(self, args: list[Any]):
        self.body = json.dumps([args, {}, {}])

    def decode(self) -> Any:
        return json.loads(self.body)


@pytest.fixture
def on_message(app, monkeypatch):
    """(the strategy's message handler, the messages it passed on, the acks it made)"""
    import app.core.fastpath.strategy as strategy

    passed: list[Any] = []
    acked: list[Any] = []
    monkeypatch.setattr(strategy, "default_strategy",
                        lambda task, celery_app, consumer, **kw: lambda message, *a, **k: passed.append(message))
    celery_app = app.extensions["celery"]
    handler = strategy.skip_settled_jobs(None, celery_app, SimpleNamespace(connection_errors=(OSError,)))

    def deliver(job_id: Any) -> None:
        message = Message([job_id])
        handler(message, None, lambda *a: acked.append(message), None, None)

    return deliver, passed, acked


def set_status(app, job_id: str, status: str) -> None:
    with app.app_context():
        db.session.execute(update(Job).where(Job.id == job_id).values(status=status))
        db.session.commit()


def test_only_queued_jobs_reach_the_pool(client, app, on_message):
    deliver, passed, acked = on_message
    ids = [client.post("/api/v1/jobs", json={"label": "1"}).get_json()["id"] for _ in range(4)]
    set_status(app, ids[1], "running")  # claimed as a companion by a task in the pool
    set_status(app, ids[2], "succeeded")
    set_status(app, ids[3], "canceled")
    for job_id in ids:
        deliver(job_id)
    assert [m.decode()[0][0] for m in passed] == [ids[0]]
    assert [m.decode()[0][0] for m in acked] == ids[1:]


def test_unknown_jobs_and_odd_messages_go_to_the_pool(app, on_message):
    deliver, passed, acked = on_message
    from app.core.fastpath.strategy import job_id_of

    deliver("no-such-job")  # the task logs and drops it
    assert len(passed) == 1 and acked == []
    assert job_id_of(Message([])) is None and job_id_of(SimpleNamespace(decode=lambda: 1 / 0)) is None


def test_an_unreadable_database_loses_no_message(app, on_message, monkeypatch):
    deliver, passed, acked = on_message
    with app.app_context():
        engine = db.engine

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("database down")

    monkeypatch.setattr(type(engine), "connect", refuse)
    deliver("some-job")
    assert len(passed) == 1 and acked == []


def test_with_the_fast_paths_off_every_message_reaches_the_pool(app, monkeypatch):
    import app.core.fastpath.strategy as strategy

    celery_default = object()
    monkeypatch.setattr(strategy, "default_strategy", lambda *a, **k: celery_default)
    app.config["FAST_PATHS"] = False
    handler = strategy.skip_settled_jobs(None, app.extensions["celery"], SimpleNamespace(connection_errors=()))
    assert handler is celery_default  # Celery's own handling, unwrapped: no status read, no message dropped
