"""The priorforge web service: ``create_app(test_config=None)`` builds the Flask app of the web process.

It is the service core (:func:`app.core.factory.create_base_app`: configuration, database, storage, the queue)
plus the HTML pages (:mod:`app.web`), the JSON API (:mod:`app.api`) and the admin (:mod:`app.admin`). The
configuration and its precedence are in :mod:`app.core.config`. The web process imports no model code; the
workers (:mod:`workers.celery_app`) build the same core with the tasks instead of the pages.
"""

from __future__ import annotations

from typing import Any

from flask import Flask


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    from app import admin, api, web
    from app.api import errors
    from app.core.extensions import csrf
    from app.core.factory import create_base_app

    app = create_base_app(test_config)
    app.register_blueprint(api.bp, url_prefix="/api/v1")
    app.register_blueprint(web.bp)
    admin.init_app(app)  # its access hook runs before the CSRF hook (no body is read for anonymous callers)
    csrf.init_app(app)
    csrf.exempt(api.bp)  # JSON API: no cookies are read there
    csrf.exempt(admin.api_bp)  # bearer tokens only
    errors.register(app)
    return app
