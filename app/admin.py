"""Admin area: HTML pages under ``/admin`` (session login, CSRF-protected forms) and a JSON API under
``/api/v1/admin`` (bearer tokens only). Access is checked for EVERY route of both blueprints by one app-level
hook (:func:`_guard`), registered before Flask-WTF's CSRF hook so that an anonymous caller is turned away
before any request body is read, and the data set upload's larger body limit applies only to admins.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, g, jsonify, redirect, render_template, request, url_for
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import RequestEntityTooLarge

from app import auth, uploads
from app.services import ApiError

bp = Blueprint("admin", __name__)  # HTML, /admin
api_bp = Blueprint("admin_api", __name__)  # JSON, /api/v1/admin

PUBLIC_ENDPOINTS = {"admin.login"}  # everything else under /admin and /api/v1/admin needs an admin
UPLOAD_ENDPOINTS = {"admin.upload_dataset", "admin_api.upload_dataset_api"}


def init_app(app: Flask) -> None:
    """Register the blueprints and the access hook (call BEFORE ``csrf.init_app``)."""
    app.before_request(_guard)
    app.register_blueprint(bp, url_prefix="/admin")
    app.register_blueprint(api_bp, url_prefix="/api/v1/admin")

    @app.errorhandler(CSRFError)
    def _csrf_error(exc: CSRFError):
        return render_template("error.html", status=400, message=f"The form could not be accepted: {exc.description} "
                               "Reload the page and send it again."), 400


def _guard():
    if request.blueprint not in ("admin", "admin_api") or request.endpoint in PUBLIC_ENDPOINTS:
        return None
    if request.blueprint == "admin_api":
        user = auth.bearer_user(request.headers.get("Authorization"))
        if user is None:
            return (jsonify({"error": "authentication required: send Authorization: Bearer <token>"}), 401,
                    {"WWW-Authenticate": 'Bearer realm="priorforge"'})
        if not user.is_admin:
            return jsonify({"error": "this token's user is not an admin"}), 403
    else:
        user = auth.session_user()
        if user is None:
            return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
        if not user.is_admin:
            return render_template("error.html", status=403, message="Admins only."), 403
    g.admin_user = user
    if request.endpoint in UPLOAD_ENDPOINTS:
        request.max_content_length = uploads.limit("DATASET_MAX_UPLOAD_BYTES") + 64 * 1024  # + form overhead
    return None


def _too_large() -> uploads.UploadRejected:
    return uploads.UploadRejected(413, f"the upload is too large; the limit is "
                                       f"{uploads.limit('DATASET_MAX_UPLOAD_BYTES')} bytes; nothing was stored")


def _upload_from_request():
    """(data set name, file) of a multipart upload; 413 past the limit."""
    try:
        upload = request.files.get("file")
        name = request.form.get("name", "")
    except RequestEntityTooLarge:
        raise _too_large() from None
    if upload is None or not upload.filename:
        raise ApiError(422, "send the zip archive as the multipart field 'file' (and optionally 'name')")
    if not name.strip():
        name = upload.filename.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return name, upload


def _safe_next(target: str | None) -> str:
    parts = urlsplit(target or "")
    if target and not parts.scheme and not parts.netloc and parts.path.startswith("/admin") \
            and not target.startswith("//"):
        return target
    return url_for("admin.index")


# -- HTML ---------------------------------------------------------------------------------------------
@bp.errorhandler(ApiError)
def _page_error(exc: ApiError):
    return render_template("error.html", status=exc.status, message=exc.message), exc.status


@bp.route("/login", methods=["GET", "POST"])
def login():
    error, status, headers = None, 200, {}
    if request.method == "POST":
        username, address = request.form.get("username", "").strip(), request.remote_addr or "unknown"
        retry_after = auth.login_retry_after(username, address)
        if retry_after is not None:  # checked before the password: a blocked guess costs no hashing
            error, status = f"Too many failed sign-ins; try again in {retry_after} seconds.", 429
            headers = {"Retry-After": str(retry_after)}
        else:
            user = auth.authenticate(username, request.form.get("password", ""))
            if user is not None:
                auth.clear_login_failures(username, address)
                auth.login(user)
                return redirect(_safe_next(request.args.get("next")), code=303)
            auth.record_login_failure(username, address)
            error, status = "Wrong user name or password.", 401
    return render_template("admin/login.html", error=error, username=request.form.get("username", "")), \
        status, headers


@bp.post("/logout")
def logout():
    auth.logout()
    return redirect(url_for("admin.login"), code=303)


def _render_index(*, error: str | None = None, rejected: list[dict[str, str]] | None = None,
                  new_token: str | None = None, created: Any = None, status: int = 200):
    return render_template(
        "admin/index.html", user=g.admin_user, datasets=uploads.uploaded_datasets(),
        builtins=uploads.builtin_datasets(), tokens=[t for t in g.admin_user.tokens if t.revoked_at is None],
        error=error, rejected=rejected or [], new_token=new_token, created=created,
        max_upload=uploads.limit("DATASET_MAX_UPLOAD_BYTES"), max_images=uploads.limit("DATASET_MAX_IMAGES"),
        max_side=uploads.limit("DATASET_MAX_IMAGE_SIDE")), status


@bp.get("/")
def index():
    return _render_index()


@bp.post("/datasets")
def upload_dataset():
    try:
        name, upload = _upload_from_request()
        row = uploads.store_upload(name, upload.stream, upload.filename or "upload.zip", g.admin_user)
    except uploads.UploadRejected as exc:
        return _render_index(error=exc.message, rejected=exc.details["rejected"], status=exc.status)
    except ApiError as exc:
        return _render_index(error=exc.message, status=exc.status)
    return _render_index(created=row, status=201)


@bp.post("/tokens")
def create_token():
    issued = auth.issue_token(g.admin_user, request.form.get("name", "script"))
    return _render_index(new_token=issued.token, status=201)


@bp.post("/tokens/<int:token_id>/revoke")
def revoke_token(token_id: int):
    auth.revoke_token(token_id, g.admin_user)
    return redirect(url_for("admin.index"), code=303)


# -- JSON ---------------------------------------------------------------------------------------------
@api_bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    return jsonify(exc.to_dict()), exc.status


@api_bp.get("/datasets")
def list_datasets():
    return jsonify({"datasets": [uploads.dataset_to_dict(d) for d in uploads.uploaded_datasets()],
                    "builtin": uploads.builtin_datasets()})


@api_bp.post("/datasets")
def upload_dataset_api():
    name, upload = _upload_from_request()
    row = uploads.store_upload(name, upload.stream, upload.filename or "upload.zip", g.admin_user)
    return jsonify(uploads.dataset_to_dict(row)), 201


@api_bp.get("/datasets/<name>")
def get_dataset(name: str):
    for row in uploads.uploaded_datasets():
        if row.name == name:
            return jsonify(uploads.dataset_to_dict(row))
    raise ApiError(404, f"no uploaded data set named {name!r}")

from app import admin_trainings  # noqa: E402,F401  (registers the training and promotion routes on bp/api_bp)
