"""Admin area: HTML pages under ``/admin`` (session login, CSRF-protected forms) and a JSON API under
``/api/v1/admin`` (bearer tokens only). Access is checked for EVERY route of both blueprints by one app-level
hook (:func:`app.admin.blueprints.guard`), registered before Flask-WTF's CSRF hook so that an anonymous caller
is turned away before any request body is read, and the data set upload's larger body limit applies only to
admins.
"""

from __future__ import annotations

from flask import Flask, Response, render_template, request
from flask_wtf.csrf import CSRFError

from app.admin import account, datasets, pages, trainings  # noqa: F401  (register their routes on bp and api_bp)
from app.admin.blueprints import api_bp, bp, guard
from app.admin.operations import ops_bp


def init_app(app: Flask) -> None:
    """Register the blueprints and the access hook (call BEFORE ``csrf.init_app``)."""
    app.before_request(guard)
    app.after_request(_no_store)
    app.register_blueprint(bp, url_prefix="/admin")
    app.register_blueprint(api_bp, url_prefix="/api/v1/admin")
    app.register_blueprint(ops_bp)  # /metrics: its own access check (admins or allowed networks)

    @app.errorhandler(CSRFError)
    def _csrf_error(exc: CSRFError):
        return render_template("error.html", status=400, message=f"The form could not be accepted: {exc.description} "
                               "Reload the page and send it again."), 400


def _no_store(response: Response) -> Response:
    """Admin answers are never kept by a browser or a proxy cache: they show accounts, data sets and, once, a
    new API token, and a shared computer's back button or disk cache must not show them to the next user."""
    if request.blueprint in ("admin", "admin_api"):
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"  # HTTP/1.0 caches
    return response
