"""Training runs and model promotion (issue 6), shared by the admin API and the admin pages.

A training run is a row (:class:`app.models.TrainingRun`) and a ``train_model`` message on the ``train`` queue;
the worker (:mod:`workers.training_tasks`) claims the row, trains into the run's folder (checkpoints, sample
grids, ``history.jsonl``), evaluates, and registers the checkpoint as a new model version that is NOT serving.
Promotion makes a version the serving one of its name: new jobs resolve the serving version when they are
created (:func:`app.services.validate_job`), so workers pick the change up without a restart, and a job already
queued or running keeps the version it was created with.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterable

from flask import current_app, url_for
from sqlalchemy import or_, select, update

from app.extensions import db
from app.models import Dataset, ModelVersion, TrainingRun, User, utcnow
from app.services import ApiError, _make_serving, iso, model_to_dict, send_messages

log = logging.getLogger(__name__)

TRAINING_FIELDS = {
    "backend": "backend name (aae-cg, lde, glf, pga, vae)",
    "dataset": "a built-in data set or an uploaded one",
    "condition": "none, class, cluster or text (default: class when the data set has classes, else none)",
    "model_name": "register the result under this model name (default: <dataset>-<backend>)",
    "max_steps": "optimisation steps",
    "batch_size": "images per step (default 64)",
    "lr": "learning rate (default: the backend's)",
    "seed": "seeds weights, batch order and noise (default 0)",
    "image_size": "resize images to this square size (28 or 4*2^k; uploaded sets: their own, rounded up)",
    "channels": "1 or 3 (uploaded sets: 1 for grey images, else 3)",
    "clusters": "number of clusters (condition cluster; default 10)",
    "max_cpu_minutes": "stop after this much CPU time",
    "checkpoint_every": "steps between checkpoints (a resumed run restarts from the last one)",
    "sample_every": "steps between sample grids",
    "evaluate": "evaluate at the end (default true)",
    "eval_samples": "generated images for the evaluation (default 1000)",
    "model_options": "model config fields of the backend (object)",
    "hparams": "training hyper-parameters of the backend (object)",
}
IMAGE_SIZES = (28, 8, 16, 32, 64, 128, 256)


# -- data sets ----------------------------------------------------------------------------------------
def dataset_source(name: str) -> dict[str, Any]:
    """How a worker loads data set ``name``: ``loader`` (a name for :func:`training.data.load_dataset` or a
    ``captions:<folder>``), ``data_root``, and what it offers (``labels``, ``captions``, ``images``)."""
    from app.uploads import BUILTIN, builtin_datasets
    from training.captions import CAPTIONED_DATASETS

    data_root = current_app.config.get("DATA_ROOT")
    if name in BUILTIN:
        available = {d["name"]: d["available"] for d in builtin_datasets()}
        if not available[name]:
            raise ApiError(422, f"built-in data set {name!r} is not available: DATA_ROOT "
                                f"({data_root or 'not set'}) does not hold it", field="dataset")
        return {"loader": name, "data_root": data_root, "labels": True, "captions": False, "images": None}
    if name in CAPTIONED_DATASETS:
        if not data_root:
            raise ApiError(422, f"data set {name!r} needs DATA_ROOT, which is not set", field="dataset")
        return {"loader": name, "data_root": data_root, "labels": True, "captions": True, "images": None}
    row = db.session.scalars(select(Dataset).where(Dataset.name == name)).first()
    if row is None:
        uploaded = list(db.session.scalars(select(Dataset.name)))
        raise ApiError(422, f"unknown data set {name!r}; built-in: {', '.join(BUILTIN)}; uploaded: "
                            f"{', '.join(uploaded) or 'none'}", field="dataset")
    if row.layout == "captions":
        return {"loader": f"captions:{row.path}", "data_root": None, "labels": False, "captions": True,
                "images": row.images, **_image_defaults(Path(row.path))}
    return {"loader": "imagefolder", "data_root": row.path, "labels": row.classes >= 2, "captions": False,
            "images": row.images, **_image_defaults(Path(row.path))}


def _image_defaults(folder: Path) -> dict[str, int]:
    """The size and channels a run on an uploaded set uses unless told: from its first image (the header
    only), the side rounded up to a size the models take (28 stays 28; at most 256), grey -> 1 channel."""
    from PIL import Image

    from training.data import IMAGE_EXTENSIONS

    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            with Image.open(path) as img:
                side, grey = max(img.size), img.mode in ("1", "L", "LA", "I", "I;16", "F")
            size = 28 if side == 28 else next((s for s in (8, 16, 32, 64, 128) if s >= side), 256)
            return {"default_image_size": size, "default_channels": 1 if grey else 3}
    return {}


# -- validation ---------------------------------------------------------------------------------------
def _int(body: dict[str, Any], key: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(key, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ApiError(422, f"{key} must be an integer from {low} to {high}, got {value!r}", field=key)
    return value


def _number(body: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
            or not low < value <= high:
        raise ApiError(422, f"{key} must be a number above {low} and at most {high}, got {value!r}", field=key)
    return float(value)


def validate_training(body: Any) -> dict[str, Any]:
    """Check a training request (decoded JSON); returns the settings a run stores. ApiError(422) if bad."""
    from generation.registry import backend_names
    from training.build import SetupError, check_hparams, check_model_options, model_class

    cfg = current_app.config
    if not isinstance(body, dict):
        raise ApiError(422, "a training request is a JSON object")
    unknown = sorted(set(body) - set(TRAINING_FIELDS))
    if unknown:
        raise ApiError(422, f"unknown field(s) {unknown}; valid: {sorted(TRAINING_FIELDS)}", field=unknown[0])
    backend = body.get("backend")
    if backend not in backend_names():
        raise ApiError(422, f"backend must be one of {', '.join(backend_names())}, got {backend!r}", field="backend")
    dataset = body.get("dataset")
    if not isinstance(dataset, str) or not dataset:
        raise ApiError(422, "dataset is required (a built-in or uploaded data set's name)", field="dataset")
    source = dataset_source(dataset)
    condition = body.get("condition") or ("class" if source["labels"] else "none")
    if condition == "class" and not source["labels"]:
        raise ApiError(422, f"condition 'class' needs a data set with at least 2 classes; {dataset!r} has none",
                       field="condition")
    if condition == "text" and not source["captions"]:
        raise ApiError(422, f"condition 'text' needs a captioned data set (images + captions.jsonl); {dataset!r} "
                            "has no captions", field="condition")
    for key in ("model_options", "hparams"):
        if not isinstance(body.get(key, {}), dict):
            raise ApiError(422, f"{key} must be an object of name: value", field=key)
    try:
        model_class(backend, condition)
        model_options = check_model_options(backend, body.get("model_options", {}))
        hparams = check_hparams(backend, body.get("hparams", {}))
    except SetupError as exc:
        raise ApiError(422, str(exc), field=exc.field) from None
    max_steps = _int(body, "max_steps", 2000, 1, int(cfg["TRAINING_MAX_STEPS"]))
    batch_size = _int(body, "batch_size", 64, 1, int(cfg["TRAINING_MAX_BATCH_SIZE"]))
    assert max_steps is not None and batch_size is not None
    if source["images"] is not None and batch_size > source["images"]:
        raise ApiError(422, f"batch_size {batch_size} is larger than data set {dataset!r} ({source['images']} "
                            "images)", field="batch_size")
    image_size = _int(body, "image_size", source.get("default_image_size"), 8, 256)
    if image_size is not None and image_size not in IMAGE_SIZES:
        raise ApiError(422, f"image_size must be one of {', '.join(map(str, sorted(IMAGE_SIZES)))}, got "
                            f"{image_size}", field="image_size")
    channels = _int(body, "channels", source.get("default_channels"), 1, 3)
    if channels == 2:
        raise ApiError(422, "channels must be 1 or 3", field="channels")
    model_name = body.get("model_name") or f"{dataset}-{backend}"
    if not isinstance(model_name, str) or not 1 <= len(model_name.strip()) <= 100 or "/" in model_name:
        raise ApiError(422, "model_name must be 1-100 characters without '/'", field="model_name")
    evaluate = body.get("evaluate", True)
    if not isinstance(evaluate, bool):
        raise ApiError(422, "evaluate must be true or false", field="evaluate")
    settings = {
        "backend": backend, "dataset": dataset, "condition": condition, "model_name": model_name.strip(),
        "max_steps": max_steps, "batch_size": batch_size, "lr": _number(body, "lr", 0.0, 10.0),
        "seed": _int(body, "seed", 0, 0, 2**31 - 1), "image_size": image_size, "channels": channels,
        "clusters": _int(body, "clusters", 10, 2, 1000),
        "max_cpu_minutes": _number(body, "max_cpu_minutes", 0.0, 7 * 24 * 60),
        "checkpoint_every": _int(body, "checkpoint_every", 200, 1, 1_000_000),
        "sample_every": _int(body, "sample_every", 200, 1, 1_000_000),
        "evaluate": evaluate, "eval_samples": _int(body, "eval_samples", 1000, 10, 50_000),
        "model_options": model_options, "hparams": hparams, "source": source,
    }
    return settings


# -- runs -----------------------------------------------------------------------------------------------
def create_run(settings: dict[str, Any], user: User | None) -> TrainingRun:
    run = TrainingRun(status="queued", backend=settings["backend"], dataset=settings["dataset"],
                      condition=settings["condition"], model_name=settings["model_name"], settings=settings,
                      output_dir="", step=0, epoch=0, losses={}, elapsed_seconds=0.0, cancel_requested=False,
                      metrics={}, attempts=0, created_by_id=user.id if user else None, enqueued_at=utcnow(),
                      total_steps=settings["max_steps"], phase="queued")
    db.session.add(run)
    db.session.flush()
    run.output_dir = str(Path(current_app.config["TRAINING_ROOT"]).resolve() / run.id)
    db.session.commit()
    send_runs([run.id])
    return run


def send_runs(run_ids: Iterable[str]) -> int:
    """One ``train_model`` message per run on the ``train`` queue (see :func:`app.services.send_messages`)."""
    from workers.training_tasks import train_model

    return send_messages(train_model, run_ids, "train", "training run")


def get_run(run_id: str) -> TrainingRun:
    run = db.session.get(TrainingRun, run_id)
    if run is None:
        raise ApiError(404, f"no training run {run_id!r}")
    return run


def list_runs(limit: int = 50) -> list[TrainingRun]:
    return list(db.session.scalars(select(TrainingRun).order_by(TrainingRun.created_at.desc()).limit(limit)))


def cancel_run(run_id: str) -> TrainingRun:
    """A queued run is canceled at once; a running one is asked to stop (its worker saves a checkpoint and
    marks it canceled within a heartbeat)."""
    run = get_run(run_id)
    now = utcnow()
    res = db.session.execute(update(TrainingRun).where(TrainingRun.id == run_id, TrainingRun.status == "queued")
                             .values(status="canceled", finished_at=now, phase="canceled", claim_token=None))
    if res.rowcount == 0:
        res = db.session.execute(update(TrainingRun).where(TrainingRun.id == run_id,
                                                           TrainingRun.status == "running")
                                 .values(cancel_requested=True))
    db.session.commit()
    db.session.refresh(run)
    if res.rowcount == 0:
        raise ApiError(409, f"training run {run_id} is already {run.status}", run_status=run.status)
    return run


def reconcile_runs(now: datetime) -> dict[str, int]:
    """Runs whose worker died (lease older than LEASE_TIMEOUT) go back to ``queued`` and are sent again, to
    resume from their last checkpoint; after TRAINING_MAX_ATTEMPTS attempts they fail. Queued runs whose
    message is older than QUEUED_STALE_AFTER are sent again (a duplicate message is a no-op)."""
    cfg = current_app.config
    lease_cutoff = now - timedelta(seconds=float(cfg["LEASE_TIMEOUT"]))
    queued_cutoff = now - timedelta(seconds=float(cfg["QUEUED_STALE_AFTER"]))
    max_attempts = int(cfg["TRAINING_MAX_ATTEMPTS"])
    counts = {"requeued_runs": 0, "failed_runs": 0, "resent_runs": 0}
    to_send = []
    stale_lease = or_(TrainingRun.heartbeat_at.is_(None), TrainingRun.heartbeat_at < lease_cutoff)
    for run_id, attempts, cancel in db.session.execute(select(
            TrainingRun.id, TrainingRun.attempts, TrainingRun.cancel_requested).where(
            TrainingRun.status == "running", stale_lease)).all():
        where = (TrainingRun.id == run_id, TrainingRun.status == "running", stale_lease)
        if cancel:
            values: dict[str, Any] = {"status": "canceled", "phase": "canceled", "claim_token": None}
        elif attempts >= max_attempts:
            values = {"status": "failed", "phase": "failed", "claim_token": None,
                      "error": f"the run was abandoned by its worker {attempts} times; giving up"}
        else:
            values = {"status": "queued", "phase": "queued (worker lost; will resume)", "claim_token": None,
                      "enqueued_at": now}
        if values["status"] != "queued":
            values["finished_at"] = now
        res = db.session.execute(update(TrainingRun).where(*where).values(**values)
                                 .execution_options(synchronize_session=False))  # SQLite: naive datetimes
        db.session.commit()
        if res.rowcount:
            key = {"queued": "requeued_runs", "failed": "failed_runs"}.get(values["status"])
            if key:
                counts[key] += 1
            if values["status"] == "queued":
                to_send.append(run_id)
    stale_queue = or_(TrainingRun.enqueued_at.is_(None), TrainingRun.enqueued_at < queued_cutoff)
    for run_id in db.session.scalars(select(TrainingRun.id).where(TrainingRun.status == "queued", stale_queue)):
        res = db.session.execute(update(TrainingRun).where(TrainingRun.id == run_id, TrainingRun.status == "queued",
                                                           stale_queue).values(enqueued_at=now)
                                 .execution_options(synchronize_session=False))
        db.session.commit()
        if res.rowcount:
            counts["resent_runs"] += 1
            to_send.append(run_id)
    if to_send:
        send_runs(to_send)
    return counts


# -- progress views -----------------------------------------------------------------------------------------
def read_history(run: TrainingRun, max_points: int = 400) -> list[dict[str, Any]]:
    """The run's losses per step from ``history.jsonl`` (steps redone after a resume count once, the last
    write wins), thinned to at most ``max_points`` evenly spaced steps (the last one always kept)."""
    path = Path(run.output_dir) / "history.jsonl"
    if not run.output_dir or not path.is_file():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    with open(path) as f:
        for line in f:
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


def latest_sample(run: TrainingRun) -> Path | None:
    if not run.output_dir:
        return None
    folder = Path(run.output_dir)
    grids = sorted((folder / "samples").glob("step-*.png")) if (folder / "samples").is_dir() else []
    if (folder / "samples.png").is_file() and run.status == "succeeded":
        return folder / "samples.png"
    return grids[-1] if grids else None


def run_to_dict(run: TrainingRun, *, history: bool = False) -> dict[str, Any]:
    settings = {k: v for k, v in (run.settings or {}).items() if k != "source"}
    body: dict[str, Any] = {
        "id": run.id, "status": run.status, "phase": run.phase, "backend": run.backend, "dataset": run.dataset,
        "condition": run.condition, "model_name": run.model_name, "settings": settings,
        "step": run.step, "total_steps": run.total_steps, "epoch": run.epoch, "losses": run.losses or {},
        "elapsed_seconds": round(run.elapsed_seconds or 0.0, 1),
        "eta_seconds": None if run.eta_seconds is None else round(run.eta_seconds, 1),
        "cancel_requested": run.cancel_requested, "attempts": run.attempts, "error": run.error,
        "metrics": run.metrics or {}, "created_at": iso(run.created_at), "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "model_version": _version_ref(run.model_version) if run.model_version else None,
        "url": url_for("admin_api.get_training", run_id=run.id),
        "sample_url": url_for("admin.training_sample", run_id=run.id) if latest_sample(run) else None,
        "sample_step": run.sample_step,
    }
    if history:
        body["history"] = read_history(run)
    return body


# -- model versions and promotion ------------------------------------------------------------------------------
def _version_ref(version: ModelVersion) -> dict[str, Any]:
    return {"id": version.id, "name": version.name, "version": version.version, "serving": version.serving,
            "compare_url": url_for("admin_api.compare_model_version", version_id=version.id),
            "page_url": url_for("admin.model_version_page", version_id=version.id)}


def version_to_dict(version: ModelVersion) -> dict[str, Any]:
    return {"id": version.id, **model_to_dict(version), "checkpoint_path": version.checkpoint_path}


def get_version(version_id: int) -> ModelVersion:
    version = db.session.get(ModelVersion, version_id)
    if version is None:
        raise ApiError(404, f"no model version with id {version_id}")
    return version


def list_versions(name: str | None = None) -> list[ModelVersion]:
    query = select(ModelVersion).order_by(ModelVersion.name, ModelVersion.version.desc())
    if name:
        query = query.where(ModelVersion.name == name)
    return list(db.session.scalars(query))


def flat_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested metrics dict, keyed by dotted path (``evaluation.feature_fid``)."""
    out: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_metrics(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


# which way is better, for the metrics a person compares first (others are shown without a verdict)
LOWER_IS_BETTER = ("feature_fid", "reconstruction_mse", "lde_test_nll")
HIGHER_IS_BETTER = ("label_accuracy", "precision", "recall", "nmi", "best_match_accuracy")


def _better(metric: str, candidate: float, serving: float) -> str | None:
    leaf = metric.rsplit(".", 1)[-1]
    if candidate == serving:
        return "same"
    if leaf in LOWER_IS_BETTER:
        return "candidate" if candidate < serving else "serving"
    if leaf in HIGHER_IS_BETTER:
        return "candidate" if candidate > serving else "serving"
    return None


def compare(version_id: int) -> dict[str, Any]:
    """A version's metrics beside those of the serving version of the same name."""
    candidate = get_version(version_id)
    serving = db.session.scalars(select(ModelVersion).where(ModelVersion.name == candidate.name,
                                                            ModelVersion.serving.is_(True))).first()
    mine = flat_metrics(candidate.metrics or {})
    theirs = flat_metrics(serving.metrics or {}) if serving else {}
    rows = []
    for metric in sorted(set(mine) | set(theirs)):
        a, b = mine.get(metric), theirs.get(metric)
        rows.append({"metric": metric, "candidate": a, "serving": b,
                     "better": _better(metric, a, b) if a is not None and b is not None else None})
    return {"candidate": version_to_dict(candidate), "serving": version_to_dict(serving) if serving else None,
            "metrics": rows}


def promote(version_id: int) -> ModelVersion:
    """Make this version the serving one of its name (also how a rollback is done: promote an earlier one)."""
    version = get_version(version_id)
    _make_serving(version)
    db.session.commit()
    log.info("model %s version %d is now serving", version.name, version.version)
    return version
