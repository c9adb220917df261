"""``/api/v1/jobs`` and ``/api/v1/batches``: create, read (optionally waiting for the end), cancel."""

from __future__ import annotations

import hashlib
import json

from flask import current_app, g, jsonify, request, url_for

from app.api.blueprint import bp, wait_seconds
from app.api.views import batch_to_dict, job_to_dict
from app.core.errors import ApiError
from app.core.extensions import end_read
from app.core.http import json_body
from app.services import idempotency, jobs
from app.services.idempotency import IdempotentRequest
from app.services.job_reads import read_job
from app.core.fastpath.job_events import wait_until_ended
from app.services.schemas import BatchRequest
from app.core.status import FINAL, JobStatus
from app.core.tables import new_id


def _owner() -> jobs.Owner:
    """The creator of new jobs (docs/security.md, "Ownership"); 401 for anonymous callers when anonymous
    generation is switched off."""
    client = g.client
    if client.token_id is None and not current_app.config["ANONYMOUS_GENERATION"]:
        raise ApiError(401, "this service needs an API token to create jobs: send Authorization: Bearer <token>")
    return jobs.Owner(client.key, client.token_id)


def _idempotent(kind: str, fingerprint: bytes, owner: jobs.Owner) -> IdempotentRequest | None:
    """The request's ``Idempotency-Key`` (None without one), with a fingerprint of what it asks for; keys are
    scoped by client, so one client's key never returns another's job."""
    client = hashlib.sha256((owner.client_key or "").encode()).hexdigest()[:16]
    return idempotency.from_header(f"{kind[0]}:{client}", request.headers.get(idempotency.HEADER), fingerprint,
                                   anonymous=owner.anonymous)


def _json_fingerprint(body: object) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


@bp.post("/jobs")
def create_job():
    wait = wait_seconds()  # checked before anything is stored
    owner = _owner()
    body = json_body()
    idempotent = _idempotent("jobs", _json_fingerprint(body), owner)
    spec = jobs.validate_job(body)
    # a replay (the same Idempotency-Key and body) reports the job as it stands, not as it was created: it
    # may have run and ended since
    replay = idempotent is not None and idempotency.earlier(idempotent) is not None
    if wait is not None:
        # synchronous use: answer with the whole job once it has ended (200), or as it stands after `wait` s
        # (202). Its id is made here and watched before the job is stored, so the wait needs no first read.
        job_id, made = new_id(), []

        def create() -> bool:
            made.append(jobs.create_job(spec, owner, idempotent, job_id=job_id))
            return made[0].id == job_id  # else an earlier request with the same Idempotency-Key made it

        job = wait_until_ended(wait, lambda: _job_reader(made[0].id)(), [job_id], start=create)
        url, capability = url_for("api.get_job", job_id=job.id), _capability(made[0])
        answer, code = {**job_to_dict(job), **capability}, 200 if job.status in FINAL else 202
        end_read()  # the job is expired from here on: everything the answer needs is read above
        return jsonify(answer), code, {"Location": url}
    created = jobs.create_job(spec, owner, idempotent)
    url, capability = url_for("api.get_job", job_id=created.id), _capability(created)
    if replay:
        job = read_job(created.id)
        return jsonify({**job_to_dict(job), **capability}), 200 if job.status in FINAL else 202, \
            {"Location": url}
    return jsonify({"id": created.id, "url": url, "status": JobStatus.QUEUED, **capability}), 202, {"Location": url}


def _capability(created: jobs.Created) -> dict[str, str]:
    return {"cancel_secret": created.cancel_secret} if created.cancel_secret else {}


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    wait = wait_seconds()
    job = wait_until_ended(wait, _job_reader(job_id), [job_id]) if wait is not None else read_job(job_id)
    answer = job_to_dict(job)
    end_read()
    return jsonify(answer)


def _job_reader(job_id: str):
    def read():
        job = read_job(job_id)
        return job, [] if job.status in FINAL else [job_id]
    return read


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    """Only for its creator: the token that created it, or the anonymous creator's X-Cancel-Secret."""
    client = g.client
    job = jobs.cancel_job(job_id, token_id=client.token_id, secret=request.headers.get("X-Cancel-Secret"),
                          admin=client.is_admin)
    return jsonify(job_to_dict(job))


# the fields of a JSON batch object: its items, and the webhook of the batch as a whole
BATCH_FIELDS = tuple(BatchRequest.model_fields)


@bp.post("/batches")
def create_batch():
    owner = _owner()
    hook: dict[str, object] = {}  # the batch's own webhook and events, as sent
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None or not upload.filename:
            raise ApiError(422, "multipart upload needs a 'file' field (a .csv or .jsonl file)")
        data = upload.read()
        items = jobs.parse_batch_file(upload.filename, data)
        source = upload.filename
        if "webhook" in request.form:
            hook["webhook"] = request.form["webhook"]
        if "webhook_events_filter" in request.form:  # repeated fields or one comma-separated list
            hook["webhook_events_filter"] = [event.strip() for field in request.form.getlist("webhook_events_filter")
                                             for event in field.split(",") if event.strip()]
        fingerprint = upload.filename.encode() + b"\0" + data + (b"\0" + _json_fingerprint(hook) if hook else b"")
    else:
        body = json_body()
        if isinstance(body, dict) and "items" in body:
            unknown = sorted(set(body) - set(BATCH_FIELDS))
            if unknown:
                raise ApiError(422, f"unknown batch field(s): {', '.join(unknown)[:200]}; valid: "
                                    f"{', '.join(BATCH_FIELDS)}")
            hook = {key: body[key] for key in BATCH_FIELDS[1:] if key in body}
            body = body["items"]
        if not isinstance(body, list):
            raise ApiError(422, "a JSON batch is a list of job objects (or {\"items\": [...]}, optionally with the "
                                "batch's \"webhook\" and \"webhook_events_filter\")")
        items = [(f"item {i}", item) for i, item in enumerate(body, start=1)]
        source = "json"
        fingerprint = _json_fingerprint({"items": body, **hook} if hook else body)
    idempotent = _idempotent("batches", fingerprint, owner)
    specs = jobs.validate_batch(items)
    batch, secret = jobs.create_batch(specs, source, owner, idempotent, webhook=hook.get("webhook"),
                                      webhook_events=hook.get("webhook_events_filter"))
    body = batch_to_dict(batch)
    if secret:
        body["cancel_secret"] = secret  # cancels each of the batch's jobs
    return jsonify(body), 202, {"Location": body["url"]}


@bp.get("/batches/<batch_id>")
def get_batch(batch_id: str):
    wait = wait_seconds()

    def read():
        batch = jobs.get_batch(batch_id)
        return batch, [job.id for job in batch.jobs if job.status not in FINAL]

    batch = wait_until_ended(wait, read) if wait is not None else jobs.get_batch(batch_id)
    return jsonify(batch_to_dict(batch))
