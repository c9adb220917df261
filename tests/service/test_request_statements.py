"""The SQL a job costs the web server, counted (not timed): every job pays these statements, so one more is a
regression that a benchmark run would only show as noise."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from sqlalchemy import event

from app.core.extensions import db
from tests.service.conftest import base_config, register_test_models


@contextmanager
def counting(app):
    statements: list[str] = []

    def note(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement.split()[0].upper())

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", note)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", note)


def make_app(tmp_path, checkpoints, **overrides):
    from app import create_app
    from app.core.migrate import upgrade

    app = create_app({**base_config(tmp_path), "OUTBOX_SWEEP_INTERVAL": 60.0, **overrides})  # sweeps counted apart
    upgrade(app)
    with app.app_context():
        register_test_models(checkpoints)
    return app


def assert_statements(app) -> None:
    from app.services.outbox import sweeper_for

    client = app.test_client()
    client.post("/api/v1/jobs", json={"label": "1"})  # the serving version is read once and kept
    with counting(app) as statements:
        job_id = client.post("/api/v1/jobs", json={"label": "2"}).get_json()["id"]
    # the job's INSERT (on PostgreSQL it also takes the client's lock) and the outbox row's INSERT, which
    # checks the quota itself
    assert statements == ["INSERT", "INSERT"], statements
    with counting(app) as statements:
        assert client.get(f"/api/v1/jobs/{job_id}").status_code == 200
    assert statements == ["SELECT"], statements  # the job, its model version and its images in one query
    with counting(app) as statements:
        assert sweeper_for(app).flush() == 2
    assert statements == ["DELETE"], statements  # the published messages' rows, together
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_a_job_costs_two_statements_and_a_read_one_on_sqlite(tmp_path, checkpoints):
    assert_statements(make_app(tmp_path, checkpoints))


@pytest.mark.integration
def test_a_job_costs_two_statements_and_a_read_one_on_postgresql(tmp_path, checkpoints, pg_url):
    assert_statements(make_app(tmp_path, checkpoints, SQLALCHEMY_DATABASE_URI=pg_url))


def assert_task_statements(app, expected: list[str]) -> None:
    """A 1-image job of a loaded model: its task reads the job, claims it, looks for companions, and marks it
    succeeded with its image rows; nothing else (no DELETE before the image rows, no read back for /metrics)."""
    from workers.tasks import generate_images

    client = app.test_client()
    first = client.post("/api/v1/jobs", json={"label": "1"}).get_json()["id"]
    with app.app_context():
        assert generate_images.run(first) == "succeeded"  # loads the model, writes the worker's status row
    second = client.post("/api/v1/jobs", json={"label": "2"}).get_json()["id"]
    with counting(app) as statements:
        with app.app_context():
            assert generate_images.run(second) == "succeeded"
    # the job and its version; its claim; queued companions of its version (none); its success, image rows
    assert statements == expected, statements
    with app.app_context():
        if db.engine.dialect.name == "postgresql":  # the two commits' SET LOCAL ends with them
            assert db.session.connection().exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
            db.session.rollback()
        db.session.remove()
        db.engine.dispose()


def test_a_generation_task_costs_five_statements_on_sqlite(tmp_path, checkpoints):
    assert_task_statements(make_app(tmp_path, checkpoints, HEARTBEAT_INTERVAL=600.0),
                           ["SELECT", "UPDATE", "SELECT", "UPDATE", "INSERT"])


@pytest.mark.integration
def test_a_generation_task_costs_five_statements_on_postgresql(tmp_path, checkpoints, pg_url):
    # and before each of its two commits, that the commit need not wait for the disk (workers/lease.py)
    assert_task_statements(make_app(tmp_path, checkpoints, HEARTBEAT_INTERVAL=600.0, SQLALCHEMY_DATABASE_URI=pg_url),
                           ["SELECT", "UPDATE", "SELECT", "SET", "UPDATE", "INSERT", "SET"])


@pytest.mark.integration
def test_repeated_job_reads_keep_their_prepared_statement_on_postgresql(tmp_path, checkpoints, pg_url):
    """psycopg prepares a statement on its fifth use on a connection and forgets every prepared statement at a
    ROLLBACK: a read that ended its transaction with the session's closing rollback was parsed and planned by
    PostgreSQL at every request. The job reads end theirs with a COMMIT."""
    from sqlalchemy import text

    app = make_app(tmp_path, checkpoints, SQLALCHEMY_DATABASE_URI=pg_url)
    client = app.test_client()
    job_id = client.post("/api/v1/jobs", json={"label": "1"}).get_json()["id"]
    for wait in ("", "?wait=0") * 4:  # one thread: every request checks out the pool's one connection
        assert client.get(f"/api/v1/jobs/{job_id}{wait}").status_code == 200
    with app.app_context():
        prepared = db.session.execute(text("SELECT statement FROM pg_prepared_statements")).scalars().all()
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    assert any("FROM jobs" in statement for statement in prepared), prepared
