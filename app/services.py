"""The job logic, shared by the JSON API and the HTML pages: validation, creating jobs and batches,
sending their messages, cancelling, reconciliation, model registration, and JSON views of the rows.

Every function here works on ids and plain values; nothing raises Flask/HTTP exceptions except
:class:`ApiError`, which carries the HTTP status a caller should answer with.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable

from flask import current_app, url_for
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import joinedload

from app.extensions import db
from app.models import FINAL_STATUSES, Batch, Image, Job, ModelVersion, utcnow

log = logging.getLogger(__name__)

MAX_SEED = 2**53  # seeds are JSON-safe integers (exact in every client); image i uses seed + i
JOB_FIELDS = ("model", "label", "cluster", "prompt", "n", "seed")


class ApiError(Exception):
    """Bad input or a state conflict; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, **details: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.message, **self.details}


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


def aware(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes (they are stored in UTC); make them aware."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt


def iso(dt: datetime | None) -> str | None:
    dt = aware(dt)
    return dt.isoformat(timespec="seconds") if dt else None


# -- models -----------------------------------------------------------------------------------------
def serving_version(name: str) -> ModelVersion | None:
    return db.session.scalars(select(ModelVersion).where(ModelVersion.name == name,
                                                         ModelVersion.serving.is_(True))).first()


def serving_models() -> list[ModelVersion]:
    return list(db.session.scalars(select(ModelVersion).where(ModelVersion.serving.is_(True))
                                   .order_by(ModelVersion.name)))


def register_model(name: str, checkpoint: str | Path, *, serve: bool = False,
                   if_missing: bool = False, commit: bool = True,
                   serve_first: bool = True) -> tuple[ModelVersion, bool]:
    """Register the checkpoint folder as the next version of ``name``; returns (version, created).

    Only ``config.json`` is read (the weights are loaded by the workers). The first version of a name is
    serving (unless ``serve_first=False``: a training run's result waits for an admin to promote it);
    ``serve=True`` makes the new version the serving one. ``if_missing``: when this folder is
    already registered under ``name``, return that version (and serve it if asked) instead. ``commit=False``
    leaves the new row in the session's transaction (a training run commits it with its own status change).
    """
    from generation.checkpoint import WEIGHTS_FILE, CheckpointError, read_checkpoint_config

    name = name.strip()
    if not name or len(name) > 100 or "/" in name:
        raise ValueError(f"model name {name!r} must be 1-100 characters without '/'")
    folder = Path(checkpoint).resolve()
    config = read_checkpoint_config(folder)
    if not (folder / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{folder} is not a complete checkpoint: {WEIGHTS_FILE} is missing")
    if if_missing:
        existing = db.session.scalars(select(ModelVersion).where(
            ModelVersion.name == name, ModelVersion.checkpoint_path == str(folder))
            .order_by(ModelVersion.version.desc())).first()
        if existing is not None:
            if serve and not existing.serving:
                _make_serving(existing)
                db.session.commit()
            return existing, False
    model_config = config.get("model_config", {})
    metrics_path = folder / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    condition = config.get("condition", model_config.get("condition", "none"))
    latest = db.session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.name == name))
    version = ModelVersion(
        name=name, version=(latest or 0) + 1, backend=config["backend"], checkpoint_path=str(folder),
        condition=condition, num_classes=int(model_config.get("num_classes", 0)) if condition in ("class", "cluster") else 0,
        class_names=list(config.get("class_names", [])), image_shape=list(config.get("image_shape", [])),
        dataset=config.get("dataset"), metrics=metrics, serving=False)
    db.session.add(version)
    db.session.flush()
    if serve or (latest is None and serve_first):
        _make_serving(version)
    if commit:
        db.session.commit()
    return version, True


def _make_serving(version: ModelVersion) -> None:
    db.session.execute(update(ModelVersion).where(ModelVersion.name == version.name, ModelVersion.id != version.id)
                       .values(serving=False))
    db.session.flush()
    version.serving = True
    db.session.flush()


def conditions_of(version: ModelVersion) -> list[str]:
    """The request kinds a version accepts (a cluster model also takes none: a random cluster)."""
    return ["cluster", "none"] if version.condition == "cluster" else [version.condition]


def model_to_dict(version: ModelVersion) -> dict[str, Any]:
    return {
        "name": version.name, "version": version.version, "backend": version.backend,
        "condition": version.condition, "supported_conditions": conditions_of(version),
        "class_names": list(version.class_names or []),
        "num_clusters": version.num_classes if version.condition == "cluster" else None,
        "image_shape": list(version.image_shape or []), "dataset": version.dataset,
        "metrics": version.metrics or {}, "serving": version.serving, "created_at": iso(version.created_at),
    }


# -- validation -------------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_job(data: Any, *, cache: dict[str, ModelVersion | None] | None = None) -> JobSpec:
    """Check one job request (a dict as decoded from JSON) against the serving model; ApiError(422) if bad."""
    cfg = current_app.config
    if not isinstance(data, dict):
        raise ApiError(422, "a job must be a JSON object")
    unknown = sorted(set(data) - set(JOB_FIELDS))
    if unknown:
        raise ApiError(422, f"unknown field(s): {', '.join(unknown)}; valid: {', '.join(JOB_FIELDS)}")
    name = data.get("model", cfg["DEFAULT_MODEL"])
    if not isinstance(name, str) or not name.strip():
        raise ApiError(422, "model must be a non-empty string (see GET /api/v1/models)")
    name = name.strip()
    if cache is not None and name in cache:
        version = cache[name]
    else:
        version = serving_version(name)
        if cache is not None:
            cache[name] = version
    if version is None:
        names = ", ".join(m.name for m in serving_models()) or "none registered"
        raise ApiError(422, f"unknown model {name!r}; available: {names}")

    n = data.get("n", 1)
    limit = int(cfg["MAX_IMAGES_PER_JOB"])
    if not _is_int(n) or not 1 <= n <= limit:
        raise ApiError(422, f"n must be an integer from 1 to {limit}, got {n!r}")
    seed = data.get("seed")
    if seed is None:
        seed = secrets.randbelow(2**32)
    elif not _is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise ApiError(422, f"seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")

    label, cluster, prompt = data.get("label"), data.get("cluster"), data.get("prompt")
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
        if not isinstance(label, (str, int)) or isinstance(label, bool):
            raise ApiError(422, "label must be a class name or index")
        from generation.base import ConditionError
        from generation.sampling import resolve_label

        try:
            index = resolve_label(label, list(version.class_names))
        except ConditionError as exc:
            raise ApiError(422, str(exc)) from None
        return JobSpec(version.id, "class", n, seed, label=version.class_names[index], label_index=index)
    if kind == "cluster":
        if cluster is None:
            return JobSpec(version.id, "none", n, seed)
        if not _is_int(cluster) or not 0 <= cluster < version.num_classes:
            raise ApiError(422, f"cluster must be an integer from 0 to {version.num_classes - 1}, got {cluster!r}")
        return JobSpec(version.id, "cluster", n, seed, cluster=cluster)
    if kind == "text":
        max_len = int(cfg["MAX_PROMPT_LENGTH"])
        if prompt is None:
            raise ApiError(422, f"model {name!r} needs a prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ApiError(422, "prompt must be a non-empty string")
        if len(prompt) > max_len:
            raise ApiError(422, f"prompt is {len(prompt)} characters long; the limit is {max_len}")
        return JobSpec(version.id, "text", n, seed, prompt=prompt.strip())
    return JobSpec(version.id, "none", n, seed)


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
            try:
                item[key] = int(value)
            except ValueError:
                raise ApiError(422, f"{key} must be an integer, got {value!r}") from None
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
            try:
                items.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ApiError(422, f"{filename} line {number}: invalid JSON ({exc.msg})", line=number) from None
    else:
        raise ApiError(415, f"batch file {filename!r} must be .csv or .jsonl")
    return items


def validate_batch(items: list[tuple[str, Any]]) -> list[JobSpec]:
    """Validate every item before anything is stored; the first bad one -> ApiError(422) naming it."""
    limit = int(current_app.config["MAX_BATCH_ITEMS"])
    if not items:
        raise ApiError(422, "the batch has no items")
    if len(items) > limit:
        raise ApiError(422, f"the batch has {len(items)} items; the limit is {limit}")
    cache: dict[str, ModelVersion | None] = {}
    specs = []
    for where, item in items:
        try:
            specs.append(validate_job(item, cache=cache))
        except ApiError as exc:
            details = {"line": int(where.split()[1])} if where.startswith("line") else {"item": int(where.split()[1])}
            raise ApiError(exc.status, f"{where}: {exc.message}", **details) from None
    return specs


# -- creating and sending ---------------------------------------------------------------------------
def _job_from_spec(spec: JobSpec, **extra: Any) -> Job:
    return Job(status="queued", model_version_id=spec.model_version_id, condition_kind=spec.condition_kind,
               label=spec.label, label_index=spec.label_index, cluster=spec.cluster, prompt=spec.prompt,
               n=spec.n, seed=spec.seed, progress=0.0, attempts=0, enqueued_at=utcnow(), **extra)


def create_job(spec: JobSpec) -> str:
    """Store the job (committed first: the row is the source of truth), then send its message; its id."""
    job = _job_from_spec(spec)
    db.session.add(job)
    db.session.flush()
    job_id = job.id  # read before the commit expires the object (reading it after would cost a SELECT)
    db.session.commit()
    send_jobs([job_id])
    return job_id


def create_batch(specs: list[JobSpec], source: str) -> Batch:
    batch = Batch(source=source[:200])
    db.session.add(batch)
    db.session.flush()
    for i, spec in enumerate(specs):
        db.session.add(_job_from_spec(spec, batch_id=batch.id, batch_index=i))
    db.session.commit()
    send_jobs([job.id for job in batch.jobs])
    return batch


def send_jobs(job_ids: Iterable[str]) -> int:
    """Publish one ``generate_images`` message per job; returns how many went out."""
    from workers.tasks import generate_images

    return send_messages(generate_images, job_ids, "generate", "job")


def send_messages(task: Any, ids: Iterable[str], queue: str, what: str) -> int:
    """One message of ``task`` per id on ``queue``; returns how many went out.

    A broker that is down is not an error for the client: the row stays ``queued`` in the database and the
    reconciliation sends it again once the broker is back.
    """
    sent = 0
    for row_id in ids:
        try:
            # time limits are the worker's own (its configuration): an explicit None keeps Celery from
            # stamping the sender's defaults into the message
            task.apply_async(args=[row_id], queue=queue, time_limit=None, soft_time_limit=None, retry=True,
                             retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5,
                                           "interval_max": 1})
            sent += 1
        except Exception as exc:  # broker unreachable: reconciliation will send it later
            log.warning("could not send %s %s to the broker (%s); reconciliation will retry", what, row_id, exc)
    return sent


def cancel_job(job_id: str) -> Job:
    """queued/running -> canceled (a running worker notices at its next progress step and stops)."""
    job = get_job(job_id)
    result = db.session.execute(update(Job).where(Job.id == job_id, Job.status.in_(("queued", "running")))
                                .values(status="canceled", finished_at=utcnow(), claim_token=None))
    db.session.commit()
    if result.rowcount == 0:
        db.session.refresh(job)
        raise ApiError(409, f"job {job_id} is already {job.status}", job_status=job.status)
    from app.job_events import announce_finished

    announce_finished([job_id])
    db.session.refresh(job)
    return job


def get_job(job_id: str) -> Job:
    # job_to_dict reads both; populate_existing: an expired copy in the session would be refreshed without
    # the joined load (and the version then lazy-loaded in a second query)
    job = db.session.get(Job, job_id, options=[joinedload(Job.model_version)], populate_existing=True)
    if job is None:
        raise ApiError(404, f"no job {job_id!r}")
    return job


def get_batch(batch_id: str) -> Batch:
    batch = db.session.get(Batch, batch_id)
    if batch is None:
        raise ApiError(404, f"no batch {batch_id!r}")
    return batch


def get_image(image_id: str) -> Image:
    image = db.session.get(Image, image_id)
    if image is None:
        raise ApiError(404, f"no image {image_id!r}")
    return image


# -- reconciliation ---------------------------------------------------------------------------------
def reconcile(now: datetime | None = None) -> dict[str, int]:
    """Repair what a lost message or a dead worker leaves behind; safe to run from many workers at once.

    * ``running`` jobs whose lease (``heartbeat_at``) is older than LEASE_TIMEOUT: their worker died. They go
      back to ``queued`` and are sent again, or are failed once they have been attempted MAX_ATTEMPTS times.
    * ``queued`` jobs whose last message is older than QUEUED_STALE_AFTER: the message may have been lost (a
      broker restart without persistence, a worker killed holding it). They are sent again. A duplicate is
      harmless: the task claims the row with a conditional update, so only one delivery does the work.

    Each repair is a conditional UPDATE on the row, so two reconcilers never both send the same job.
    """
    cfg = current_app.config
    now = now or utcnow()
    lease_cutoff = now - timedelta(seconds=float(cfg["LEASE_TIMEOUT"]))
    queued_cutoff = now - timedelta(seconds=float(cfg["QUEUED_STALE_AFTER"]))
    max_attempts = int(cfg["MAX_ATTEMPTS"])
    counts = {"requeued_running": 0, "failed_running": 0, "resent_queued": 0}
    to_send: list[str] = []
    failed: list[str] = []

    stale = db.session.execute(select(Job.id, Job.attempts).where(
        Job.status == "running", or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < lease_cutoff))).all()
    for job_id, attempts in stale:
        cond = (Job.id == job_id, Job.status == "running",
                or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < lease_cutoff))
        if attempts >= max_attempts:
            res = db.session.execute(update(Job).where(*cond).values(
                status="failed", finished_at=now, claim_token=None,
                error=f"the job was abandoned by its worker {attempts} times (worker died or hit the hard time "
                      f"limit of {cfg['TASK_TIME_LIMIT']} s); giving up"))
            counts["failed_running"] += res.rowcount
            if res.rowcount:
                failed.append(job_id)
        else:
            res = db.session.execute(update(Job).where(*cond).values(
                status="queued", enqueued_at=now, claim_token=None, progress=0.0))
            if res.rowcount:
                counts["requeued_running"] += 1
                to_send.append(job_id)
        db.session.commit()

    lost = db.session.scalars(select(Job.id).where(
        Job.status == "queued", or_(Job.enqueued_at.is_(None), Job.enqueued_at < queued_cutoff))).all()
    for job_id in lost:
        res = db.session.execute(update(Job).where(
            Job.id == job_id, Job.status == "queued",
            or_(Job.enqueued_at.is_(None), Job.enqueued_at < queued_cutoff)).values(enqueued_at=now))
        db.session.commit()
        if res.rowcount:
            counts["resent_queued"] += 1
            to_send.append(job_id)
    if to_send:
        send_jobs(to_send)
    if failed:
        from app.job_events import announce_finished

        announce_finished(failed)
    from app.trainings import reconcile_runs

    counts.update(reconcile_runs(now))
    return counts


# -- JSON views -------------------------------------------------------------------------------------
def image_to_dict(image: Image) -> dict[str, Any]:
    version = image.job.model_version  # the exact version that made it (fixed when the job was created)
    return {
        "id": image.id, "job_id": image.job_id, "index": image.index, "width": image.width,
        "height": image.height, "seed": image.seed, "created_at": iso(image.created_at),
        "model": version.name, "model_version": version.version, "model_version_id": version.id,
        "url": url_for("api.get_image", image_id=image.id),
        "png_url": url_for("api.get_image_png", image_id=image.id),
    }


def job_to_dict(job: Job) -> dict[str, Any]:
    version = job.model_version
    return {
        "id": job.id, "url": url_for("api.get_job", job_id=job.id), "status": job.status,
        "progress": round(float(job.progress or 0.0), 4), "error": job.error,
        "model": version.name, "model_version": version.version, "model_version_id": version.id,
        "backend": version.backend, "condition": job.condition_kind, "label": job.label, "cluster": job.cluster, "prompt": job.prompt,
        "n": job.n, "seed": job.seed, "attempts": job.attempts, "batch_id": job.batch_id,
        "created_at": iso(job.created_at), "started_at": iso(job.started_at), "finished_at": iso(job.finished_at),
        "images": [image_to_dict(image) for image in job.images] if job.status == "succeeded" else [],
    }


def batch_status(statuses: list[str]) -> str:
    """queued (nothing started) | running (some not final) | succeeded | failed (all final, one failed) |
    canceled (all final, none failed, one canceled)."""
    if all(s == "queued" for s in statuses):
        return "queued"
    if any(s not in FINAL_STATUSES for s in statuses):
        return "running"
    if all(s == "succeeded" for s in statuses):
        return "succeeded"
    return "failed" if "failed" in statuses else "canceled"


def batch_to_dict(batch: Batch) -> dict[str, Any]:
    jobs = list(batch.jobs)
    statuses = [job.status for job in jobs]
    counts = {status: statuses.count(status) for status in ("queued", "running", "succeeded", "failed", "canceled")}
    return {
        "id": batch.id, "url": url_for("api.get_batch", batch_id=batch.id), "status": batch_status(statuses),
        "created_at": iso(batch.created_at), "source": batch.source, "total": len(jobs), "counts": counts,
        "progress": round(sum(float(job.progress or 0) for job in jobs) / max(1, len(jobs)), 4),
        "jobs": [{"id": job.id, "url": url_for("api.get_job", job_id=job.id), "status": job.status,
                  "progress": round(float(job.progress or 0.0), 4), "error": job.error} for job in jobs],
    }


# -- health -----------------------------------------------------------------------------------------
def health() -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        db.session.execute(select(1))
        out["database"] = {"ok": True}
    except Exception as exc:  # report, do not raise: this is the health check
        db.session.rollback()
        out["database"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    celery = current_app.extensions["celery"]
    try:
        with celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)
        out["broker"] = {"ok": True, "transport": conn.transport_cls if isinstance(conn.transport_cls, str) else "?"}
    except Exception as exc:
        out["broker"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    out["status"] = "ok" if out["database"]["ok"] and out["broker"]["ok"] else "degraded"
    return out
