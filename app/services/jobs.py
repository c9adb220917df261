"""Generation jobs and batches: validating a request against the serving model, storing the jobs and
sending their messages, cancelling, and reading them back.

Every function works on ids and plain values and reads the configuration of the current app; none reads the
HTTP request. Bad input raises :class:`ApiError` with the status a caller should answer with.
"""

from __future__ import annotations

import base64
import csv
import functools
import hashlib
import hmac
import io
import json
import re
import secrets
from dataclasses import dataclass, replace
from typing import Any

from flask import current_app
from sqlalchemy import Insert, Text, bindparam, func, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import joinedload

from app.core import metrics, transitions
from app.core.errors import LONE_SURROGATE_MESSAGE, MAX_JSON_DEPTH, ApiError, has_lone_surrogate, json_depth
from app.core.extensions import db
from app.core.tables import Batch, Image, Job, get_or_404, new_id, table_of, utcnow
from app.core.queue import GENERATE_TASK
from app.services import idempotency, outbox, webhooks
from app.services.idempotency import IdempotentRequest
from app.core.fastpath.job_events import announce_finished
from app.services.model_versions import ServingModel, conditions_of, default_model_name, serving_model, serving_models
from app.services.queue import job_queues
from app.services.schemas import JobRequest, Limits, check_job_request
from app.core.status import JobStatus, LIVE, count_by_status, overall_status
from priorforge_spec.conditions import ConditionError, resolve_label

# an integer typed as text (forms, CSV cells): ASCII digits only (int() also takes "٣" and "1_000") and at
# most 20 of them (int() of more than 4,300 digits raises instead of failing cleanly)
INT_TEXT = re.compile(r"[+-]?[0-9]{1,20}")
QUOTA_RETRY_AFTER = 30  # seconds a client over its image quota is told to wait


def parse_int_text(text: str) -> int | None:
    """``text`` (already stripped) as an int when it is one, strictly (see INT_TEXT); else None."""
    return int(text) if INT_TEXT.fullmatch(text) else None


def _has_control(text: str) -> bool:
    """NUL and the other C0 controls but tab and newlines: never part of a name or a prompt (PostgreSQL
    refuses NUL outright)."""
    return any(ord(c) < 32 and c not in "\t\n\r" for c in text)


@dataclass(frozen=True)
class JobSpec:
    """A validated job request."""

    model_version_id: int
    condition_kind: str
    n: int
    seed: int
    label: str | None = None
    label_index: int | None = None
    cluster: int | None = None
    prompt: str | None = None
    # as sent; checked with the creator's token by create_job/create_batch (app/services/webhooks.py)
    webhook: Any = None
    webhook_events: Any = None


# -- validation -------------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def job_limits() -> Limits:
    cfg = current_app.config
    return Limits(max_images=cfg["MAX_IMAGES_PER_JOB"], max_prompt_length=cfg["MAX_PROMPT_LENGTH"])


def validate_job(data: Any, *, cache: dict[str, ServingModel | None] | None = None) -> JobSpec:
    """Check one job request (a dict as decoded from JSON): its fields against :class:`JobRequest`, then
    against the serving model; ApiError(422) if bad."""
    request = check_job_request(data, job_limits())
    name = request.model if request.model is not None else default_model_name(current_app.config["DEFAULT_MODEL"])
    if name is None:
        raise ApiError(422, "no model is being served yet (an admin registers one: priorforge register-model)")
    name = name.strip()
    if not name:
        raise ApiError(422, "model must be a non-empty string (see GET /api/v1/models)", field="model")
    if _has_control(name):
        raise ApiError(422, f"unknown model {name!r} (see GET /api/v1/models)", field="model")
    if cache is not None and name in cache:
        version = cache[name]
    else:
        version = serving_model(name)
        if cache is not None:
            cache[name] = version
    if version is None:
        names = ", ".join(m.name for m in serving_models()) or "none registered"
        raise ApiError(422, f"unknown model {name!r}; available: {names}", field="model")
    seed = request.seed if request.seed is not None else secrets.randbelow(2**32)
    spec = _validate_condition(request, version, name, seed)
    if request.webhook is not None or request.webhook_events_filter is not None:
        spec = replace(spec, webhook=request.webhook, webhook_events=request.webhook_events_filter)
    return spec


def _validate_condition(request: JobRequest, version: ServingModel, name: str, seed: int) -> JobSpec:
    label, cluster, prompt, n = request.label, request.cluster, request.prompt, request.n
    given = [k for k, v in (("label", label), ("cluster", cluster), ("prompt", prompt)) if v is not None]
    if len(given) > 1:
        raise ApiError(422, f"give only one of label, cluster, prompt (got {', '.join(given)})")
    kind = version.condition
    if given and given[0] != {"class": "label", "cluster": "cluster", "text": "prompt"}.get(kind):
        raise ApiError(422, f"model {name!r} is trained with condition {kind!r}; it does not take a {given[0]}"
                            f" (supported conditions: {', '.join(conditions_of(version))})")
    if kind == "class":
        if label is None:
            raise ApiError(422, f"model {name!r} needs a label, one of: {', '.join(version.class_names)}")
        try:
            index = resolve_label(label, list(version.class_names))
        except ConditionError as exc:
            raise ApiError(422, str(exc)) from None
        return JobSpec(version.id, "class", n, seed, label=version.class_names[index], label_index=index)
    if kind == "cluster":
        if cluster is None:
            return JobSpec(version.id, "none", n, seed)
        if cluster >= version.num_classes:
            raise ApiError(422, f"cluster must be an integer from 0 to {version.num_classes - 1}, got {cluster!r}")
        return JobSpec(version.id, "cluster", n, seed, cluster=cluster)
    if kind == "text":
        if prompt is None:
            raise ApiError(422, f"model {name!r} needs a prompt")
        return JobSpec(version.id, "text", n, seed, prompt=check_prompt(prompt))
    return JobSpec(version.id, "none", n, seed)


def check_prompt(prompt: Any, what: str = "prompt") -> str:
    """``prompt`` as a job takes it (stripped), or ApiError(422): a non-empty string of at most
    ``MAX_PROMPT_LENGTH`` characters without control characters. A model card's example prompts are held to
    the same rule, so that every example the public form offers is a prompt it accepts."""
    max_len = current_app.config["MAX_PROMPT_LENGTH"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise ApiError(422, f"{what} must be a non-empty string")
    if len(prompt) > max_len:
        raise ApiError(422, f"{what} is {len(prompt)} characters long; the limit is {max_len}")
    if _has_control(prompt):
        raise ApiError(422, f"{what} must not hold control characters (such as NUL)")
    return prompt.strip()


def _coerce_text_item(row: dict[str, Any]) -> dict[str, Any]:
    """A CSV row (all strings) -> a job dict: empty cells are absent, integers are parsed."""
    item: dict[str, Any] = {}
    for key, value in row.items():
        if key is None:
            raise ApiError(422, "more cells than header columns")
        key = key.strip()
        if value is None or (isinstance(value, str) and value.strip() == ""):
            continue
        value = value.strip()
        if key in ("n", "seed", "cluster"):
            number = parse_int_text(value)
            if number is None:
                raise ApiError(422, f"{key} must be an integer, got {value[:40]!r}")
            item[key] = number
        else:
            item[key] = value
    return item


def parse_batch_file(filename: str, data: bytes) -> list[tuple[str, Any]]:
    """A CSV (header row: model,label,cluster,prompt,n,seed) or JSONL upload -> [(where, item)]."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ApiError(422, f"{filename}: not UTF-8 text") from None
    lower = filename.lower()
    items: list[tuple[str, Any]] = []
    if lower.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames:
            raise ApiError(422, f"{filename}: empty CSV file (expected a header row)")
        try:
            for row in reader:
                where = f"line {reader.line_num}"
                try:
                    items.append((where, _coerce_text_item(row)))
                except ApiError as exc:
                    raise ApiError(422, f"{filename} {where}: {exc.message}", line=reader.line_num) from None
        except csv.Error as exc:
            raise ApiError(422, f"{filename} line {reader.line_num}: malformed CSV ({exc})",
                           line=reader.line_num) from None
    elif lower.endswith((".jsonl", ".ndjson")):
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            if json_depth(line) > MAX_JSON_DEPTH:
                raise ApiError(422, f"{filename} line {number}: JSON nested too deeply (more than {MAX_JSON_DEPTH} "
                                    "levels)", line=number)
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ApiError(422, f"{filename} line {number}: invalid JSON ({exc.msg})", line=number) from None
            except (RecursionError, ValueError):  # nested too deeply, or an integer of thousands of digits
                raise ApiError(422, f"{filename} line {number}: JSON nested too deeply or a number too long",
                               line=number) from None
            if has_lone_surrogate(item):
                raise ApiError(422, f"{filename} line {number}: {LONE_SURROGATE_MESSAGE}", line=number)
            items.append((f"line {number}", item))
    else:
        raise ApiError(415, f"batch file {filename!r} must be .csv or .jsonl")
    return items


def validate_batch(items: list[tuple[str, Any]]) -> list[JobSpec]:
    """Validate every item before anything is stored; the first bad one -> ApiError(422) naming it."""
    limit = current_app.config["MAX_BATCH_ITEMS"]
    if not items:
        raise ApiError(422, "the batch has no items")
    if len(items) > limit:
        raise ApiError(422, f"the batch has {len(items)} items; the limit is {limit}")
    cache: dict[str, ServingModel | None] = {}
    specs = []
    for where, item in items:
        try:
            specs.append(validate_job(item, cache=cache))
        except ApiError as exc:
            details = {"line": int(where.split()[1])} if where.startswith("line") else {"item": int(where.split()[1])}
            raise ApiError(exc.status, f"{where}: {exc.message}", **details) from None
    return specs


# -- ownership and quotas (docs/security.md) ---------------------------------------------------------
@dataclass(frozen=True)
class Owner:
    """Who creates jobs: ``client_key`` is what quotas count (a token, else an address); a token owns what it
    creates, an anonymous creator gets a capability secret (only its hash is stored)."""

    client_key: str | None = None
    token_id: int | None = None

    @property
    def anonymous(self) -> bool:
        return self.token_id is None


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _capability_of(owner: Owner | None, kind: str, resource_id: str) -> str | None:
    """The capability secret of an anonymous creator's job or batch, None for a token's. Derived from the
    SECRET_KEY and the id (only its hash is stored), so a retried request with the same Idempotency-Key gets
    the same secret back; a key rotation changes what would be derived, never what the stored hash accepts."""
    if owner is not None and not owner.anonymous:
        return None
    key = current_app.config["SECRET_KEY"].encode()
    digest = hmac.new(key, f"cancel:{kind}:{resource_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:24]).decode().rstrip("=")


def check_request_size(images: int) -> None:
    """ApiError(422) for a request of more images than MAX_IMAGES_IN_FLIGHT_PER_CLIENT: it can never fit, so
    it gets a final answer, not a "retry later"."""
    limit = current_app.config["MAX_IMAGES_IN_FLIGHT_PER_CLIENT"]
    if images > limit:
        metrics.refused("quota_request_too_large")
        raise ApiError(422, f"this asks for {images} images; a client may have at most {limit} queued or running "
                            "at once, so it can never be accepted: split it into requests of at most that many")


def lock_client(client_key: str | None) -> None:
    """Serialize the creating transactions of one client until their commit, so that the quota's count and
    the insert it allows are one step: on PostgreSQL an advisory transaction lock on the client key; SQLite
    has one writer at a time, and the insert that comes before the count (:func:`check_quota`) takes its
    write lock."""
    if client_key is not None and db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 23))"),
                           {"key": f"quota:{client_key}"})


def _insert_job(values: dict[str, Any], client_key: str | None) -> None:
    """The job's INSERT; on PostgreSQL it takes the client's lock (:func:`lock_client`) first, in the same
    statement: ``INSERT ... SELECT <values> FROM (SELECT pg_advisory_xact_lock(...))``. The quota's count
    runs in a later statement, so it sees every job committed while this one waited for the lock."""
    if client_key is None or db.session.get_bind().dialect.name != "postgresql":
        db.session.execute(_INSERT_JOB, values)
        return
    db.session.execute(_locked_job_insert(tuple(values)),
                       {"lock_key": f"quota:{client_key}", **{f"job_{name}": value for name, value in values.items()}})


_INSERT_JOB = insert(table_of(Job))


@functools.lru_cache(maxsize=16)
def _locked_job_insert(columns: tuple[str, ...]) -> Insert:
    """The locking INSERT for rows of these columns (built and compiled once per set of columns)."""
    table = table_of(Job)
    lock = select(func.pg_advisory_xact_lock(func.hashtextextended(bindparam("lock_key", type_=Text), 23))).subquery()
    row = select(*[bindparam(f"job_{name}", type_=table.c[name].type) for name in columns]).select_from(lock)
    return insert(table).from_select(list(columns), row)


# this client's images queued or running, the request's rows included, are within the limit
_QUOTA_ROOM = select(func.coalesce(func.sum(Job.n), 0)).where(
    Job.client_key == bindparam("quota_client"), Job.status.in_(LIVE)).scalar_subquery() <= bindparam("quota_limit")


def quota_room(client_key: str | None) -> outbox.SqlCondition | None:
    """The SQL condition "this client's images queued or running, this request's rows included, are within
    MAX_IMAGES_IN_FLIGHT_PER_CLIENT" (None: no client, no quota), for a statement to check by itself."""
    if client_key is None:
        return None
    return _QUOTA_ROOM, {"quota_client": client_key, "quota_limit": current_app.config["MAX_IMAGES_IN_FLIGHT_PER_CLIENT"]}


def check_quota(client_key: str | None, images: int) -> None:
    """ApiError(429) when ``client_key`` has more than MAX_IMAGES_IN_FLIGHT_PER_CLIENT images queued or running,
    counting the ``images`` of this request, whose rows are already flushed in this transaction after
    :func:`lock_client`: concurrent requests of one client are counted one after the other and cannot pass
    the limit together. The caller rolls back on the error."""
    limit = current_app.config["MAX_IMAGES_IN_FLIGHT_PER_CLIENT"]
    if client_key is None:
        return
    busy = db.session.scalar(select(func.coalesce(func.sum(Job.n), 0)).where(
        Job.client_key == client_key, Job.status.in_(LIVE))) or 0
    if busy > limit:
        metrics.refused("quota")
        raise ApiError(429, f"{busy - images} of your images are queued or running; with these {images} that would "
                            f"pass the limit of {limit} per client: wait for some to finish (retry after "
                            f"{QUOTA_RETRY_AFTER} s)", retry_after=QUOTA_RETRY_AFTER)


def lane_of(batch_id: str | None, n: int) -> str:
    """The lane a job goes to: ``bulk`` for a batch's jobs and large jobs, the interactive ``GENERATE_QUEUE``
    (``generate``) for the rest; ``MODEL_QUEUES`` may still route a model elsewhere (queue.job_queues)."""
    cfg = current_app.config
    return "bulk" if batch_id is not None or n > cfg["INTERACTIVE_MAX_IMAGES"] else cfg["GENERATE_QUEUE"]


# -- creating and sending ---------------------------------------------------------------------------
def _job_values(spec: JobSpec, owner: Owner | None = None, cancel_hash: str | None = None, **extra: Any) -> dict:
    """The new job row's columns (the webhook checked: 422)."""
    url, events = webhooks.validate(spec.webhook, spec.webhook_events, owner.token_id if owner else None)
    if url is not None:
        extra.update(webhook=url, webhook_events=events, webhook_pending=True)
    return dict(status=JobStatus.QUEUED, model_version_id=spec.model_version_id, condition_kind=spec.condition_kind,
                label=spec.label, label_index=spec.label_index, cluster=spec.cluster, prompt=spec.prompt,
                n=spec.n, seed=spec.seed, progress=0.0, attempts=0, enqueued_at=utcnow(),
                owner_token_id=owner.token_id if owner else None, client_key=owner.client_key if owner else None,
                cancel_hash=cancel_hash, **extra)


def _job_from_spec(spec: JobSpec, owner: Owner | None = None, cancel_hash: str | None = None, **extra: Any) -> Job:
    return Job(**_job_values(spec, owner, cancel_hash, **extra))


@dataclass(frozen=True)
class Created:
    id: str
    cancel_secret: str | None  # the anonymous creator's capability, None for a token


def create_job(spec: JobSpec, owner: Owner | None = None, idempotent: IdempotentRequest | None = None,
               job_id: str | None = None) -> Created:
    """Store the job and its message (the outbox row) in one transaction, then publish the message. With
    ``idempotent``: the job an earlier request with the same key (of the same client) made, if there is one.
    ``job_id``: the new job's id, made by the caller (a request that waits registers it first)."""
    if idempotent is not None and (found := idempotency.earlier(idempotent)) is not None:
        return Created(found, _capability_of(owner, "job", found))
    client_key = owner.client_key if owner else None
    check_request_size(spec.n)
    # the id is made here, not by the flush, so that the capability's hash goes into the INSERT itself
    job_id = job_id or new_id()
    secret = _capability_of(owner, "job", job_id)
    values = _job_values(spec, owner, _secret_hash(secret) if secret else None, id=job_id)  # webhook checked (422)
    # Core statements, not the ORM's unit of work: this is every job's path. The client's lock is taken by
    # the job's INSERT, and the quota is checked by the outbox row's INSERT, after the job's row (so counting it)
    _insert_job(values, client_key)
    messages = stage_messages([job_id], lane_of(None, spec.n), only_if=quota_room(client_key))
    if not messages:
        _refuse_over_quota(client_key, spec.n)
    if idempotent is not None:
        idempotency.remember(idempotent, job_id)
    if not _commit_or_earlier(idempotent):
        found = idempotency.earlier(idempotent) or job_id  # type: ignore[arg-type]
        return Created(found, _capability_of(owner, "job", found))
    outbox.publish_pending(messages)
    return Created(job_id, secret)


def create_batch(specs: list[JobSpec], source: str, owner: Owner | None = None,
                 idempotent: IdempotentRequest | None = None, webhook: Any = None,
                 webhook_events: Any = None) -> tuple[Batch, str | None]:
    """The batch and its capability secret (None for a token); its jobs go to the ``bulk`` lane. ``webhook``
    and ``webhook_events`` (as sent) are the batch's own: its events are POSTed once for the whole batch
    (``completed`` when every job has ended), besides any webhook of its items."""
    if idempotent is not None and (found := idempotency.earlier(idempotent)) is not None:
        return get_batch(found), _capability_of(owner, "batch", found)
    client_key, images = owner.client_key if owner else None, sum(spec.n for spec in specs)
    check_request_size(images)
    # the batch's webhook checked (422) before anything is stored
    batch_url, batch_events = webhooks.validate(webhook, webhook_events, owner.token_id if owner else None)
    for i, spec in enumerate(specs, start=1):  # every item's webhook checked (422) before anything is stored
        try:
            webhooks.validate(spec.webhook, spec.webhook_events, owner.token_id if owner else None)
        except ApiError as exc:
            raise ApiError(exc.status, f"item {i}: {exc.message}", item=i) from None
    lock_client(client_key)
    source = "".join(c for c in source if ord(c) >= 32)[:200]  # a file name as sent: no NUL or controls
    batch = Batch(source=source, owner_token_id=owner.token_id if owner else None)
    if batch_url is not None:  # the promise to call back, committed with the batch (app/services/webhooks.py)
        batch.webhook, batch.webhook_events, batch.webhook_pending = batch_url, batch_events, True
    db.session.add(batch)
    db.session.flush()
    batch_id = batch.id
    secret = _capability_of(owner, "batch", batch_id)
    batch.cancel_hash = cancel_hash = _secret_hash(secret) if secret else None
    jobs = [_job_from_spec(spec, owner, cancel_hash, batch_id=batch_id, batch_index=i) for i, spec in enumerate(specs)]
    db.session.add_all(jobs)
    db.session.flush()
    _check_quota_or_roll_back(client_key, images)
    messages = stage_messages([job.id for job in jobs], "bulk")
    if idempotent is not None:
        idempotency.remember(idempotent, batch_id)
    if not _commit_or_earlier(idempotent):
        found = idempotency.earlier(idempotent)  # type: ignore[arg-type]
        return get_batch(found), _capability_of(owner, "batch", found)  # type: ignore[arg-type]
    outbox.publish_pending(messages)
    return get_batch(batch_id), secret


def _check_quota_or_roll_back(client_key: str | None, images: int) -> None:
    try:
        check_quota(client_key, images)
    except ApiError:
        db.session.rollback()
        raise


def _refuse_over_quota(client_key: str | None, images: int) -> None:
    """Roll back and raise the quota's 429 (the count is read again for the message)."""
    _check_quota_or_roll_back(client_key, images)
    db.session.rollback()  # not reached while the client's lock holds; a refusal all the same
    raise ApiError(429, "your images queued or running are at the limit per client", retry_after=QUOTA_RETRY_AFTER)


def _commit_or_earlier(idempotent: IdempotentRequest | None) -> bool:
    """Commit; False when a concurrent request with the same key committed first (this one is rolled back)."""
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        if idempotent is None:
            raise
        return False
    return True


def stage_messages(job_ids: list[str], lane: str | None = None, only_if: outbox.SqlCondition | None = None) -> list[int]:
    """Outbox rows (app.services.outbox) for these jobs' messages, committed by the caller with its rows: each
    on its queue, the lane (``lane``, else each job's own: bulk or interactive) as MODEL_QUEUES routes it.
    ``only_if`` (one lane only): none is staged, and the result is empty, unless this SQL condition holds."""
    if not job_ids:
        return []
    lanes: dict[str, list[str]] = {}
    if lane is not None:
        lanes[lane] = list(job_ids)
    else:
        for job_id, batch_id, n in db.session.execute(
                select(Job.id, Job.batch_id, Job.n).where(Job.id.in_(job_ids))):
            lanes.setdefault(lane_of(batch_id, n), []).append(job_id)
    if only_if is not None:
        if lane is None:
            raise ValueError("stage_messages: only_if needs one lane")
        # the condition is checked by the first INSERT; the other queues' rows follow only if it held
        staged: list[int] = []
        for queue, routed in job_queues(job_ids, lane).items():
            rows = outbox.add(GENERATE_TASK, queue, routed, only_if=only_if if not staged else None)
            if not rows:
                return []
            staged += rows
        return staged
    return [row for each_lane, ids in lanes.items() for queue, routed in job_queues(ids, each_lane).items()
            for row in outbox.add(GENERATE_TASK, queue, routed)]


def may_cancel(job: Job, *, token_id: int | None = None, secret: str | None = None, admin: bool = False) -> bool:
    """Whether this caller may cancel ``job``: an admin, the token that created it, or the holder of the
    capability secret handed to its anonymous creator (a batch's jobs share the batch's)."""
    if admin:
        return True
    if token_id is not None and job.owner_token_id == token_id:
        return True
    return bool(secret and job.cancel_hash and hmac.compare_digest(_secret_hash(secret), job.cancel_hash))


def cancel_job(job_id: str, *, token_id: int | None = None, secret: str | None = None,
               admin: bool = False) -> Job:
    """queued/running -> canceled (a running worker notices at its next progress step and stops); 403 unless
    :func:`may_cancel`."""
    job = get_job(job_id)
    if not may_cancel(job, token_id=token_id, secret=secret, admin=admin):
        raise ApiError(403, "only the job's creator can cancel it: send the token that created it, or the "
                            "cancel_secret returned when it was created (header X-Cancel-Secret)")
    canceled = transitions.cancel_job(job_id)
    db.session.commit()
    if not canceled:
        db.session.refresh(job)
        raise ApiError(409, f"job {job_id} is already {job.status}", job_status=job.status)
    announce_finished([job_id])
    db.session.refresh(job)
    return job


def get_job(job_id: str) -> Job:
    # job_to_dict reads the version and the images: one query for all three (a job has at most
    # MAX_IMAGES_PER_JOB images); populate_existing: an expired copy in the session would be refreshed without
    # the joined loads (and the rest then lazy-loaded in more queries)
    job = db.session.get(Job, job_id, options=[joinedload(Job.model_version), joinedload(Job.images)],
                         populate_existing=True)
    if job is None:
        raise ApiError(404, f"no job {job_id!r}")
    return job


def get_batch(batch_id: str) -> Batch:
    return get_or_404(Batch, batch_id, "batch")


def get_image(image_id: str) -> Image:
    return get_or_404(Image, image_id, "image")


def batch_summary(batch: Batch) -> dict[str, Any]:
    """A batch's combined status, counts per status and progress (the API adds the URLs)."""
    jobs = list(batch.jobs)
    statuses = [job.status for job in jobs]
    counts = count_by_status(statuses)
    return {"status": overall_status(statuses), "total": len(jobs), "counts": counts,
            "progress": round(sum(float(job.progress or 0) for job in jobs) / max(1, len(jobs)), 4)}
