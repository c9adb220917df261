"""Alembic, driven from code: ``upgrade(app)`` / ``downgrade(app, "base")`` on the app's database."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from flask import Flask

from app.core.extensions import db

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _run(app: Flask, fn, revision: str) -> None:
    config = alembic_config()
    with app.app_context():
        with db.engine.begin() as connection:
            config.attributes["connection"] = connection
            fn(config, revision)


def upgrade(app: Flask, revision: str = "head") -> None:
    _run(app, command.upgrade, revision)


def downgrade(app: Flask, revision: str = "-1") -> None:
    _run(app, command.downgrade, revision)


def current(app: Flask) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with app.app_context(), db.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    """The newest revision in migrations/."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head
