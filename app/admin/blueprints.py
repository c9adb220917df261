"""The admin's blueprints: HTML pages under ``/admin`` (session sign-in, CSRF-protected forms) and a JSON API
under ``/api/v1/admin`` (bearer tokens only). Access is checked for EVERY route of both by one app-level hook
(:func:`guard`), registered before Flask-WTF's CSRF hook so that an anonymous caller is turned away before any
request body is read, and the data set upload's larger body limit applies only to admins.
"""

from __future__ import annotations

from flask import Blueprint, g, jsonify, redirect, render_template, request, url_for

from app.admin.sessions import session_user
from app.core.errors import ApiError
from app.services.accounts import bearer_user
from app.services.uploads import limit

bp = Blueprint("admin", __name__)  # HTML, /admin
api_bp = Blueprint("admin_api", __name__)  # JSON, /api/v1/admin

PUBLIC_ENDPOINTS = {"admin.login"}  # everything else under /admin and /api/v1/admin needs an admin
SIGNED_IN_ENDPOINTS = {"admin.logout", "admin.change_password"}  # ... except these, open to any signed-in user
UPLOAD_ENDPOINTS = {"admin.upload_dataset", "admin_api.upload_dataset_api"}


def guard():
    """The access check of every admin route (see the module's docstring)."""
    if request.blueprint not in ("admin", "admin_api") or request.endpoint in PUBLIC_ENDPOINTS:
        return None
    if request.blueprint == "admin_api":
        user = bearer_user(request.headers.get("Authorization"))
        if user is None:
            return (jsonify({"error": "authentication required: send Authorization: Bearer <token>"}), 401,
                    {"WWW-Authenticate": 'Bearer realm="priorforge"'})
        if not user.is_admin:
            return jsonify({"error": "this token's user is not an admin"}), 403
    else:
        user = session_user()
        if user is None:
            return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
        if not user.is_admin and request.endpoint not in SIGNED_IN_ENDPOINTS:
            return render_template("error.html", status=403, message="Admins only."), 403
    g.admin_user = user
    if request.endpoint in UPLOAD_ENDPOINTS:
        request.max_content_length = limit("DATASET_MAX_UPLOAD_BYTES") + 64 * 1024  # + form overhead
    return None


@bp.errorhandler(ApiError)
def _page_error(exc: ApiError):
    return render_template("error.html", status=exc.status, message=exc.message), exc.status


@api_bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    return jsonify(exc.to_dict()), exc.status, exc.headers()
