"""Model versions: registering a checkpoint folder, the serving version of each name, comparing a version's
metrics with the serving one's, and promotion. Only the checkpoint's JSON is read here, never its weights.

Promotion makes a version the serving one of its name: new jobs resolve the serving version when they are
created (:func:`app.services.jobs.validate_job`, through :func:`serving_model`: a web process reads a name's
serving version at most every ``SERVING_CACHE_SECONDS``, so another process's promotion reaches it within that
time and its own at once), so workers pick the change up without a restart, and a job already queued or
running keeps the version it was created with.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy import func, select, update

from app.core.checkpoint_store import upload_checkpoint
from app.core.errors import ApiError
from app.core.extensions import db
from app.core.tables import ModelVersion, iso
from priorforge_spec.checkpoint import (CARD_FILE, WEIGHTS_FILE, CheckpointError, read_card, read_checkpoint_config,
                                       read_metrics, weights_digest)

log = logging.getLogger(__name__)


def serving_version(name: str) -> ModelVersion | None:
    return db.session.scalars(select(ModelVersion).where(ModelVersion.name == name,
                                                         ModelVersion.serving.is_(True))).first()


@dataclass(frozen=True)
class ServingModel:
    """What checking a job request needs of a serving version: a plain copy that a process's threads share."""
    id: int
    name: str
    condition: str
    class_names: tuple[str, ...]
    num_classes: int


SERVING_CACHE = "priorforge_serving_models"  # app.extensions key: name -> (read at, ServingModel)


def serving_model(name: str) -> ServingModel | None:
    """The serving version of ``name``, read from the database at most every ``SERVING_CACHE_SECONDS`` per
    process (one query less per job). A name that is not served is never cached: a model registered by
    another process is accepted at once."""
    ttl = current_app.config["SERVING_CACHE_SECONDS"]
    cache = current_app.extensions.setdefault(SERVING_CACHE, {})
    now = time.monotonic()
    hit = cache.get(name)
    if hit is not None and now - hit[0] < ttl:
        return hit[1]
    version = serving_version(name)
    if version is None:
        cache.pop(name, None)
        return None
    model = ServingModel(version.id, version.name, version.condition, tuple(version.class_names or ()),
                         int(version.num_classes or 0))
    cache[name] = (now, model)
    return model


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
                make_serving(existing)
                db.session.commit()
            return existing, False
    model_config = config.get("model_config", {})
    metrics = read_metrics(folder)
    card = read_card(folder)
    digest = weights_digest(folder)  # workers check it before loading the weights
    if card is not None:
        card["weights_sha256"] = digest
    storage = current_app.extensions["priorforge_storage"]
    key, files = upload_checkpoint(storage, folder) if storage.remote else (None, None)  # for the other nodes
    condition = config.get("condition", model_config.get("condition", "none"))
    latest = db.session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.name == name))
    version = ModelVersion(
        name=name, version=(latest or 0) + 1, backend=config["backend"], checkpoint_path=str(folder),
        condition=condition, num_classes=int(model_config.get("num_classes", 0)) if condition in ("class", "cluster") else 0,
        class_names=list(config.get("class_names", [])), image_shape=list(config.get("image_shape", [])),
        dataset=config.get("dataset"), metrics=metrics, card=card, serving=False, weights_sha256=digest,
        checkpoint_key=key, checkpoint_files=files)
    db.session.add(version)
    db.session.flush()
    if serve or (latest is None and serve_first):
        make_serving(version)
    if commit:
        db.session.commit()
    return version, True


def register_shipped(models_dir: str | Path) -> list[tuple[ModelVersion, str]]:
    """Register every shipped model (a folder of ``models_dir`` with a ``card.json``) under its card's name;
    returns ``(version, what happened)`` per model: ``registered``, ``updated`` or ``unchanged``.

    A folder whose weights are unchanged since its last registration is left alone. A rebuilt one (other
    weights) becomes a new version, serving only if the serving version was the earlier build of the same
    folder: a version an admin promoted stays serving.
    """
    out = []
    # a version registered before STORAGE_URL named an object store is not in it: registered again, published
    remote = current_app.extensions["priorforge_storage"].remote
    for card_path in sorted(Path(models_dir).glob(f"*/{CARD_FILE}")):
        folder = card_path.parent.resolve()
        card = read_card(folder) or {}
        name = str(card.get("name") or folder.name)
        previous = db.session.scalars(select(ModelVersion).where(
            ModelVersion.name == name, ModelVersion.checkpoint_path == str(folder))
            .order_by(ModelVersion.version.desc())).first()
        published = previous is not None and bool(previous.checkpoint_key or not remote)
        if previous is not None and published and \
                (previous.card or {}).get("weights_sha256") == weights_digest(folder):
            out.append((previous, "unchanged"))
            continue
        serving = serving_version(name)
        take_over = serving is None or serving.checkpoint_path == str(folder)
        version, _ = register_model(name, folder, serve=take_over)
        out.append((version, "registered" if previous is None else "updated"))
    return out


def default_model_name(configured: str | None) -> str | None:
    """The model of a job that names none: ``DEFAULT_MODEL`` when set, else the serving model whose card says
    it is the default, else the first serving model by name."""
    if configured:
        return configured
    models = serving_models()
    for version in models:
        if (version.card or {}).get("default"):
            return version.name
    return models[0].name if models else None


def make_serving(version: ModelVersion) -> None:
    current_app.extensions.pop(SERVING_CACHE, None)  # this process serves the new version at once
    db.session.execute(update(ModelVersion).where(ModelVersion.name == version.name, ModelVersion.id != version.id)
                       .values(serving=False))
    db.session.flush()
    version.serving = True
    db.session.flush()


def conditions_of(version: ModelVersion | ServingModel) -> list[str]:
    """The request kinds a version accepts (a cluster model also takes none: a random cluster)."""
    return ["cluster", "none"] if version.condition == "cluster" else [version.condition]


SERVER_PATH = re.compile(r"(?:captions:)?(?<![\w.~])/(?:[^\s'\"/]+/)+[^\s'\",;)]*")
PRIVATE_KEYS = ("path", "data_root", "checkpoint_path", "output_dir")


def public_json(value: Any) -> Any:
    """``value`` (metrics, a card) without the server's file paths: keys that hold a path are left out and
    an absolute path inside a text becomes ``<server path>`` (the public API lists them for anyone)."""
    if isinstance(value, dict):
        return {k: public_json(v) for k, v in value.items() if k not in PRIVATE_KEYS}
    if isinstance(value, list):
        return [public_json(v) for v in value]
    if isinstance(value, str):
        return SERVER_PATH.sub("<server path>", value)
    return value


def evaluation_summary(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """Whether a version's metrics hold an evaluation: ``state`` ``evaluated``, ``skipped`` (``reason`` says
    why) or ``missing``; ``notes`` are what the evaluation could not measure; ``evaluated_on`` the images."""
    evaluation = (metrics or {}).get("evaluation")
    if not isinstance(evaluation, dict):
        return {"state": "missing", "reason": "no evaluation was recorded (the run was started with evaluate "
                                              "off, or the checkpoint has none)", "notes": [], "evaluated_on": None}
    if evaluation.get("skipped"):
        return {"state": "skipped", "reason": public_json(str(evaluation["skipped"])), "notes": [],
                "evaluated_on": None}
    return {"state": "evaluated", "reason": None, "notes": public_json(list(evaluation.get("notes") or [])),
            "evaluated_on": evaluation.get("evaluated_on")}


def model_to_dict(version: ModelVersion) -> dict[str, Any]:
    return {
        "name": version.name, "version": version.version, "backend": version.backend,
        "condition": version.condition, "supported_conditions": conditions_of(version),
        "class_names": list(version.class_names or []),
        "num_clusters": version.num_classes if version.condition == "cluster" else None,
        "image_shape": list(version.image_shape or []), "dataset": version.dataset,
        "metrics": public_json(version.metrics or {}), "serving": version.serving,
        "created_at": iso(version.created_at), "card": card_summary(version),
    }


def card_summary(version: ModelVersion) -> dict[str, Any] | None:
    """What a model's card says, for the API and the pages (None for a model without a card)."""
    card = version.card
    if not card:
        return None
    training = card.get("training") or {}
    return public_json({
        "title": card.get("title"), "description": card.get("description"),
        "examples": list(card.get("examples") or []), "clusters": dict(card.get("clusters") or {}),
        "metrics": dict(card.get("metrics") or {}), "evaluation_samples": card.get("evaluation_samples"),
        "caveats": [str(c) for c in card.get("caveats") or []],
        "training": {"command": training.get("command"), "steps": training.get("steps"),
                     "cpu_minutes": round(float(training.get("cpu_seconds") or 0) / 60, 1)},
        "export": dict(card.get("export") or {}), "size_bytes": card.get("size_bytes"),
        "default": bool(card.get("default")),
    })


def version_to_dict(version: ModelVersion) -> dict[str, Any]:
    return {"id": version.id, **model_to_dict(version), "checkpoint_path": version.checkpoint_path,
            "checkpoint_key": version.checkpoint_key, "weights_sha256": version.weights_sha256,
            "evaluation": evaluation_summary(version.metrics)}


MAX_ROW_ID = 2**31 - 1  # integer primary keys (PostgreSQL INTEGER); a larger id from a URL names no row


def get_version(version_id: int) -> ModelVersion:
    version = db.session.get(ModelVersion, version_id) if 0 < version_id <= MAX_ROW_ID else None
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
HIGHER_IS_BETTER = ("label_accuracy", "precision", "recall", "nmi", "best_match_accuracy", "cluster_nmi",
                    "cluster_accuracy", "cluster_sample_purity", "caption_match_rate", "caption_class_accuracy",
                    "text_class_accuracy", "text_attribute_accuracy", "text_alignment")


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
    make_serving(version)
    db.session.commit()
    log.info("model %s version %d is now serving", version.name, version.version)
    return version
