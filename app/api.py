"""The JSON API under ``/api/v1`` (documented in :mod:`app.openapi`, served at ``/api/v1/openapi.json``)."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, current_app, jsonify, request, send_file, url_for
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

from app import services
from app.job_events import parse_wait, wait_until_ended
from app.models import FINAL_STATUSES
from app.services import ApiError

bp = Blueprint("api", __name__)


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    return jsonify(exc.to_dict()), exc.status


def _json_body() -> Any:
    """The request's JSON; 415 for another content type, 400 for malformed JSON."""
    if not request.is_json:
        raise ApiError(415, f"expected Content-Type: application/json, got {request.mimetype or 'none'!r}")
    try:
        return request.get_json()
    except (BadRequest, UnsupportedMediaType):
        raise ApiError(400, "malformed JSON in the request body") from None


def _wait_seconds() -> float | None:
    """The optional ``wait`` query parameter (seconds to wait for the job(s) to end); 422 if malformed."""
    try:
        return parse_wait(request.args.get("wait"), float(current_app.config["JOB_WAIT_MAX_SECONDS"]))
    except ValueError as exc:
        raise ApiError(422, str(exc), field="wait") from None


@bp.post("/jobs")
def create_job():
    wait = _wait_seconds()  # checked before anything is stored
    spec = services.validate_job(_json_body())
    job_id = services.create_job(spec)
    url = url_for("api.get_job", job_id=job_id)
    if wait is None:
        return jsonify({"id": job_id, "url": url, "status": "queued"}), 202, {"Location": url}
    # synchronous use: answer with the whole job once it has ended (200), or as it stands after `wait` s (202)
    job = wait_until_ended(wait, _job_reader(job_id), [job_id])
    return jsonify(services.job_to_dict(job)), 200 if job.status in FINAL_STATUSES else 202, {"Location": url}


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    wait = _wait_seconds()
    job = wait_until_ended(wait, _job_reader(job_id), [job_id]) if wait is not None else services.get_job(job_id)
    return jsonify(services.job_to_dict(job))


def _job_reader(job_id: str):
    def read():
        job = services.get_job(job_id)
        return job, [] if job.status in FINAL_STATUSES else [job_id]
    return read


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    return jsonify(services.job_to_dict(services.cancel_job(job_id)))


@bp.post("/batches")
def create_batch():
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None or not upload.filename:
            raise ApiError(422, "multipart upload needs a 'file' field (a .csv or .jsonl file)")
        items = services.parse_batch_file(upload.filename, upload.read())
        source = upload.filename
    else:
        body = _json_body()
        if isinstance(body, dict) and set(body) == {"items"}:
            body = body["items"]
        if not isinstance(body, list):
            raise ApiError(422, "a JSON batch is a list of job objects (or {\"items\": [...]})")
        items = [(f"item {i}", item) for i, item in enumerate(body, start=1)]
        source = "json"
    specs = services.validate_batch(items)
    batch = services.create_batch(specs, source)
    body = services.batch_to_dict(batch)
    return jsonify(body), 202, {"Location": body["url"]}


@bp.get("/batches/<batch_id>")
def get_batch(batch_id: str):
    wait = _wait_seconds()

    def read():
        batch = services.get_batch(batch_id)
        return batch, [job.id for job in batch.jobs if job.status not in FINAL_STATUSES]

    batch = wait_until_ended(wait, read) if wait is not None else services.get_batch(batch_id)
    return jsonify(services.batch_to_dict(batch))


@bp.get("/models")
def list_models():
    return jsonify({"models": [services.model_to_dict(m) for m in services.serving_models()]})


@bp.get("/images/<image_id>.png")
def get_image_png(image_id: str):
    image = services.get_image(image_id)
    storage = current_app.extensions["priorforge_storage"]
    path = storage.local_path(image.storage_key)
    if path is not None:
        if not path.is_file():
            raise ApiError(404, f"the file of image {image_id} is missing from storage")
        return send_file(path, mimetype="image/png", max_age=3600)
    try:
        data = storage.get(image.storage_key)
    except KeyError:
        raise ApiError(404, f"the file of image {image_id} is missing from storage") from None
    return current_app.response_class(data, mimetype="image/png")


@bp.get("/images/<image_id>")
def get_image(image_id: str):
    image = services.get_image(image_id)
    body = services.image_to_dict(image)
    storage = current_app.extensions["priorforge_storage"]
    path = storage.local_path(image.storage_key)
    body["parameters"] = _png_parameters(path) if path is not None and path.is_file() else None
    return jsonify(body)


def _png_parameters(path) -> dict[str, Any] | None:
    from generation.sampling import read_png_params

    try:
        return read_png_params(path)
    except (OSError, json.JSONDecodeError):
        return None


@bp.get("/health")
def health():
    body = services.health()
    return jsonify(body), 200 if body["status"] == "ok" else 503


@bp.get("/openapi.json")
def openapi():
    from app.openapi import spec

    return jsonify(spec())
