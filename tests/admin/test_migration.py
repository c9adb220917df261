"""Migration 0002 (users, api_tokens, datasets): upgrade and downgrade on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

NEW_TABLES = {"users", "api_tokens", "datasets"}


def _round_trip(app):
    from app.extensions import db
    from app.migrate import current, downgrade, upgrade

    upgrade(app)
    assert current(app) == "0002"
    with app.app_context():
        assert NEW_TABLES <= set(inspect(db.engine).get_table_names())
    downgrade(app, "0001")
    assert current(app) == "0001"
    with app.app_context():
        tables = set(inspect(db.engine).get_table_names())
        assert not NEW_TABLES & tables and "jobs" in tables
    upgrade(app)
    assert current(app) == "0002"
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_sqlite(tmp_path):
    from app import create_app

    _round_trip(create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'm.sqlite3'}",
                            "CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'b.sqlite3'}"}))


@pytest.mark.integration
def test_postgres(tmp_path, pg_url):
    from app import create_app

    _round_trip(create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": pg_url,
                            "CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'b.sqlite3'}"}))
