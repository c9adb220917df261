"""``/api/v1/jobs`` and ``/api/v1/batches``: create, read (optionally waiting for the end), cancel."""

from __future__ import annotations

import json

from flask import jsonify, request, url_for

from app.api.blueprint import bp, wait_seconds
from app.api.views import batch_to_dict, job_to_dict
from app.core.errors import ApiError
from app.core.http import json_body
from app.core.models import FINAL_STATUSES
from app.services import idempotency, jobs
from app.services.idempotency import IdempotentRequest
from app.services.job_events import wait_until_ended


def _idempotent(scope: str, fingerprint: bytes) -> IdempotentRequest | None:
    """The request's ``Idempotency-Key`` (None without one), with a fingerprint of what it asks for."""
    return idempotency.from_header(scope, request.headers.get(idempotency.HEADER), fingerprint)


def _json_fingerprint(body: object) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


@bp.post("/jobs")
def create_job():
    wait = wait_seconds()  # checked before anything is stored
    body = json_body()
    idempotent = _idempotent("jobs", _json_fingerprint(body))
    spec = jobs.validate_job(body)
    job_id = jobs.create_job(spec, idempotent)
    url = url_for("api.get_job", job_id=job_id)
    if wait is None:
        return jsonify({"id": job_id, "url": url, "status": "queued"}), 202, {"Location": url}
    # synchronous use: answer with the whole job once it has ended (200), or as it stands after `wait` s (202)
    job = wait_until_ended(wait, _job_reader(job_id), [job_id])
    return jsonify(job_to_dict(job)), 200 if job.status in FINAL_STATUSES else 202, {"Location": url}


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    wait = wait_seconds()
    job = wait_until_ended(wait, _job_reader(job_id), [job_id]) if wait is not None else jobs.get_job(job_id)
    return jsonify(job_to_dict(job))


def _job_reader(job_id: str):
    def read():
        job = jobs.get_job(job_id)
        return job, [] if job.status in FINAL_STATUSES else [job_id]
    return read


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    return jsonify(job_to_dict(jobs.cancel_job(job_id)))


@bp.post("/batches")
def create_batch():
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None or not upload.filename:
            raise ApiError(422, "multipart upload needs a 'file' field (a .csv or .jsonl file)")
        data = upload.read()
        items = jobs.parse_batch_file(upload.filename, data)
        source = upload.filename
        fingerprint = upload.filename.encode() + b"\0" + data
    else:
        body = json_body()
        if isinstance(body, dict) and set(body) == {"items"}:
            body = body["items"]
        if not isinstance(body, list):
            raise ApiError(422, "a JSON batch is a list of job objects (or {\"items\": [...]})")
        items = [(f"item {i}", item) for i, item in enumerate(body, start=1)]
        source = "json"
        fingerprint = _json_fingerprint(body)
    idempotent = _idempotent("batches", fingerprint)
    specs = jobs.validate_batch(items)
    batch = jobs.create_batch(specs, source, idempotent)
    body = batch_to_dict(batch)
    return jsonify(body), 202, {"Location": body["url"]}


@bp.get("/batches/<batch_id>")
def get_batch(batch_id: str):
    wait = wait_seconds()

    def read():
        batch = jobs.get_batch(batch_id)
        return batch, [job.id for job in batch.jobs if job.status not in FINAL_STATUSES]

    batch = wait_until_ended(wait, read) if wait is not None else jobs.get_batch(batch_id)
    return jsonify(batch_to_dict(batch))
