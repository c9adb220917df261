"""Fixtures of the fuzz tests: the service on the embedded default (SQLite + the embedded broker) and on
PostgreSQL + Redis, each with the tiny test models registered, an admin token, and settings that keep a fuzz run
fast (a short ``wait``: no worker runs, so a waited-for job never ends) and away from its own limits (rate
limits and quotas are tested in tests/service/test_hardening.py; 429 is documented either way)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests.service.conftest import (PG_ADMIN_URL, REDIS_URL, _clean_env, _port_open, base_config,  # noqa: F401
                                    checkpoints, register_test_models)

FUZZ_CONFIG = {"JOB_WAIT_MAX_SECONDS": 0.2, "RATELIMIT_ENABLED": False, "MAX_IMAGES_IN_FLIGHT_PER_CLIENT": 10**9}


# read at import: the tests' autouse fixture removes PRIORFORGE_* variables from the environment
EXAMPLES = int(os.environ.get("PRIORFORGE_FUZZ_EXAMPLES", "8"))
REPORT = os.environ.get("PRIORFORGE_FUZZ_REPORT")


def examples() -> int:
    """Hypothesis examples per API operation and mode: a short run in the default suite, more with
    PRIORFORGE_FUZZ_EXAMPLES (docs/security.md has the long run's command and figures)."""
    return EXAMPLES


def _service(config: dict, checkpoints) -> tuple:
    from app import create_app
    from app.core.migrate import upgrade
    from app.services.accounts import create_user, issue_token

    # a module's app is built before the tests' isolation fixtures: every folder it could write is named here
    folder = Path(config["STORAGE_ROOT"]).parent
    app = create_app({"MODEL_CACHE_DIR": str(folder / "model-cache"), "METRICS_DIR": str(folder / "metrics"), **config})
    upgrade(app)
    with app.app_context():
        register_test_models(checkpoints)
        token = issue_token(create_user("fuzz-admin", "a long enough password")).token
    return app, token


def _dispose(app) -> None:
    from app.core.extensions import db

    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture(scope="module")
def sqlite_service(tmp_path_factory, checkpoints):
    app, token = _service(base_config(tmp_path_factory.mktemp("fuzz-sqlite"), **FUZZ_CONFIG), checkpoints)
    yield app, token
    _dispose(app)


@pytest.fixture(scope="module")
def postgres_service(tmp_path_factory, checkpoints):
    import psycopg
    import redis
    from sqlalchemy.engine import make_url

    admin, redis_url = make_url(PG_ADMIN_URL), make_url(REDIS_URL)
    if not _port_open(admin.host or "127.0.0.1", admin.port or 5432) or \
            not _port_open(redis_url.host or "127.0.0.1", redis_url.port or 6379):
        pytest.skip("PostgreSQL or Redis not reachable (PRIORFORGE_TEST_POSTGRES_URL, PRIORFORGE_TEST_REDIS_URL)")
    name, prefix = f"pf_fuzz_{uuid.uuid4().hex[:12]}", f"pffuzz-{uuid.uuid4().hex[:10]}:"
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    config = base_config(tmp_path_factory.mktemp("fuzz-pg"), **FUZZ_CONFIG,
                         SQLALCHEMY_DATABASE_URI=admin.set(database=name).render_as_string(hide_password=False),
                         CELERY_BROKER_URL=REDIS_URL, BROKER_KEY_PREFIX=prefix)
    app, token = _service(config, checkpoints)
    yield app, token
    _dispose(app)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=500))
    if keys:
        client.delete(*keys)
    client.close()
