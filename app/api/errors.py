"""JSON errors under ``/api/``; the HTML pages keep Flask's default error pages."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
from sqlalchemy.exc import DataError
from werkzeug.exceptions import HTTPException, InternalServerError

from app.core.errors import ApiError
from app.core.extensions import db

log = logging.getLogger(__name__)


def _wants_json() -> bool:
    return request.path.startswith("/api/")


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return jsonify(exc.to_dict()), exc.status, exc.headers()

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if not _wants_json():
            if exc.code == 405:  # a page's address reached with the wrong method: the site's error page
                allow = {"Allow": ", ".join(exc.valid_methods)} if exc.valid_methods else {}  # type: ignore[attr-defined]
                return render_template("error.html", status=405, message=f"This address does not take a "
                                       f"{request.method} request."), 405, allow
            return exc
        messages = {
            404: "no such resource",
            405: f"method {request.method} is not allowed here",
            413: f"request body too large (limit: {app.config.get('MAX_CONTENT_LENGTH')} bytes)",
            429: f"too many requests ({exc.description}); retry after the Retry-After header's seconds",
        }
        response = jsonify({"error": messages.get(exc.code or 500, exc.description or exc.name)})
        response.status_code = exc.code or 500
        if exc.code == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(DataError)
    def data_error(exc: DataError):
        # defence in depth: a value the database refuses (PostgreSQL: a NUL character in text) that no check
        # caught is the client's bad input, not a server error
        log.warning("database refused a value on %s %s: %s", request.method, request.path, exc.orig)
        db.session.rollback()
        message = "a value holds characters the service does not accept (such as NUL)"
        if not _wants_json():
            return render_template("error.html", status=400, message=message), 400
        return jsonify({"error": message}), 400

    @app.errorhandler(RecursionError)
    def too_deep(exc: RecursionError):  # a structure nested too deeply that slipped past the body readers
        db.session.rollback()
        if not _wants_json():
            return render_template("error.html", status=400, message="input nested too deeply"), 400
        return jsonify({"error": "input nested too deeply"}), 400

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        db.session.rollback()
        if not _wants_json():
            return InternalServerError()
        return jsonify({"error": "internal server error"}), 500
