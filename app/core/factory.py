"""The Flask app every process of the service builds on: configuration, the database, image storage and
the task queue (a Celery app bound to it, sending by task name). ``app.create_app`` adds the web's pages, JSON
API and admin on top; ``workers.celery_app`` adds the tasks.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from flask import Flask
from sqlalchemy import event

from app.core import metrics
from app.core.config import load_config
from app.core.extensions import db
from app.core.queue import celery_init_app
from app.core.storage import StorageError, storage_from_config

log = logging.getLogger(__name__)


def create_base_app(test_config: dict[str, Any] | None = None) -> Flask:
    # import name "app": templates, static files and the instance folder are those of the app package
    app = Flask("app", instance_relative_config=True)
    load_config(app, test_config)
    _private_folder(app.instance_path)
    for url in (app.config["SQLALCHEMY_DATABASE_URI"], str(app.config["CELERY_BROKER_URL"])):
        _private_sqlite_file(url)

    metrics.configure(app)  # before any metric is recorded: the folder every process writes its counters to
    db.init_app(app)
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            event.listen(db.engine, "connect", _sqlite_pragmas)
    storage = app.extensions["priorforge_storage"] = storage_from_config(app.config)  # bad settings: ValueError
    try:  # a missing bucket or a store that is down: said at once; the web still starts (health: degraded)
        storage.check()
    except StorageError as exc:
        log.error("storage: %s", exc)
        app.extensions["priorforge_storage_error"] = str(exc)
    celery_init_app(app)
    return app


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer (web + worker)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _private_folder(path: str) -> None:
    """The instance folder holds the secret key, the databases (password hashes, token hashes) and the
    uploads: only its owner may list or read it (0700), whatever the umask made of it."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.stat(path)
    if info.st_uid == os.getuid() and info.st_mode & 0o077:
        os.chmod(path, 0o700)


def _private_sqlite_file(url: str) -> None:
    """A SQLite database of the service (``sqlite:///``, the embedded broker's ``sqla+sqlite:///``) is created
    0600 before SQLite creates it with the umask (0644: password hashes world-readable), and an existing one
    readable by others is made 0600, with its -wal and -shm files."""
    scheme, sep, rest = url.partition(":///")
    if not sep or not scheme.split("+")[-1] == "sqlite" or not rest or rest.startswith(":memory:"):
        return
    path = rest.split("?", 1)[0]
    if not os.path.isdir(os.path.dirname(path) or "."):
        return  # SQLite reports the missing folder itself
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # an empty file is a new, empty database
        for each in (path, f"{path}-wal", f"{path}-shm"):
            if os.path.exists(each) and os.stat(each).st_uid == os.getuid() and os.stat(each).st_mode & 0o077:
                os.chmod(each, 0o600)
    except OSError as exc:  # a read-only file system or another owner's file: SQLite has the last word
        log.warning("could not make %s private: %s", path, exc)
