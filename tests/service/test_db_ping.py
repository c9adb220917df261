"""A pooled PostgreSQL connection that rested is pinged before use, and replaced when it is gone; one just
used is not pinged (a round trip saved per request)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from app.core.extensions import db
from tests.service.conftest import base_config

pytestmark = pytest.mark.integration


def make_app(tmp_path, pg_url, after_idle: float):
    from app import create_app
    from app.core.migrate import upgrade

    app = create_app(base_config(tmp_path, SQLALCHEMY_DATABASE_URI=pg_url, DB_PING_AFTER_IDLE=after_idle,
                                 DB_POOL_SIZE=1))
    upgrade(app)
    return app


def backend_pid(app) -> int:
    with app.app_context():
        pid = db.session.scalar(text("SELECT pg_backend_pid()"))
        db.session.remove()  # back to the pool
        return pid


def terminate(pg_url: str, pid: int) -> None:
    """End that backend from a connection of its own (as a database restart or an idle timeout would)."""
    import psycopg
    from sqlalchemy.engine import make_url

    conninfo = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_a_rested_connection_that_is_gone_is_replaced_before_use(tmp_path, pg_url):
    app = make_app(tmp_path, pg_url, after_idle=0.05)
    try:
        first = backend_pid(app)
        terminate(pg_url, first)
        time.sleep(0.1)
        assert backend_pid(app) != first  # pinged, found dead, replaced: the statement never saw it
    finally:
        with app.app_context():
            db.engine.dispose()


def test_a_connection_back_from_use_a_moment_ago_is_not_pinged(tmp_path, pg_url):
    app = make_app(tmp_path, pg_url, after_idle=3600)
    try:
        first = backend_pid(app)
        terminate(pg_url, first)
        with app.app_context():  # no ping: the dead connection is used, fails, and the pool is replaced
            with pytest.raises(Exception, match="terminat|closed|server"):
                db.session.execute(text("SELECT 1"))
            db.session.remove()
        assert backend_pid(app) != first
    finally:
        with app.app_context():
            db.engine.dispose()
