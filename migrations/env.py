"""Alembic environment: the URL comes from the caller's connection (``app.core.migrate``), ``-x url=...``,
``sqlalchemy.url`` in alembic.ini, or else the service's configuration (``create_base_app()``)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from app.core import tables  # noqa: F401  (registers the tables)
from app.core.extensions import db

config = context.config
target_metadata = db.metadata


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from app.core.factory import create_base_app

    return create_base_app().config["SQLALCHEMY_DATABASE_URI"]


def _configure(connection=None, url=None) -> None:
    dialect = connection.dialect.name if connection is not None else url.split(":")[0]
    context.configure(connection=connection, url=url, target_metadata=target_metadata,
                      render_as_batch=dialect.startswith("sqlite"),  # SQLite cannot ALTER most things
                      compare_type=True)


def run_migrations_offline() -> None:
    _configure(url=_url())
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as conn:
        _configure(connection=conn)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
