"""The priorforge web service: ``create_app(test_config=None)`` builds the Flask app of the web process.

It is the service core (:func:`app.core.factory.create_base_app`: configuration, database, storage, the queue)
plus the HTML pages (:mod:`app.web`), the JSON API (:mod:`app.api`) and the admin (:mod:`app.admin`), behind
the hardening of docs/security.md (client identity, rate limits, security headers). The configuration and its
precedence are in :mod:`app.core.config`. The web process imports no model code; the workers
(:mod:`workers.celery_app`) build the same core with the tasks instead of the pages.
"""

from __future__ import annotations

from typing import Any

from urllib.parse import urlsplit

from flask import Flask, abort, g, jsonify, request


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    from app import admin, api, web
    from app.api import errors
    from app.core.extensions import csrf
    from app.core.factory import create_base_app
    from app.core.headers import init_headers
    from app.core.limits import init_limiter

    app = create_base_app(test_config)
    # before every other hook: who is asking (rate limits, quotas, ownership), and no NUL in a path or query
    app.before_request(_identify_client)
    app.before_request(_refuse_cross_site_api_writes)
    app.register_blueprint(api.bp, url_prefix="/api/v1")
    app.register_blueprint(web.bp)
    init_limiter(app)  # its check runs after _identify_client and before the admin's access hook
    admin.init_app(app)  # its access hook runs before the CSRF hook (no body is read for anonymous callers)
    csrf.init_app(app)
    csrf.exempt(api.bp)  # JSON API: no cookies are read there
    csrf.exempt(admin.api_bp)  # bearer tokens only
    errors.register(app)
    init_headers(app)
    return app


def _identify_client() -> None:
    from app.services.accounts import identify_client

    # PostgreSQL refuses NUL in text, and no id, name or filter holds one: turn such requests away before any
    # lookup (a path as not found, a query as malformed)
    if "\x00" in request.path:
        abort(404)
    if any("\x00" in key or "\x00" in value for key, value in request.args.items(multi=True)):
        abort(400, "NUL character in the query string")
    client = identify_client(request.headers.get("Authorization"), request.remote_addr)
    g.client, g.client_key = client, client.key


SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def _refuse_cross_site_api_writes():
    """The JSON API takes no cookies and so no CSRF token, but a browser still sends another site's plain
    form (multipart, urlencoded, text/plain: no CORS preflight) with its visitor's address, and so his quota.
    A write under /api/ that a browser marks as sent from another site is refused: ``Sec-Fetch-Site`` other
    than ``same-origin`` or ``none`` (a typed URL, a bookmark), else an ``Origin`` whose host is not this
    one (``null`` included). Scripts and curl send neither header and are not affected."""
    if request.method in SAFE_METHODS or not request.path.startswith("/api/"):
        return None
    fetch_site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    if fetch_site is not None:
        cross = fetch_site.strip().lower() not in ("same-origin", "none")
    elif origin is not None:
        cross = urlsplit(origin.strip()).netloc.lower() != request.host.lower()
    else:
        return None
    if cross:
        return jsonify({"error": "cross-site request refused: the API does not take writes sent by another "
                                 "site's page (Sec-Fetch-Site / Origin); call it from a script or this site"}), 403
    return None
