"""The Flask app every process of the service builds on: configuration, the database, image storage and
the task queue (a Celery app bound to it, sending by task name). ``app.create_app`` adds the web's pages, JSON
API and admin on top; ``workers.celery_app`` adds the tasks.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask
from sqlalchemy import event

from app.core.config import load_config
from app.core.extensions import db
from app.core.queue import celery_init_app
from app.core.storage import storage_from_config


def create_base_app(test_config: dict[str, Any] | None = None) -> Flask:
    # import name "app": templates, static files and the instance folder are those of the app package
    app = Flask("app", instance_relative_config=True)
    load_config(app, test_config)
    os.makedirs(app.instance_path, exist_ok=True)

    db.init_app(app)
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            event.listen(db.engine, "connect", _sqlite_pragmas)
    app.extensions["priorforge_storage"] = storage_from_config(app.config)
    celery_init_app(app)
    return app


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer (web + worker)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
