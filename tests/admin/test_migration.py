"""Migrations 0002 (users, api_tokens, datasets), 0003 (training_runs), 0004 (login_failures), 0005
(model_versions.card), 0006 (ownership columns, users.session_version), 0008 (model_versions' checkpoint hash and store key), 0009 (outbox, idempotency_keys, jobs.deaths/isolated), 0010 (webhooks, worker status) and 0011
(experiments, jobs.experiment_id/operation) and 0012 (worker_nodes, jobs.worker_main, ix_jobs_started_at): upgrade, downgrade and upgrade again on SQLite and PostgreSQL, and the migrated schema
matches the models' metadata (Alembic's autogenerate comparison finds no difference)."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

ADMIN_TABLES = {"users", "api_tokens", "datasets", "training_runs", "login_failures"}
STORE_COLUMNS = {"weights_sha256", "checkpoint_key", "checkpoint_files"}


def _schema_diff(app) -> list:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from app.core.extensions import db

    with app.app_context(), db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return [d for d in compare_metadata(context, db.metadata) if d[0] != "remove_table" or
                d[1].name != "alembic_version"]


def _round_trip(app):
    from app.core.extensions import db
    from app.core.migrate import current, downgrade, head_revision, upgrade

    upgrade(app)
    assert current(app) == head_revision() == "0012"
    with app.app_context():
        assert ADMIN_TABLES | {"outbox", "idempotency_keys"} <= set(inspect(db.engine).get_table_names())
        assert {"card", *STORE_COLUMNS} <= {c["name"] for c in inspect(db.engine).get_columns("model_versions")}
        assert "session_version" in {c["name"] for c in inspect(db.engine).get_columns("users")}
        assert {"owner_token_id", "cancel_hash", "client_key", "deaths"} <= {c["name"] for c in
                                                                             inspect(db.engine).get_columns("jobs")}
    assert _schema_diff(app) == []
    with app.app_context():
        assert {"webhook_deliveries", "worker_status"} <= set(inspect(db.engine).get_table_names())
    with app.app_context():
        assert "experiments" in set(inspect(db.engine).get_table_names())
    downgrade(app, "0011")
    with app.app_context():
        assert "worker_nodes" not in set(inspect(db.engine).get_table_names())
        assert "worker_main" not in {c["name"] for c in inspect(db.engine).get_columns("jobs")}
    downgrade(app, "0010")
    with app.app_context():
        assert "experiments" not in set(inspect(db.engine).get_table_names())
        assert "experiment_id" not in {c["name"] for c in inspect(db.engine).get_columns("jobs")}
    downgrade(app, "0009")
    with app.app_context():
        assert not {"webhook_deliveries", "worker_status"} & set(inspect(db.engine).get_table_names())
        assert "webhook" not in {c["name"] for c in inspect(db.engine).get_columns("jobs")}
        assert "webhook_secret" not in {c["name"] for c in inspect(db.engine).get_columns("api_tokens")}
    downgrade(app, "0008")
    with app.app_context():
        assert not {"outbox", "idempotency_keys"} & set(inspect(db.engine).get_table_names())
        assert "deaths" not in {c["name"] for c in inspect(db.engine).get_columns("jobs")}
    downgrade(app, "0006")
    with app.app_context():
        assert not STORE_COLUMNS & {c["name"] for c in inspect(db.engine).get_columns("model_versions")}
    downgrade(app, "0005")
    with app.app_context():
        assert "session_version" not in {c["name"] for c in inspect(db.engine).get_columns("users")}
        assert "cancel_hash" not in {c["name"] for c in inspect(db.engine).get_columns("batches")}
    downgrade(app, "0004")
    with app.app_context():
        assert "card" not in {c["name"] for c in inspect(db.engine).get_columns("model_versions")}
    downgrade(app, "0002")
    with app.app_context():
        assert not {"training_runs", "login_failures"} & set(inspect(db.engine).get_table_names())
    downgrade(app, "0001")
    assert current(app) == "0001"
    with app.app_context():
        tables = set(inspect(db.engine).get_table_names())
        assert not ADMIN_TABLES & tables and "jobs" in tables
    upgrade(app)
    assert current(app) == head_revision()
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
