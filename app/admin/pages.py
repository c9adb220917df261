"""The admin's HTML pages: sign-in and sign-out, the index (data sets, the upload form, API tokens)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import current_app, g, redirect, render_template, request, url_for

from app.admin import sessions
from app.admin.blueprints import bp
from app.admin.datasets import upload_from_request
from app.core.errors import ApiError
from app.services import accounts
from app.services.datasets import builtin_datasets, uploaded_datasets
from app.services.uploads import UploadRejected, limit, store_upload


def _safe_next(target: str | None) -> str:
    parts = urlsplit(target or "")
    if target and not parts.scheme and not parts.netloc and parts.path.startswith("/admin") \
            and not target.startswith("//"):
        return target
    return url_for("admin.index")


@bp.route("/login", methods=["GET", "POST"])
def login():
    error, status, headers = None, 200, {}
    if request.method == "POST":
        username, address = request.form.get("username", "").strip(), request.remote_addr or "unknown"
        # counted (atomically) before the password is checked: a blocked guess costs no hashing
        retry_after = accounts.reserve_login_attempt(username, address)
        if retry_after is not None:
            error, status = f"Too many failed sign-ins; try again in {retry_after} seconds.", 429
            headers = {"Retry-After": str(retry_after)}
        else:
            user = accounts.authenticate(username, request.form.get("password", ""))
            if user is not None:
                accounts.clear_login_failures(username, address)
                sessions.login(user)
                return redirect(_safe_next(request.args.get("next")), code=303)
            error, status = "Wrong user name or password.", 401
    return render_template("admin/login.html", error=error, username=request.form.get("username", "")), \
        status, headers


@bp.post("/logout")
def logout():
    """Any signed-in user (admin or not) may sign out; it revokes every session of theirs."""
    sessions.logout()
    return redirect(url_for("admin.login"), code=303)


def _render_index(*, error: str | None = None, rejected: list[dict[str, str]] | None = None,
                  new_token: str | None = None, created: Any = None, status: int = 200):
    return render_template(
        "admin/index.html", user=g.admin_user, datasets=uploaded_datasets(),
        builtins=builtin_datasets(), tokens=[t for t in g.admin_user.tokens if t.revoked_at is None],
        error=error, rejected=rejected or [], new_token=new_token, created=created,
        max_upload=limit("DATASET_MAX_UPLOAD_BYTES"), max_images=limit("DATASET_MAX_IMAGES"),
        max_side=limit("DATASET_MAX_IMAGE_SIDE"), data_root=current_app.config.get("DATA_ROOT")), status


@bp.get("/")
def index():
    created = request.args.get("created")
    row = next((d for d in uploaded_datasets() if d.name == created), None) if created else None
    return _render_index(created=row)


@bp.get("/datasets")
def datasets_page():
    """The upload form posts here; a reload or a bookmark of this address lands on the data set list."""
    return redirect(url_for("admin.index", _anchor="datasets-heading"), code=303)


@bp.post("/datasets")
def upload_dataset():
    try:
        name, upload = upload_from_request()
        row = store_upload(name, upload.stream, upload.filename or "upload.zip", g.admin_user)
    except UploadRejected as exc:
        return _render_index(error=exc.message, rejected=exc.details["rejected"], status=exc.status)
    except ApiError as exc:
        return _render_index(error=exc.message, status=exc.status)
    # POST, redirect, GET: the page after an upload is /admin/ (a reload does not post the zip again)
    return redirect(url_for("admin.index", created=row.name, _anchor="datasets-heading"), code=303)


@bp.post("/tokens")
def create_token():
    issued = accounts.issue_token(g.admin_user, request.form.get("name", "script"))
    return _render_index(new_token=issued.token, status=201)


@bp.post("/tokens/<int:token_id>/revoke")
def revoke_token(token_id: int):
    accounts.revoke_token(token_id, g.admin_user)
    return redirect(url_for("admin.index"), code=303)
