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
    """Renews ``heartbeat_at`` from a thread while the jobs of one task run.

    It starts with the job of the task's message; :meth:`add` adds the jobs claimed to be batched with it.
    A job whose row is no longer ours (canceled, or re-queued by the reconciliation) goes to ``lost_jobs``;
    ``lost`` is set once every job is lost.
    """

    def __init__(self, job_id: str, token: str, interval: float):
        self.job_id, self.interval = job_id, interval
        self.tokens: dict[str, str] = {job_id: token}
        self.lost_jobs: set[str] = set()
        self.engine = db.engine
        self.lost = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> "Lease":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def add(self, job_id: str, token: str) -> None:
        with self._lock:
            self.tokens[job_id] = token

    def live(self) -> dict[str, str]:
        """job id -> claim token of the jobs still ours."""
        with self._lock:
            return {job_id: token for job_id, token in self.tokens.items() if job_id not in self.lost_jobs}

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.renew()
            except Exception as exc:  # a DB hiccup: try again next beat
                log.warning("job %s: lease renewal failed: %s", self.job_id, exc)

    def renew(self, **values: Any) -> None:
        for job_id, token in self.live().items():
            with self.engine.begin() as conn:
                res = conn.execute(update(Job).where(Job.id == job_id, Job.claim_token == token,
                                                     Job.status == "running").values(heartbeat_at=utcnow(), **values))
            if res.rowcount == 0:
                with self._lock:
                    self.lost_jobs.add(job_id)
        if not self.live():
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
    lease = Lease(job_id, token, float(cfg["HEARTBEAT_INTERVAL"]))
    try:
        with lease:
            outcomes = _run_job(job_id, lease)
        return outcomes.get(job_id, "aborted")
    except JobAborted:
        log.info("job %s was canceled or taken over; stopping", job_id)
        for member in lease.tokens:
            _remove_unrecorded_files(member)
        return "aborted"
    except SoftTimeLimitExceeded:
        for member, member_token in lease.tokens.items():
            finish_failed(member, member_token, f"timed out: the job ran past the soft time limit of "
                                                f"{cfg['TASK_SOFT_TIME_LIMIT']} s")
        return "timeout"
    except Exception as exc:  # a failing model must not take the worker down: record and move on
        log.exception("job %s failed", job_id)
        for member, member_token in lease.tokens.items():
            finish_failed(member, member_token, _readable(exc))
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


def claim_companions(primary: Job, lease: Lease) -> list[str]:
    """Claim queued jobs of the primary's model version to decode with it (up to BATCH_MAX_IMAGES images in
    all, after waiting BATCH_WAIT_MS for them to arrive). Each is claimed with the same conditional update as
    a delivery, so its own message, when it comes, is a no-op; each is fenced by its own claim token."""
    from workers.batching import companion_candidates

    cfg = current_app.config
    budget = int(cfg["BATCH_MAX_IMAGES"]) - primary.n
    if budget < 1 or float(cfg.get("TEST_TASK_DELAY") or 0) > 0:  # a test-delayed job runs alone
        return []
    wait = float(cfg["BATCH_WAIT_MS"]) / 1000
    if wait > 0:
        time.sleep(wait)
    claimed = []
    for job_id, _n in companion_candidates(primary, budget):
        token = claim(job_id)
        if token is not None:
            lease.add(job_id, token)
            claimed.append(job_id)
    return claimed


def _run_job(job_id: str, lease: Lease) -> dict[str, str]:
    """Generate the job of the message and the jobs batched with it; returns each job's outcome."""
    cfg = current_app.config
    job = db.session.get(Job, job_id)
    assert job is not None
    version = job.model_version
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
    companions = claim_companions(job, lease)
    if companions:
        log.info("job %s: batched with %d queued job(s) of the same model version", job_id, len(companions))

    from generation.sampling import decode_group_key
    from workers.batching import JobRequest, decode_jobs

    outcomes: dict[str, str] = {}
    members: list[tuple[Job, JobRequest]] = []
    for member_id in [job_id, *companions]:
        member = db.session.get(Job, member_id)
        assert member is not None
        try:
            members.append((member, JobRequest(_condition(member, model, info), member.n, member.seed)))
        except Exception as exc:  # a bad condition fails its own job only
            if member_id == job_id and not companions:
                raise
            finish_failed(member_id, lease.tokens[member_id], _readable(exc))
            outcomes[member_id] = "failed"

    groups_done, groups = [0], len({decode_group_key(model, request.condition) for _, request in members})

    def after_pass() -> None:  # after each decode group: progress, and stop if every job was canceled
        groups_done[0] += 1
        lease.renew(progress=min(0.99, groups_done[0] / max(1, groups)))
        lease.check()

    with _stage("generation failed"):
        images = decode_jobs(model, [request for _, request in members], int(cfg["GENERATE_CHUNK"]), after_pass)
    for (member, request), member_images in zip(members, images):
        outcomes[member.id] = _store_and_finish(member, request, member_images, lease)
    return outcomes


def _condition(job: Job, model: Any, info: Any) -> Any:
    from generation.sampling import condition_from_request

    with _stage("could not build the condition"):
        embedding = None
        if job.condition_kind == "text":
            from generation.text_encoder import encode_prompt_for_checkpoint

            embedding = encode_prompt_for_checkpoint(model, info, job.prompt)
        return condition_from_request(
            model, info.class_names, label=job.label_index, cluster=job.cluster,
            embedding=embedding, prompt=job.prompt if job.condition_kind == "text" else None)


def _store_and_finish(job: Job, request: Any, images: Any, lease: Lease) -> str:
    """Write the job's PNGs, then its image rows with the status change, fenced by its claim token."""
    from generation.sampling import image_grid, png_metadata

    job_id, token = job.id, lease.tokens[job.id]
    if job_id in lease.lost_jobs:
        _remove_unrecorded_files(job_id)
        return "aborted"
    version = job.model_version
    storage = current_app.extensions["priorforge_storage"]
    seed = request.seed
    base_params = {"model": version.name, "model_version": version.version, "backend": version.backend,
                   "job_id": job_id, "n": request.n, "job_seed": seed, **request.condition.describe()}
    if job.label is not None:
        base_params["label"] = job.label
    rows: list[dict[str, Any]] = []
    with _stage("generation failed"):
        for i in range(request.n):
            picture = image_grid(images[i:i + 1])
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG", pnginfo=png_metadata({**base_params, "index": i, "seed": seed + i}))
            key = image_key(job_id, i)
            storage.put(key, buffer.getvalue())
            rows.append({"id": image_id(job_id, i), "job_id": job_id, "index": i, "storage_key": key,
                         "width": picture.width, "height": picture.height, "seed": seed + i})

    # success: the image rows and the status change commit together, only if the claim is still ours
    db.session.rollback()
    res = db.session.execute(update(Job).where(Job.id == job_id, Job.claim_token == token, Job.status == "running")
                             .values(status="succeeded", progress=1.0, finished_at=utcnow(), heartbeat_at=utcnow()))
    if res.rowcount != 1:
        db.session.rollback()
        with lease._lock:
            lease.lost_jobs.add(job_id)
        _remove_unrecorded_files(job_id)
        return "aborted"
    db.session.execute(delete(Image).where(Image.job_id == job_id))  # replace, never duplicate
    now = utcnow()
    db.session.add_all([Image(created_at=now, **row) for row in rows])
    db.session.commit()
    with lease._lock:  # finished: the lease stops renewing it
        lease.lost_jobs.add(job_id)
    return "succeeded"


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
