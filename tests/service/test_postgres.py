"""Migrations on PostgreSQL: upgrade from an empty database and downgrade back to base."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect, text

from app.core.migrate import head_revision

HEAD = head_revision()

pytestmark = pytest.mark.integration


def test_postgres_upgrade_from_empty_and_downgrade_to_base(tmp_path, pg_url, checkpoints):
    from app import create_app
    from app.core.extensions import db
    from app.core.migrate import current, downgrade, upgrade
    from app.services.model_versions import register_model

    app = create_app({"SQLALCHEMY_DATABASE_URI": pg_url, "STORAGE_ROOT": str(tmp_path / "images"),
                      "CELERY_BROKER_URL": "memory://"})
    engine = create_engine(app.config["SQLALCHEMY_DATABASE_URI"])
    try:
        assert inspect(engine).get_table_names() == []
        upgrade(app)
        assert current(app) == HEAD
        assert {"jobs", "batches", "images", "model_versions", "alembic_version"} <= set(inspect(engine).get_table_names())
        with app.app_context():
            version, _ = register_model("tiny", checkpoints["class"])
            assert version.serving
            # the partial unique index exists with its WHERE clause on PostgreSQL
            with db.engine.connect() as conn:
                indexdef = conn.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname = "
                                             "'uq_model_versions_serving_name'")).scalar_one()
            assert "WHERE serving" in indexdef
            db.session.remove()
            db.engine.dispose()
        downgrade(app, "base")
        assert current(app) is None
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        upgrade(app)
        assert current(app) == HEAD
    finally:
        engine.dispose()
        with app.app_context():
            db.engine.dispose()


def test_the_commit_flush_benchmark_measures_both_settings_and_drops_its_table(pg_url):
    import psycopg

    from bench.commit_flush import main

    assert main(["--database-url", pg_url, "--commits", "3", "--rounds", "1"]) == 0
    with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        left = conn.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'pf_commit_flush_%'").fetchone()
    assert left == (0,)
