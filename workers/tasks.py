"""Celery tasks. ``generate_images(job_id)`` is idempotent and safe to deliver more than once:

* it claims the job with a conditional UPDATE (``queued`` -> ``running`` with a fresh ``claim_token``), so
  only one delivery works on a job at a time; a job already succeeded/failed/canceled is left alone;
* image files go to keys derived from the job id and index (a retry overwrites the same files), and the
  image rows (deterministic ids) are written in the same transaction that marks the job ``succeeded``,
  fenced by the claim token, so they appear exactly once;
* while it runs, a heartbeat thread renews the job's lease (``heartbeat_at``); a job whose worker died is
  found by the reconciliation (:func:`app.services.reconcile`) and sent again.

Models are loaded lazily in the pool process that runs the task (never in the parent: CUDA must not be
initialised before the fork) and kept in a bounded per-process LRU cache.
"""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
import uuid
from collections import OrderedDict
from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from flask import current_app
from sqlalchemy import delete, select, update

from app.extensions import db
from app.models import Image, Job, ModelVersion, image_id, utcnow
from app.storage import image_key

log = logging.getLogger(__name__)


class JobAborted(Exception):
    """The job was canceled or taken over while this attempt ran."""


# -- the per-process model cache ------------------------------------------------------------------
_MODELS: OrderedDict[tuple[int, str], tuple[Any, Any]] = OrderedDict()
_MODELS_LOCK = threading.Lock()


def get_model(version: ModelVersion) -> tuple[Any, Any]:
    """(model, CheckpointInfo) of a model version, loaded once per process; LRU of MODEL_CACHE_SIZE."""
    key = (version.id, version.checkpoint_path)
    with _MODELS_LOCK:
        if key in _MODELS:
            _MODELS.move_to_end(key)
            return _MODELS[key]
    from generation.checkpoint import load_checkpoint
    from generation.device import resolve_device

    model, info = load_checkpoint(version.checkpoint_path, device=resolve_device(current_app.config["DEVICE"]))
    with _MODELS_LOCK:
        _MODELS[key] = (model, info)
        _MODELS.move_to_end(key)
        while len(_MODELS) > max(1, int(current_app.config["MODEL_CACHE_SIZE"])):
            _MODELS.popitem(last=False)
    return model, info


def loaded_models() -> list[tuple[int, str]]:
    return list(_MODELS)


# -- the job lease ----------------------------------------------------------------------------------
class Lease:
    """Renews ``heartbeat_at`` from a thread while the job runs; ``lost`` is set when the row is no longer
    ours (canceled, or re-queued by the reconciliation)."""

    def __init__(self, job_id: str, token: str, interval: float):
        self.job_id, self.token, self.interval = job_id, token, interval
        self.engine = db.engine
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> "Lease":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.renew()
            except Exception as exc:  # a DB hiccup: try again next beat
                log.warning("job %s: lease renewal failed: %s", self.job_id, exc)

    def renew(self, **values: Any) -> None:
        with self.engine.begin() as conn:
            res = conn.execute(update(Job).where(Job.id == self.job_id, Job.claim_token == self.token,
                                                 Job.status == "running").values(heartbeat_at=utcnow(), **values))
        if res.rowcount == 0:
            self.lost.set()

    def check(self) -> None:
        if self.lost.is_set():
            raise JobAborted()


def claim(job_id: str) -> str | None:
    """queued -> running for this attempt; returns the claim token, or None when the job is not ours."""
    token = str(uuid.uuid4())
    now = utcnow()
    res = db.session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(
        status="running", claim_token=token, attempts=Job.attempts + 1, started_at=now, heartbeat_at=now,
        worker=f"{socket.gethostname()}:{__import__('os').getpid()}", progress=0.0, error=None))
    db.session.commit()
    return token if res.rowcount == 1 else None


def finish_failed(job_id: str, token: str, message: str) -> None:
    db.session.rollback()
    db.session.execute(update(Job).where(Job.id == job_id, Job.claim_token == token, Job.status == "running")
                       .values(status="failed", error=message[:2000], finished_at=utcnow()))
    db.session.commit()


# -- the task ---------------------------------------------------------------------------------------
@shared_task(name="workers.tasks.generate_images", bind=True, acks_late=True, reject_on_worker_lost=True)
def generate_images(self: Any, job_id: str) -> str:
    job = db.session.get(Job, job_id)
    if job is None:
        log.warning("job %s does not exist; dropping its message", job_id)
        return "missing"
    if job.status != "queued":
        # succeeded/failed/canceled: done already; running: another delivery holds the lease
        return f"skipped ({job.status})"
    token = claim(job_id)
    if token is None:
        return "skipped (claimed elsewhere)"
    cfg = current_app.config
    try:
        with Lease(job_id, token, float(cfg["HEARTBEAT_INTERVAL"])) as lease:
            _run_job(job_id, token, lease)
        return "succeeded"
    except JobAborted:
        log.info("job %s was canceled or taken over; stopping", job_id)
        _remove_unrecorded_files(job_id)
        return "aborted"
    except SoftTimeLimitExceeded:
        finish_failed(job_id, token, f"timed out: the job ran past the soft time limit of "
                                     f"{cfg['TASK_SOFT_TIME_LIMIT']} s")
        return "timeout"
    except Exception as exc:  # a failing model must not take the worker down: record and move on
        log.exception("job %s failed", job_id)
        finish_failed(job_id, token, _readable(exc))
        return "failed"


def _readable(exc: BaseException) -> str:
    message = str(exc).strip() or type(exc).__name__
    where = getattr(exc, "_priorforge_stage", None)
    return f"{where}: {type(exc).__name__}: {message}" if where else f"{type(exc).__name__}: {message}"


def _stage(stage: str):
    class _Ctx:
        def __enter__(self) -> None:
            return None

        def __exit__(self, exc_type, exc, tb) -> bool:
            if exc is not None and not isinstance(exc, (JobAborted, SoftTimeLimitExceeded)):
                if getattr(exc, "_priorforge_stage", None) is None:
                    try:
                        exc._priorforge_stage = stage  # type: ignore[attr-defined]
                    except AttributeError:
                        pass
            return False

    return _Ctx()


def _run_job(job_id: str, token: str, lease: Lease) -> None:
    cfg = current_app.config
    job = db.session.get(Job, job_id)
    assert job is not None
    version = job.model_version
    n, seed = job.n, job.seed
    delay = float(cfg.get("TEST_TASK_DELAY") or 0)
    if delay > 0:  # FOR TESTS ONLY: makes a job slow deterministically (kill/timeout tests)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            lease.check()
            time.sleep(0.1)

    with _stage(f"could not load model {version.name!r} version {version.version} "
                f"({version.checkpoint_path})"):
        model, info = get_model(version)
    lease.check()

    import torch

    from generation.sampling import condition_from_request, image_grid, png_metadata

    with _stage("could not build the condition"):
        embedding = None
        if job.condition_kind == "text":
            from generation.text_encoder import encode_prompt_for_checkpoint

            embedding = encode_prompt_for_checkpoint(model, info, job.prompt)
        condition = condition_from_request(
            model, info.class_names, label=job.label_index, cluster=job.cluster,
            embedding=embedding, prompt=job.prompt if job.condition_kind == "text" else None)

    storage = current_app.extensions["priorforge_storage"]
    chunk = max(1, int(cfg["GENERATE_CHUNK"]))
    rows: list[dict[str, Any]] = []
    base_params = {"model": version.name, "model_version": version.version, "backend": version.backend,
                   "job_id": job_id, "n": n, "job_seed": seed, **condition.describe()}
    if job.label is not None:
        base_params["label"] = job.label
    with _stage("generation failed"), torch.no_grad():
        for start in range(0, n, chunk):
            indices = range(start, min(n, start + chunk))
            # each image has its own generator (seed + index): image i is reproducible on its own
            latents = torch.cat([model.sample_latents(1, condition, torch.Generator().manual_seed(seed + i))
                                 for i in indices])
            images = model.decode(latents.to(model.device), condition).float().cpu()
            for offset, i in enumerate(indices):
                picture = image_grid(images[offset:offset + 1])
                buffer = io.BytesIO()
                picture.save(buffer, format="PNG",
                             pnginfo=png_metadata({**base_params, "index": i, "seed": seed + i}))
                key = image_key(job_id, i)
                storage.put(key, buffer.getvalue())
                rows.append({"id": image_id(job_id, i), "job_id": job_id, "index": i, "storage_key": key,
                             "width": picture.width, "height": picture.height, "seed": seed + i})
            lease.renew(progress=min(0.99, len(rows) / n))
            lease.check()

    # success: the image rows and the status change commit together, only if the claim is still ours
    db.session.rollback()
    res = db.session.execute(update(Job).where(Job.id == job_id, Job.claim_token == token, Job.status == "running")
                             .values(status="succeeded", progress=1.0, finished_at=utcnow(), heartbeat_at=utcnow()))
    if res.rowcount != 1:
        db.session.rollback()
        raise JobAborted()
    db.session.execute(delete(Image).where(Image.job_id == job_id))  # replace, never duplicate
    now = utcnow()
    db.session.add_all([Image(created_at=now, **row) for row in rows])
    db.session.commit()


def _remove_unrecorded_files(job_id: str) -> None:
    """A canceled job's partial files (no image rows point at them)."""
    db.session.rollback()
    job = db.session.get(Job, job_id)
    if job is None or job.status != "canceled":
        return
    storage = current_app.extensions["priorforge_storage"]
    recorded = set(db.session.scalars(select(Image.storage_key).where(Image.job_id == job_id)))
    for i in range(job.n):
        key = image_key(job_id, i)
        if key not in recorded:
            storage.delete(key)


@shared_task(name="workers.tasks.reconcile", ignore_result=True)
def reconcile() -> dict[str, int]:
    from app.services import reconcile as run

    return run()
