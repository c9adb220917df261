"""JSON errors under ``/api/``; every other error answers with the site's styled error page."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
from sqlalchemy.exc import DataError
from werkzeug.exceptions import HTTPException

from app.core.errors import ApiError
from app.core.extensions import db

log = logging.getLogger(__name__)


HTML_MESSAGES = {
    404: "There is no page at this address.",
    413: "What was sent is too large.",
    429: "Too many requests from your address; wait a minute and try again.",
    500: "Something went wrong on the server; it has been logged.",
}


def _wants_json() -> bool:
    return request.path.startswith("/api/")


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return jsonify(exc.to_dict()), exc.status, exc.headers()

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if not _wants_json():
            if exc.code is None or exc.code < 400:  # a redirect of the routing (a missing trailing slash)
                return exc
            # one styled error page for every HTML error (Werkzeug's own page was unstyled)
            headers = {}
            if exc.code == 405:  # a page's address reached with the wrong method
                if exc.valid_methods:  # type: ignore[attr-defined]
                    headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
                message = f"This address does not take a {request.method} request."
            else:
                message = HTML_MESSAGES.get(exc.code, exc.description or exc.name)
            return render_template("error.html", status=exc.code, message=message), exc.code, headers
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
            return render_template("error.html", status=500, message=HTML_MESSAGES[500]), 500
        return jsonify({"error": "internal server error"}), 500
