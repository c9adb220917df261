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
from app.core.db_ping import ping_idle_connections
from app.core.extensions import db
from app.core.files import private_folder, sqlite_connect_listener
from app.core.queue import celery_init_app
from app.core.storage import StorageError, storage_from_config

log = logging.getLogger(__name__)


def create_base_app(test_config: dict[str, Any] | None = None) -> Flask:
    # import name "app": templates, static files and the instance folder are those of the app package
    app = Flask("app", instance_relative_config=True)
    load_config(app, test_config)
    metrics.configure(app)  # before any metric is recorded: the folder every process writes its counters to
    if _uses_instance_folder(app):
        private_folder(app.instance_path)  # the secret key, the databases, the uploads: 0700
    db.init_app(app)
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            event.listen(db.engine, "connect", _sqlite_pragmas)
            event.listen(db.engine, "connect", sqlite_connect_listener(db.engine.url.database))  # 0600
        elif app.config["DB_PING_AFTER_IDLE"] > 0:
            ping_idle_connections(db.engine, app.config["DB_PING_AFTER_IDLE"])
    storage = app.extensions["priorforge_storage"] = storage_from_config(app.config)  # bad settings: ValueError
    try:  # a missing bucket or a store that is down: said at once; the web still starts (health: degraded)
        storage.check()
    except StorageError as exc:
        log.error("storage: %s", exc)
        app.extensions["priorforge_storage_error"] = str(exc)
    celery_init_app(app)
    return app


def _uses_instance_folder(app: Flask) -> bool:
    """Whether a setting puts something in the instance folder: only then is it created, so that an app whose
    every path is configured elsewhere leaves no empty folder behind."""
    folder = app.instance_path.rstrip(os.sep)
    for key, value in app.config.items():
        if key == "SECRET_KEY_FILE":
            continue  # a generated key's folder was made private when the key was written (load_config)
        if isinstance(value, str) and (value.endswith(folder) or f"{folder}{os.sep}" in value):
            return True
    return False


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer (web + worker)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()

