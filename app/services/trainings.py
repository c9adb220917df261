"""Training runs, shared by the admin API and the admin pages: validating a request, the run's row and its
message, cancelling, reconciliation, and reading its progress.

A training run is a row (:class:`app.core.tables.TrainingRun`) and a ``train_model`` message on the ``train``
queue; the worker (:mod:`workers.training_tasks`) claims the row, trains into the run's folder (checkpoints,
sample grids, ``history.jsonl``), evaluates, and registers the checkpoint as a new model version that is NOT
serving (:mod:`app.services.model_versions` compares and promotes versions). Everything is checked here without
importing a model: backends from :mod:`priorforge_spec.backends`.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy import or_, select

from app.core import transitions
from app.core.errors import ApiError
from app.core.extensions import db
from app.core.tables import TrainingRun, User, get_or_404, utcnow
from app.core.storage import StorageError
from app.services.datasets import dataset_source
from app.core.queue import TRAIN_TASK
from app.services import outbox
from app.services.schemas import TrainingLimits, check_training_request, training_request_schema
from app.core.status import JobStatus
from priorforge_spec.backends import MAX_FLOAT, MAX_INT_OPTION, MAX_LIST, MAX_STRING, SetupError, backend_names, \
    backends, check_condition, check_hparams, check_model_options, describe_rule, int_bounds, value_rule

# while a run is running, its metrics column holds only this key: the live figures of its page (the step rate,
# the evaluation's stage); the run's own metrics replace them when it succeeds (no column of its own: no migration)
LIVE_KEY = "live"


# -- validation ---------------------------------------------------------------------------------------
def validate_training(body: Any) -> dict[str, Any]:
    """Check a training request (decoded JSON); returns the settings a run stores. ApiError(422) if bad: its
    fields' types and ranges by :class:`app.services.schemas.TrainingRequest`, then the backend, the data set and
    the backend's options here."""
    request = check_training_request(body, training_limits())
    backend = request.backend
    if backend not in backend_names():
        raise ApiError(422, f"backend must be one of {', '.join(backend_names())}, got {backend!r}", field="backend")
    dataset = request.dataset
    source = dataset_source(dataset)
    condition = request.condition or ("class" if source["labels"] else "none")
    if condition == "class" and not source["labels"]:
        raise ApiError(422, f"condition 'class' needs a data set with at least 2 classes; {dataset!r} has none",
                       field="condition")
    if condition == "text" and not source["captions"]:
        raise ApiError(422, f"condition 'text' needs a captioned data set (images + captions.jsonl); {dataset!r} "
                            "has no captions", field="condition")
    try:
        check_condition(backend, condition)
        model_options = check_model_options(backend, request.model_options)
        hparams = check_hparams(backend, request.hparams)
    except SetupError as exc:
        raise ApiError(422, str(exc), field=exc.field) from None
    if source["images"] is not None and request.batch_size > source["images"]:
        raise ApiError(422, f"batch_size {request.batch_size} is larger than data set {dataset!r} ({source['images']} "
                            "images)", field="batch_size")
    model_name = (request.model_name or f"{dataset}-{backend}").strip()
    if len(model_name) > 100:
        raise ApiError(422, "model_name must be 1-100 characters without '/' or control characters (the default, "
                            "<dataset>-<backend>, is too long here: give one)", field="model_name")
    return {
        **request.model_dump(exclude={"model_options", "hparams"}), "condition": condition, "model_name": model_name,
        "image_size": request.image_size if request.image_size is not None else source.get("default_image_size"),
        "channels": request.channels if request.channels is not None else source.get("default_channels"),
        "model_options": model_options, "hparams": hparams, "source": source,
    }


def training_limits() -> TrainingLimits:
    cfg = current_app.config
    return TrainingLimits(max_steps=cfg["TRAINING_MAX_STEPS"], max_batch_size=cfg["TRAINING_MAX_BATCH_SIZE"])


def _option_schema(option: dict[str, Any], name: str, *, hparam: bool = False) -> dict[str, Any]:
    """The JSON schema of one model option or hyper-parameter, with the bounds :mod:`priorforge_spec.backends`
    checks."""
    default = option["default"] if not hparam else option
    kind = option["type"] if not hparam else type(option).__name__
    low, high = int_bounds(name, hparam=hparam)
    nullable = default is None
    if isinstance(default, bool) or kind == "bool":
        schema: dict[str, Any] = {"type": "boolean"}
    elif isinstance(default, list) or "tuple" in kind:
        floats = isinstance(default, list) and any(isinstance(v, float) for v in default)
        item = {"type": "number", "minimum": -MAX_FLOAT, "maximum": MAX_FLOAT} if floats else \
            {"type": "integer", "minimum": 1, "maximum": MAX_INT_OPTION}
        schema = {"type": "array", "minItems": 1, "maxItems": MAX_LIST, "items": item}
    elif isinstance(default, int) or kind.startswith("int"):
        schema = {"type": "integer", "minimum": low, "maximum": high}
    elif isinstance(default, float) or kind.startswith("float") or (hparam and default is None):
        bound = MAX_FLOAT if default is not None else 10_000_000
        schema = {"type": "number", "minimum": -bound, "maximum": bound}
    else:
        schema = {"type": "string", "maxLength": MAX_STRING}
    rule = value_rule("", name, hparam=hparam)  # the rule shared by the backends (a backend's own is stricter)
    if rule is not None and schema["type"] in ("integer", "number") and rule[0] in ("int", "number"):
        schema["minimum"], schema["maximum"] = rule[1], rule[2]
        if rule[0] == "number":
            schema.update({k: True for k, flag in (("exclusiveMinimum", rule[3]), ("exclusiveMaximum", rule[4]))
                           if flag})
    elif rule is not None and schema["type"] == "string" and rule[0] == "choice":
        schema["enum"] = list(rule[1])
    if rule is not None:
        schema["description"] = describe_rule(rule)
    if nullable:
        schema["nullable"] = True
    return schema


def request_schema() -> dict[str, Any]:
    """The OpenAPI schema of a training request: the fields' types and bounds from
    :class:`app.services.schemas.TrainingRequest`; model_options and hparams list every backend's names (a name of
    another backend: 422)."""
    options: dict[str, Any] = {}
    hparams: dict[str, Any] = {}
    for spec in backends().values():
        for name, option in spec["model_options"].items():
            if name not in ("image_shape", "condition", "num_classes", "text_encoder", "text_encoder_dim"):
                options.setdefault(name, _option_schema(option, name))
        for name, default in spec["hparams"].items():
            hparams.setdefault(name, _option_schema(default, name, hparam=True))
    return training_request_schema(training_limits(), options, hparams, backend_names())


# -- runs -----------------------------------------------------------------------------------------------
def create_run(settings: dict[str, Any], user: User | None) -> TrainingRun:
    run = TrainingRun(status=JobStatus.QUEUED, backend=settings["backend"], dataset=settings["dataset"],
                      condition=settings["condition"], model_name=settings["model_name"], settings=settings,
                      output_dir="", step=0, epoch=0, losses={}, elapsed_seconds=0.0, cancel_requested=False,
                      metrics={}, attempts=0, created_by_id=user.id if user else None, enqueued_at=utcnow(),
                      total_steps=settings["max_steps"], phase=JobStatus.QUEUED)
    db.session.add(run)
    db.session.flush()
    run.output_dir = str(Path(current_app.config["TRAINING_ROOT"]).resolve() / run.id)
    messages = outbox.add(TRAIN_TASK, "train", [run.id])  # committed with the run: never one without the other
    db.session.commit()
    outbox.publish_pending(messages)
    return run


def get_run(run_id: str) -> TrainingRun:
    return get_or_404(TrainingRun, run_id, "training run")


def list_runs(limit: int = 50) -> list[TrainingRun]:
    return list(db.session.scalars(select(TrainingRun).order_by(TrainingRun.created_at.desc()).limit(limit)))


def cancel_run(run_id: str) -> TrainingRun:
    """A queued run is canceled at once; a running one is asked to stop (its worker saves a checkpoint and
    marks it canceled within a heartbeat)."""
    run = get_run(run_id)
    moved = transitions.cancel_run(run_id)
    db.session.commit()
    db.session.refresh(run)
    if moved is None:
        raise ApiError(409, f"training run {run_id} is already {run.status}", run_status=run.status)
    return run


def reconcile_runs(now: datetime) -> dict[str, int]:
    """Runs whose worker died (lease older than LEASE_TIMEOUT) go back to ``queued`` and are sent again, to
    resume from their last checkpoint; after TRAINING_MAX_ATTEMPTS attempts they fail. Queued runs whose
    message is older than QUEUED_STALE_AFTER are sent again (a duplicate message is a no-op)."""
    cfg = current_app.config
    lease_cutoff = now - timedelta(seconds=cfg["LEASE_TIMEOUT"])
    queued_cutoff = now - timedelta(seconds=cfg["QUEUED_STALE_AFTER"])
    max_attempts = cfg["TRAINING_MAX_ATTEMPTS"]
    counts = {"requeued_runs": 0, "failed_runs": 0, "resent_runs": 0}
    messages: list[int] = []  # outbox rows, each committed with the update that re-queued (or re-sent) its run
    stale_lease = or_(TrainingRun.heartbeat_at.is_(None), TrainingRun.heartbeat_at < lease_cutoff)
    for run_id, attempts, cancel in db.session.execute(select(
            TrainingRun.id, TrainingRun.attempts, TrainingRun.cancel_requested).where(
            TrainingRun.status == JobStatus.RUNNING, stale_lease)).all():
        values: dict[str, str]
        if cancel:
            status, values = JobStatus.CANCELED, {"phase": JobStatus.CANCELED.value}
        elif attempts >= max_attempts:
            status, values = JobStatus.FAILED, {"phase": JobStatus.FAILED, "error": f"the run was abandoned by "
                                                f"its worker {attempts} times; giving up"}
        else:
            status, values = JobStatus.QUEUED, {"phase": "queued (worker lost; will resume)"}
        released = transitions.release_run(run_id, now, lease_cutoff, status, **values)
        if released and status == JobStatus.QUEUED:
            messages += outbox.add(TRAIN_TASK, "train", [run_id])
        db.session.commit()
        key = {JobStatus.QUEUED: "requeued_runs", JobStatus.FAILED: "failed_runs"}.get(status)
        if released and key:
            counts[key] += 1
    stale_queue = or_(TrainingRun.enqueued_at.is_(None), TrainingRun.enqueued_at < queued_cutoff)
    for run_id in db.session.scalars(select(TrainingRun.id).where(TrainingRun.status == JobStatus.QUEUED, stale_queue)):
        if transitions.stamp_resent_run(run_id, now, queued_cutoff):
            messages += outbox.add(TRAIN_TASK, "train", [run_id])
            counts["resent_runs"] += 1
        db.session.commit()
    outbox.publish_pending(messages)
    return counts


# -- progress -----------------------------------------------------------------------------------------------
def read_history(run: TrainingRun, max_points: int = 400) -> list[dict[str, Any]]:
    """The run's losses per step from ``history.jsonl`` (steps redone after a resume count once, the last
    write wins), thinned to at most ``max_points`` evenly spaced steps (the last one always kept)."""
    storage = current_app.extensions["priorforge_storage"]
    if storage.remote:  # the trainer may be another machine: it mirrors the run's folder to the store
        try:
            lines = storage.get(f"{run_prefix(run)}/history.jsonl").decode().splitlines()
        except (KeyError, StorageError):
            return []
    else:
        path = Path(run.output_dir) / "history.jsonl"
        if not run.output_dir or not path.is_file():
            return []
        lines = path.read_text().splitlines()
    by_step: dict[int, dict[str, Any]] = {}
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a killed worker
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            by_step[row["step"]] = row
    rows = [by_step[s] for s in sorted(by_step)]
    if len(rows) > max_points:
        stride = math.ceil(len(rows) / max_points)
        rows = rows[::stride] + ([rows[-1]] if (len(rows) - 1) % stride else [])
    return rows


def run_prefix(run: TrainingRun) -> str:
    """Where a run's folder is mirrored in an object store (workers/training_tasks.py)."""
    return f"trainings/{run.id}"


def latest_sample(run: TrainingRun) -> Path | str | None:
    """The run's latest sample grid: a local file, or (object store) its key in the store (a str)."""
    storage = current_app.extensions["priorforge_storage"]
    if storage.remote:
        try:
            keys = storage.list(run_prefix(run))
        except StorageError:
            return None
        final = f"{run_prefix(run)}/samples.png"
        if final in keys and run.status == JobStatus.SUCCEEDED:
            return final
        grids = [k for k in keys if k.startswith(f"{run_prefix(run)}/samples/step-") and k.endswith(".png")]
        return grids[-1] if grids else None
    if not run.output_dir:
        return None
    folder = Path(run.output_dir)
    grids = sorted((folder / "samples").glob("step-*.png")) if (folder / "samples").is_dir() else []
    if (folder / "samples.png").is_file() and run.status == JobStatus.SUCCEEDED:
        return folder / "samples.png"
    return grids[-1] if grids else None
