"""The HTML pages: the job form, job and batch pages (live progress through the JSON API), gallery, images.

Every rule about what a valid job is lives in :func:`app.services.validate_job`; the form only turns the
posted strings into the same dict the JSON API receives (numbers parsed where they parse) and shows the
service's message on the form (HTTP 422) with the entered values kept.

The forms are plain POSTs. Each template renders ``form_guard()`` (``_macros.html``), which emits Flask-WTF's
``csrf_token`` hidden field as soon as ``CSRFProtect`` is initialised; the views ignore fields they do not
know, so adding CSRF protection needs no change here.
"""

from __future__ import annotations

import io
import re
from datetime import datetime, timezone
from typing import Any

from flask import Blueprint, current_app, redirect, render_template, request, send_file, url_for
from werkzeug.exceptions import RequestEntityTooLarge

from app import gallery, services
from app.models import FINAL_STATUSES, Image, ModelVersion
from app.services import JOB_FIELDS, ApiError

bp = Blueprint("web", __name__)

INT_FIELDS = ("n", "seed", "cluster")


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    """Service errors on a page (an unknown job id...) as an HTML page, not the API's JSON."""
    return render_template("error.html", status=exc.status, message=exc.message), exc.status


@bp.errorhandler(gallery.GalleryError)
def _gallery_error(exc: gallery.GalleryError):
    return render_template("error.html", status=exc.status, message=exc.message), exc.status


@bp.app_template_filter("condition")
def _condition_filter(job) -> str:
    return gallery.condition_text(job)


@bp.app_template_filter("utc")
def _utc_filter(value: datetime | None) -> str:
    value = services.aware(value)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


@bp.app_template_filter("iso")
def _iso_filter(value: datetime | None) -> str:
    return services.iso(value) or ""


@bp.app_template_filter("percent")
def _percent_filter(value: float | None) -> str:
    return f"{round(100 * float(value or 0))}%"


# -- the job form -----------------------------------------------------------------------------------
def job_request_from_form(form: Any) -> dict[str, Any]:
    """Posted form fields -> the dict :func:`services.validate_job` takes (as the JSON API gets it).

    Empty fields are left out (the service's defaults apply); integer fields are parsed when they parse and
    passed on as text otherwise, so the service's own message names the bad value. Unknown fields (a CSRF
    token, the submit button) are ignored.
    """
    data: dict[str, Any] = {}
    for key in JOB_FIELDS:
        raw = form.get(key)
        if raw is None:
            continue
        if key == "prompt":
            data[key] = raw  # an empty prompt is reported by the service
            continue
        value = raw.strip()
        if not value:
            continue
        if key in INT_FIELDS and re.fullmatch(r"[+-]?\d{1,20}", value):
            data[key] = int(value)
        else:
            data[key] = value
    return data


_FIELD_ORDER = ("n", "seed", "cluster", "prompt", "label", "model")


def field_of_error(message: str) -> str | None:
    """The form field a service message is about (to mark it invalid), or None."""
    for name in _FIELD_ORDER:
        if re.search(rf"(?<![\w']){name}(?![\w'])", message):
            return name
    return None


def _selected_model(models: list[ModelVersion], wanted: str | None) -> str | None:
    names = [m.name for m in models]
    for candidate in (wanted, current_app.config.get("DEFAULT_MODEL")):
        if candidate and candidate in names:
            return candidate
    return names[0] if names else None


def _render_form(values: dict[str, str], error: str | None = None, status: int = 200):
    models = services.serving_models()
    selected = _selected_model(models, values.get("model"))
    return render_template(
        "index.html", models=models, selected=selected, values=values, error=error,
        error_field=field_of_error(error) if error else None,
        max_images=int(current_app.config["MAX_IMAGES_PER_JOB"]),
        max_prompt=int(current_app.config["MAX_PROMPT_LENGTH"])), status


@bp.get("/")
def index():
    values = {key: request.args.get(key, "") for key in JOB_FIELDS if request.args.get(key) is not None}
    return _render_form(values)


@bp.post("/")
def submit_job():
    values = {key: request.form.get(key, "") for key in JOB_FIELDS if request.form.get(key) is not None}
    try:
        spec = services.validate_job(job_request_from_form(request.form))
    except ApiError as exc:
        return _render_form(values, exc.message, exc.status)
    job_id = services.create_job(spec)
    return redirect(url_for("web.job", job_id=job_id), code=303)


# -- jobs -------------------------------------------------------------------------------------------
@bp.get("/jobs/<job_id>")
def job(job_id: str):
    job = services.get_job(job_id)
    return render_template("job.html", job=job, final=job.status in FINAL_STATUSES,
                           api_url=url_for("api.get_job", job_id=job.id))


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    try:
        services.cancel_job(job_id)
    except ApiError as exc:
        if exc.status != 409:  # already finished: just show the job as it is
            raise
    return redirect(url_for("web.job", job_id=job_id), code=303)


# -- batches ----------------------------------------------------------------------------------------
def _render_batch_form(error: str | None = None, status: int = 200):
    return render_template("batch_new.html", error=error, models=services.serving_models(),
                           max_items=int(current_app.config["MAX_BATCH_ITEMS"]),
                           max_bytes=int(current_app.config.get("MAX_CONTENT_LENGTH") or 0)), status


@bp.get("/batches/new")
def new_batch():
    return _render_batch_form()


@bp.post("/batches")
def create_batch():
    try:
        upload = request.files.get("file")
    except RequestEntityTooLarge:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        return _render_batch_form(f"the file is too large (the limit is {limit} bytes)", 413)
    if upload is None or not upload.filename:
        return _render_batch_form("choose a .csv or .jsonl file to upload", 422)
    try:
        items = services.parse_batch_file(upload.filename, upload.read())
        specs = services.validate_batch(items)
    except ApiError as exc:
        return _render_batch_form(exc.message, exc.status)
    batch = services.create_batch(specs, upload.filename)
    return redirect(url_for("web.batch", batch_id=batch.id), code=303)


@bp.get("/batches/<batch_id>")
def batch(batch_id: str):
    batch = services.get_batch(batch_id)
    summary = services.batch_to_dict(batch)
    return render_template("batch.html", batch=batch, summary=summary,
                           final=summary["status"] in FINAL_STATUSES,
                           api_url=url_for("api.get_batch", batch_id=batch.id))


# -- gallery and images -----------------------------------------------------------------------------
@bp.get("/gallery")
def gallery_view():
    filters = gallery.GalleryFilters.from_args(request.args)
    page_number, per_page = gallery.parse_page_args(request.args)
    page = gallery.gallery_page(filters, page_number, per_page)
    per_page_arg = {"per_page": per_page} if per_page != gallery.DEFAULT_PER_PAGE else {}
    return render_template("gallery.html", page=page, filters=filters, model_names=gallery.model_names(),
                           link_args={**filters.as_args(), **per_page_arg})


@bp.get("/images/<image_id>")
def image(image_id: str):
    image = services.get_image(image_id)
    return render_template("image.html", image=image, job=image.job, version=image.job.model_version,
                           download_name=download_name(image))


def download_name(image: Image) -> str:
    """``priorforge-<model>-<seed>.png``: what a downloaded image is saved as."""
    model = re.sub(r"[^A-Za-z0-9_.-]+", "_", image.job.model_version.name)
    return f"priorforge-{model}-{image.seed}.png"


@bp.get("/images/<image_id>/download")
def download_image(image_id: str):
    """The PNG as an attachment with a descriptive name (read through the storage, whatever its backend)."""
    image = services.get_image(image_id)
    try:
        data = current_app.extensions["priorforge_storage"].get(image.storage_key)
    except KeyError:
        raise ApiError(404, f"the file of image {image_id} is missing from storage") from None
    return send_file(io.BytesIO(data), mimetype="image/png", as_attachment=True, download_name=download_name(image))
