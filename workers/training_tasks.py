"""The ``train`` queue's task: ``train_model(run_id)`` trains, evaluates and registers one training run.

Like ``generate_images`` it is safe to deliver more than once:

* it claims the run with a conditional UPDATE (``queued`` -> ``running``, or a ``running`` run whose lease has
  expired) and a fresh ``claim_token``; a second delivery while the run is alive finds it claimed and does
  nothing;
* a heartbeat thread renews the lease and reads ``cancel_requested``; every progress write and the final
  status change are fenced by the claim token, so an attempt that lost its run stops without writing;
* the run trains in its own folder with checkpoints every ``checkpoint_every`` steps: an attempt that finds a
  training state there resumes from it (bit-identically: the trainer reseeds its noise per step). A worker
  that dies mid-run is found by the reconciliation (:func:`app.services.trainings.reconcile_runs`), and the next
  attempt resumes from the last checkpoint;
* the new model version and ``succeeded`` are committed in one transaction, so a run registers exactly one
  version, never serving (an admin promotes it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from flask import current_app

from app.core import transitions
from app.core.extensions import db
from app.core.tables import TrainingRun, utcnow
from app.core.queue import TRAIN_TASK
from app.services.model_versions import register_model
from app.services.trainings import LIVE_KEY
from app.core.status import JobStatus
from workers import faults
from workers.lease import RunLease
from workers.training_progress import EvaluationProgress, StepRate, estimate_seconds_left  # noqa: F401

log = logging.getLogger(__name__)


class RunLost(Exception):
    """Another attempt holds the run now (this worker's lease expired): stop without writing anything."""


def claim_run(run_id: str) -> str | None:
    """The run for this attempt (queued, or running with an expired lease); its claim token, or None."""
    cutoff = utcnow() - timedelta(seconds=current_app.config["LEASE_TIMEOUT"])
    token = transitions.claim_run(run_id, worker=f"{socket.gethostname()}:{os.getpid()}", lease_cutoff=cutoff)
    db.session.commit()
    return token


def _finish(run_id: str, token: str, status: JobStatus, **values: Any) -> bool:
    db.session.rollback()
    finished = transitions.finish_run(run_id, token, status, **values)
    db.session.commit()
    return finished


@shared_task(name=TRAIN_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def train_model(self: Any, run_id: str) -> str:
    from training.trainer import TrainingCancelled

    run = db.session.get(TrainingRun, run_id)
    if run is None:
        log.warning("training run %s does not exist; dropping its message", run_id)
        return "missing"
    token = claim_run(run_id)
    if token is None:
        return f"skipped ({run.status})"
    lease = RunLease(run_id, token, current_app.config["HEARTBEAT_INTERVAL"])
    lease.start_clock(run.elapsed_seconds or 0.0)  # earlier attempts' time counts: the run's wall time
    try:
        with lease:
            return _train(run_id, token, lease)
    except RunLost:
        log.info("training run %s was taken over by another attempt; stopping", run_id)
        return "aborted"
    except TrainingCancelled:
        _finish(run_id, token, status=JobStatus.CANCELED, phase=JobStatus.CANCELED)
        return JobStatus.CANCELED
    except SoftTimeLimitExceeded:
        _finish(run_id, token, status=JobStatus.FAILED, phase=JobStatus.FAILED,
                error=f"the run passed TRAINING_SOFT_TIME_LIMIT ({current_app.config['TRAINING_SOFT_TIME_LIMIT']} s)")
        return "timeout"
    except Exception as exc:  # bad data, a diverging model...: record it, keep the worker
        log.exception("training run %s failed", run_id)
        message = str(exc).strip() or type(exc).__name__
        _finish(run_id, token, status=JobStatus.FAILED, phase=JobStatus.FAILED,
                error=f"{type(exc).__name__}: {message}"[:2000])
        return JobStatus.FAILED


def load_training_data(settings: dict[str, Any]) -> Any:
    """The train split a run trains on (as the stored settings describe it)."""
    return load_split(settings, "train")


def load_split(settings: dict[str, Any], split: str) -> Any:
    """Split ``split`` of the run's data set, in the run's image size and channels (a grey upload stays 1
    channel, through the captioned loader too)."""
    from training.captions import is_captioned_dataset, load_captioned_dataset
    from training.data import load_dataset

    source = settings["source"]
    if is_captioned_dataset(source["loader"]):
        return load_captioned_dataset(source["loader"], source["data_root"], split,  # type: ignore[arg-type]
                                      image_size=settings["image_size"], channels=settings["channels"])
    return load_dataset(source["loader"], source["data_root"], split, image_size=settings["image_size"],  # type: ignore[arg-type]
                        channels=settings["channels"])


def _train(run_id: str, token: str, lease: RunLease) -> str:
    from generation.checkpoint import STATE_JSON_FILE
    from training.build import build_model
    from training.registry import get_trainer_class
    from training.trainer import TrainConfig, TrainingCancelled, TrainingEvent

    cfg = current_app.config
    run = db.session.get(TrainingRun, run_id)
    assert run is not None
    settings, out = dict(run.settings), Path(run.output_dir)
    db.session.commit()  # end the read transaction: the writes below go through their own connections
    mirror, out = _mirror_run(run_id, settings, out)

    lease.write(phase="loading data")
    train_data = load_training_data(settings)
    model = build_model(settings["backend"], train_data, settings["condition"], clusters=settings["clusters"],
                        options=settings["model_options"], seed=settings["seed"])
    text_extra: dict[str, Any] = {}
    if settings["condition"] == "text":
        from training.captions import prepare_text_conditioning

        text_extra = prepare_text_conditioning(model, train_data)
    device = cfg.get("TRAINING_DEVICE") or cfg["DEVICE"]
    config = TrainConfig(epochs=10**9, max_steps=settings["max_steps"], batch_size=settings["batch_size"],
                         lr=settings["lr"], seed=settings["seed"], device=device,
                         sample_every=settings["sample_every"], checkpoint_every=settings["checkpoint_every"],
                         evaluate=settings["evaluate"], eval_samples=settings["eval_samples"], progress_bar=False,
                         max_cpu_seconds=settings["max_cpu_minutes"] * 60 if settings["max_cpu_minutes"] else None)
    trainer = get_trainer_class(settings["backend"])(model, config, settings["hparams"])

    state_file = out / STATE_JSON_FILE
    resume = state_file.is_file()
    resumed_from = int(json.loads(state_file.read_text())["progress"]["step"]) if resume else 0
    if resume:
        log.info("training run %s resumes from its checkpoint at step %d", run_id, resumed_from)
    lease.write(phase=f"training (resumed from step {resumed_from})" if resume else "training",
                step=resumed_from)

    interval = cfg["TRAINING_PROGRESS_INTERVAL"]
    last_write = [0.0]
    rate = StepRate()  # this attempt's recent step rate: the estimate of the time left

    def on_progress(event: TrainingEvent) -> None:
        if lease.lost.is_set():
            raise RunLost()
        if lease.cancel.is_set():
            raise TrainingCancelled()
        if event.kind == "step":
            faults.active().training_step()
        if mirror is not None and event.kind == "sample":  # the grid (and checkpoint) for other machines
            mirror.sync()
        if event.kind == "step":
            rate.add(event.step, event.elapsed, trainer.cpu_seconds())
        now = time.monotonic()
        if event.kind != "sample" and event.step < event.total_steps and now - last_write[0] < interval:
            return
        last_write[0] = now
        values: dict[str, Any] = {
            "step": event.step, "total_steps": event.total_steps, "epoch": event.epoch,
            "losses": {k: float(v) for k, v in event.losses.items()},
            "eta_seconds": rate.seconds_left(event.total_steps, config.max_cpu_seconds),
            # the live figures of the run page, in the metrics column until the run's own metrics replace them
            "metrics": {LIVE_KEY: {"rate": rate.describe()}}}
        if event.kind == "sample":
            values["sample_step"] = event.step
        lease.write(**values)
        if lease.lost.is_set():
            raise RunLost()

    def evaluate(trained: Any) -> dict[str, Any]:
        tracker = EvaluationProgress()
        last = [0.0]

        def progress(stage: str, done: int, total: int, unit: str = "") -> None:
            if lease.lost.is_set():
                raise RunLost()
            if lease.cancel.is_set():
                raise TrainingCancelled()
            new_stage = tracker.update(stage, done, total, unit)
            now = time.monotonic()
            if not new_stage and done < total and now - last[0] < interval:
                return
            last[0] = now
            lease.write(phase=f"evaluating: {stage}"[:40], eta_seconds=None,
                        metrics={LIVE_KEY: {"rate": rate.describe(), "evaluation": tracker.as_dict()}})

        progress("starting", 0, 1)
        metrics = evaluate_run(trained, settings, train_data, trainer.device, progress=progress,
                               classifier_steps=cfg.get("TRAINING_EVAL_CLASSIFIER_STEPS"))
        metrics["stage_seconds"] = tracker.finish()  # stored with the metrics: what the evaluation spent where
        return metrics

    metrics = trainer.fit(train_data, out, resume=resume, callback=on_progress, evaluate=evaluate,
                          checkpoint_extra={"data_root": settings["source"]["data_root"], **text_extra})
    if lease.lost.is_set():
        raise RunLost()
    if mirror is not None:
        mirror.sync()
    return _register(run_id, token, out, settings, metrics, resumed_from if resume else None)


def _mirror_run(run_id: str, settings: dict[str, Any], out: Path) -> tuple[Any, Path]:
    """(mirror, the run's folder). With an object store the trainer may be any machine: it trains in
    its own TRAINING_ROOT (the row's output_dir is the web's), an uploaded data set is fetched from the store, a
    run started elsewhere resumes from the folder mirrored there, and this attempt mirrors the folder (grids,
    history, checkpoint) after each grid. With the local store: (None, output_dir), as before."""
    from app.core.checkpoint_store import FolderMirror, download_folder
    from generation.checkpoint import STATE_JSON_FILE

    storage = current_app.extensions["priorforge_storage"]
    if not storage.remote:
        return None, out
    out = Path(current_app.config["TRAINING_ROOT"]).resolve() / run_id
    settings["source"] = _local_source(settings["source"], storage)
    prefix = f"trainings/{run_id}"
    if not (out / STATE_JSON_FILE).is_file() and storage.exists(f"{prefix}/{STATE_JSON_FILE}"):
        shutil.rmtree(out, ignore_errors=True)
        download_folder(storage, prefix, out)
        log.info("training run %s: fetched its checkpoint from the store", run_id)
    return FolderMirror(storage, out, prefix), out


def _local_source(source: dict[str, Any], storage: Any) -> dict[str, Any]:
    """An uploaded data set's folder (the web's DATASET_ROOT/<name>), fetched from the store into this machine's
    DATASET_ROOT when it is not here."""
    from app.core.checkpoint_store import download_folder

    loader, root = source["loader"], source.get("data_root")
    captions = loader.startswith("captions:")
    path = loader[len("captions:"):] if captions else (root if loader == "imagefolder" else None)
    if not path or Path(path).is_dir():
        return source
    local = Path(current_app.config["DATASET_ROOT"]) / Path(path).name
    if not local.is_dir() and download_folder(storage, f"datasets/{local.name}", local) == 0:
        raise FileNotFoundError(f"data set folder {path} is neither on this machine nor in the store")
    if captions:
        return {**source, "loader": f"captions:{local}"}
    return {**source, "data_root": str(local)}


def evaluate_run(model: Any, settings: dict[str, Any], train_data: Any, device: Any, *,
                 progress: Any = None, classifier_steps: int | None = None) -> dict[str, Any]:
    """The metrics of ``priorforge evaluate`` for the run's data set. An uploaded captioned set is evaluated on
    its own held-out split (:func:`evaluate_upload`). A data set the evaluation cannot use is reported as
    ``skipped`` with the reason (no server path in it), not fatal: the checkpoint is already saved.
    ``progress(stage, done, total, unit)`` follows the evaluation's stages (:mod:`training.evaluate`)."""
    from training.evaluate import evaluate_model

    source = settings["source"]
    try:
        if source["loader"].startswith("captions:"):
            return evaluate_upload(model, settings, train_data, device, progress, classifier_steps)
        return evaluate_model(model, dataset=source["loader"], class_names=train_data.class_names,
                              data_root=source["data_root"], device=device, n_samples=settings["eval_samples"],
                              train_data=train_data, progress=progress)
    except ValueError as exc:
        log.warning("evaluation skipped: %s", exc)
        return {"skipped": public_message(str(exc), settings)}


def public_message(text: str, settings: dict[str, Any]) -> str:
    """``text`` with the data set's server folder replaced by its name (the message is shown to anyone who
    lists the models)."""
    source = settings["source"]
    for path in (source["loader"].removeprefix("captions:"), source.get("data_root")):
        if path and len(path) > 1:
            text = text.replace(f"captions:{path}", settings["dataset"]).replace(path, settings["dataset"])
    return text


def upload_classifier_key(settings: dict[str, Any], train_data: Any) -> str:
    """The evaluation classifier's cache name for an uploaded set: its name and a digest of its folder, class
    names, labels and image shape (a re-uploaded set of the same name gets its own classifier)."""
    import hashlib

    digest = hashlib.sha256(json.dumps([settings["source"]["loader"], list(train_data.class_names),
                                        list(train_data.image_shape)]).encode()
                            + train_data.labels.numpy().tobytes()).hexdigest()[:12]
    return f"upload-{settings['dataset']}-{digest}"


def evaluate_upload(model: Any, settings: dict[str, Any], train_data: Any, device: Any, progress: Any = None,
                    classifier_steps: int | None = None) -> dict[str, Any]:
    """An uploaded captioned set, evaluated on its held-out split (its ``split: test`` lines, or every 10th
    image): with labels of at least 2 classes, the project's classifier is trained on the upload's train split
    (cached; its accuracy is measured on the held-out split) and gives feature FID, precision/recall, label
    accuracy (class models) or caption class accuracy (text models); without labels, the reconstruction error
    and the caption match rate in pixel space, with a note saying why the rest is missing."""
    import torch

    from training.captions import project_embeddings
    from training.classifier import get_classifier
    from training.evaluate import evaluate_model, evaluate_without_classifier, report

    report(progress, "test", 0, 1)
    test = load_split(settings, "test")
    if model.config.condition == "text" and test.text_embeddings is not None:
        test.text_embeddings = project_embeddings(model, test.text_embeddings, test.caption_counts)
    where = f"held-out split of {settings['dataset']!r} ({len(test)} images)"
    train_classes = set(train_data.labels[train_data.labels >= 0].tolist())
    test_labelled = int((test.labels >= 0).sum())
    if len(train_classes) >= 2 and test_labelled:
        key = upload_classifier_key(settings, train_data)
        shape = tuple(model.config.image_shape)
        report(progress, "classifier", 0, 1)
        classifier = get_classifier(key, None, device, train_data=train_data, test_data=test, image_shape=shape,
                                    max_steps=classifier_steps, quiet=True, progress=lambda done, total: report(
                                        progress, "classifier_training", done, total))
        with torch.no_grad():
            metrics = evaluate_model(model, dataset=key, class_names=list(train_data.class_names), data_root=None,
                                     device=device, n_samples=settings["eval_samples"], test_data=test,
                                     train_data=train_data, progress=progress)
        metrics.pop("text_alignment_note", None)  # the built-in sets' attribute prompts do not apply
        metrics["classifier"] = {"test_accuracy": classifier.test_accuracy, "trained_on": "the upload's train "
                                 f"split ({int((train_data.labels >= 0).sum())} labelled images)",
                                 "classes": list(classifier.class_names)}
    else:
        metrics = evaluate_without_classifier(model, test, n_samples=settings["eval_samples"], progress=progress)
    metrics["evaluated_on"] = where
    return metrics


def _register(run_id: str, token: str, out: Path, settings: dict[str, Any], metrics: dict[str, Any],
              resumed_from: int | None) -> str:
    """The new (not serving) model version and ``succeeded``, in one transaction fenced by the claim token."""
    db.session.rollback()
    if not transitions.finish_run(
            run_id, token, JobStatus.SUCCEEDED, phase="done", step=int(metrics.get("steps", 0)), eta_seconds=0.0,
            metrics={**metrics, **({"resumed_from_step": resumed_from} if resumed_from is not None else {})}):
        db.session.rollback()
        raise RunLost()
    version, _ = register_model(settings["model_name"], out, serve=False, commit=False, serve_first=False)
    transitions.link_run_version(run_id, version.id)
    db.session.commit()
    log.info("training run %s registered %s version %d (not serving)", run_id, version.name, version.version)
    return JobStatus.SUCCEEDED
