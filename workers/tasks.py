"""Celery tasks. ``generate_images(job_id)`` is idempotent and safe to deliver more than once:

* it claims the job with a conditional UPDATE (``queued`` -> ``running`` with a fresh ``claim_token``), so
  only one delivery works on a job at a time; a job already succeeded/failed/canceled is left alone;
* image files go to keys derived from the job id and index (a retry overwrites the same files), and the
  image rows (deterministic ids) are written in the same transaction that marks the job ``succeeded``,
  fenced by the claim token, so they appear exactly once;
* a task also claims queued jobs of the same model version and decodes them with its own
  (micro-batching, :mod:`workers.batching`); each keeps its own claim token. The claims are one transaction
  and the finish is one transaction for all of them (one fenced UPDATE, so a job canceled meanwhile drops
  out alone, then the image rows of the others): two commits a task whatever the number of jobs;
* while it runs, a heartbeat thread renews the job's lease (``heartbeat_at``); a job whose worker died is
  found by the reconciliation (:func:`app.services.reconcile.reconcile`) and sent again.

Models are loaded lazily in the pool process that runs the task (never in the parent: CUDA must not be
initialised before the fork) and kept in a bounded per-process LRU cache.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Literal

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from flask import current_app
from sqlalchemy import bindparam, delete, insert, select

from app.core import metrics, transitions
from app.core.extensions import db
from app.core.tables import Image, Job, ModelVersion, aware, image_id, utcnow
from app.core.queue import GENERATE_TASK, RECONCILE_TASK
from app.core.storage import StorageUnavailable, image_key
from app.services.job_events import announce_finished
from app.services.reconcile import main_of_this_process
from app.core.status import JobStatus
from workers import faults
from workers.batching import JobSnapshot, stage_clock
from workers.lease import JobAborted, Lease
from workers.model_cache import get_model, loaded_models, model_cached
from workers.image_writer import ImageWriter

log = logging.getLogger(__name__)

# PRIORFORGE_LOG_STAGE_TIMES=1: log each task's time per stage (workers.batching.stage_clock), for profiling
LOG_STAGE_TIMES = os.environ.get("PRIORFORGE_LOG_STAGE_TIMES", "") in ("1", "true", "yes")


def claim_many(job_ids: list[str], *, commit: bool = True) -> dict[str, str]:
    """queued -> running for this attempt (:func:`app.core.transitions.claim_jobs`), in one transaction (left
    open with ``commit=False``); job id -> claim token of the jobs claimed."""
    try:
        # worker_main: a death of this pool process is charged to its jobs only if the main process lived on
        tokens = transitions.claim_jobs(job_ids, worker=f"{socket.gethostname()}:{os.getpid()}",
                                        worker_main=main_of_this_process())
        if commit:
            db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    return tokens


def claim(job_id: str) -> str | None:
    """queued -> running for this attempt; returns the claim token, or None when the job is not ours."""
    return claim_many([job_id]).get(job_id)


def finish_failed(job_id: str, token: str, message: str) -> None:
    db.session.rollback()
    transitions.fail_job(job_id, token, message)
    db.session.commit()


@dataclass(frozen=True)
class VersionSnapshot:
    """What the task needs of a model version (read once: the task's commits expire ORM objects)."""

    id: int
    name: str
    version: int
    backend: str
    checkpoint_path: str
    weights_sha256: str | None
    checkpoint_key: str | None
    checkpoint_files: dict[str, str] | None

    @classmethod
    def columns(cls) -> list:
        return [getattr(ModelVersion, name) for name in cls.__dataclass_fields__]


@functools.cache
def _lookup_statement() -> Any:
    """The job's status, its snapshot and its model version's, in one statement (built once)."""
    return select(Job.status, Job.isolated, *JobSnapshot.columns(), *VersionSnapshot.columns()) \
        .join(ModelVersion, Job.model_version_id == ModelVersion.id).where(Job.id == bindparam("job_id"))


# -- the task ---------------------------------------------------------------------------------------
@shared_task(name=GENERATE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True,
             Strategy="workers.strategy:skip_settled_jobs")
def generate_images(self: Any, job_id: str) -> str:
    try:
        return _generate_images_timed(job_id)
    finally:
        note_worker(getattr(self.request, "hostname", None))


def _generate_images_timed(job_id: str) -> str:
    if not LOG_STAGE_TIMES:
        return _generate_images(job_id)
    stage_clock.reset()  # one task at a time in a pool process
    stage_clock.enabled = True
    t0 = time.perf_counter()
    try:
        return _generate_images(job_id)
    finally:
        stage_clock.enabled = False
        log.info("job %s: %.1f ms; stages (ms): %s", job_id, (time.perf_counter() - t0) * 1e3,
                 ", ".join(f"{stage} {seconds * 1e3:.1f}" for stage, seconds in stage_clock.seconds.items()))


def _generate_images(job_id: str) -> str:
    with stage_clock("lookup"):  # one plain row (no ORM objects): most messages under load are no-ops
        row = db.session.execute(_lookup_statement(), {"job_id": job_id}).first()
    if row is None:
        log.warning("job %s does not exist; dropping its message", job_id)
        return "missing"
    if row.status != JobStatus.QUEUED:
        # succeeded/failed/canceled: done already; running: another delivery holds the lease
        return f"skipped ({row.status})"
    isolated = bool(row.isolated)  # its last worker died while it was batched: it runs alone this time
    primary = JobSnapshot(*row[2:2 + len(JobSnapshot.columns())])
    version = VersionSnapshot(*row[2 + len(JobSnapshot.columns()):])
    cfg = current_app.config
    # The claim, and when the model is already loaded the companions' claims too, in one transaction. A
    # model still to load is loaded before companions are claimed: a load that fails fails this job only.
    with stage_clock("claim"):
        token = claim_many([job_id], commit=False).get(job_id)
        if token is None:
            db.session.rollback()
            return "skipped (claimed elsewhere)"
        lease = Lease(job_id, token, float(cfg["HEARTBEAT_INTERVAL"]))
        companions: list[JobSnapshot] | None
        if isolated or primary.operation:  # an interpolation decodes codes of its own: never batched
            companions = []
        else:
            companions = claim_companions(primary, lease, in_transaction=True) if model_cached(version) else None
        db.session.commit()
    try:
        with lease:
            outcomes = _run_job(primary, version, lease, companions)
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
    except StorageUnavailable as exc:  # the store is at fault, not the job: back to the queue
        log.warning("job %s: the object store is unavailable, the job goes back to the queue: %s", job_id, exc)
        for member, member_token in lease.tokens.items():
            _requeue(member, member_token, str(exc))
        return "requeued"
    except Exception as exc:  # a failing model must not take the worker down: record and move on
        log.exception("job %s failed", job_id)
        for member, member_token in lease.tokens.items():
            finish_failed(member, member_token, _readable(exc))
        return JobStatus.FAILED
    finally:
        # wake the requests waiting on these jobs (?wait=): whatever became of them, it is committed now
        announce_finished(list(lease.tokens))
        metrics.leases_lost(lease.lost_count)
        record_finished(list(lease.tokens))


def _requeue(job_id: str, token: str, reason: str) -> None:
    """queued again (fenced by the claim token): the reconciliation re-sends it after QUEUED_STALE_AFTER, a
    back-off while the store is down; failed once it has been attempted MAX_ATTEMPTS times."""
    db.session.rollback()
    transitions.requeue_job(job_id, token, reason, int(current_app.config["MAX_ATTEMPTS"]))
    db.session.commit()


def _readable(exc: BaseException) -> str:
    message = str(exc).strip() or type(exc).__name__
    where = getattr(exc, "_priorforge_stage", None)
    return f"{where}: {type(exc).__name__}: {message}" if where else f"{type(exc).__name__}: {message}"


def _stage(stage: str):
    class _Ctx:
        def __enter__(self) -> None:
            return None

        def __exit__(self, exc_type, exc, tb) -> Literal[False]:
            if exc is not None and not isinstance(exc, (JobAborted, SoftTimeLimitExceeded)):
                if getattr(exc, "_priorforge_stage", None) is None:
                    try:
                        exc._priorforge_stage = stage
                    except AttributeError:
                        pass
            return False

    return _Ctx()


def claim_companions(primary: JobSnapshot, lease: Lease, *, in_transaction: bool = False
                     ) -> list[JobSnapshot] | None:
    """Claim queued jobs of the primary's model version to decode with it (up to BATCH_MAX_IMAGES images in
    all). Each is claimed with the same conditional update as a delivery, so its own message, when it comes,
    is a no-op; each is fenced by its own claim token; all are claimed in one transaction (with
    ``in_transaction``: the caller's, open, which has just claimed the primary; the caller commits).

    Jobs already queued (a backlog: the worker is the bottleneck) are claimed at once: waiting would only
    idle the worker, and what arrives meanwhile joins the next task. Only when none is queued does the task
    wait for some to arrive, ``BATCH_WAIT_MS``: 0 by default, since a lone job
    (one client) would pay the whole wait as latency. That wait never happens inside a transaction: then
    this returns None, and the caller tries again after its commit."""
    from workers.batching import companion_candidates

    cfg = current_app.config
    budget = int(cfg["BATCH_MAX_IMAGES"]) - primary.n
    if budget < 1 or not faults.active().batching_allowed():
        return []
    with stage_clock("companions"):
        candidates = companion_candidates(primary, budget, in_transaction=in_transaction)
    wait = float(cfg["BATCH_WAIT_MS"]) / 1000
    if not candidates and wait > 0:
        if in_transaction:
            return None
        db.session.commit()  # no transaction stays open while the task sleeps
        with stage_clock("batch_wait"):
            time.sleep(wait)
        with stage_clock("companions"):
            candidates = companion_candidates(primary, budget)
    if not candidates:
        if not in_transaction:
            db.session.commit()  # end the read
        return []
    with stage_clock("companions"):
        tokens = claim_many([candidate.id for candidate in candidates], commit=not in_transaction)
    claimed = []
    for candidate in candidates:
        if candidate.id in tokens:
            lease.add(candidate.id, tokens[candidate.id])
            claimed.append(candidate)
    return claimed


def _run_job(primary: JobSnapshot, version: VersionSnapshot, lease: Lease,
             companions: list[JobSnapshot] | None) -> dict[str, str]:
    """Generate the job of the message and the jobs batched with it (``companions``, None: not claimed yet);
    returns each job's outcome."""
    cfg = current_app.config
    job_id = primary.id
    faults.active().job_started(lease)
    with _stage(f"could not load model {version.name!r} version {version.version} "
                f"({version.checkpoint_path})"):
        with stage_clock("model"):
            model, info = get_model(version)
    lease.check()
    if primary.operation:
        return _run_operation(primary, version, lease, model, info)
    if companions is None:
        companions = claim_companions(primary, lease) or []
    faults.active().batch_claimed([job.seed for job in [primary, *companions]])
    if companions:
        log.info("job %s: batched with %d queued job(s) of the same model version", job_id, len(companions))
    metrics.decode_batch(1 + len(companions), primary.n + sum(job.n for job in companions))

    from generation.sampling import decode_group_key
    from generation.precision import resolve_precision
    from workers.batching import JobRequest, decode_jobs

    outcomes: dict[str, str] = {}
    members: list[tuple[JobSnapshot, JobRequest]] = []
    for member in [primary, *companions]:
        try:
            with stage_clock("members"):
                members.append((member, JobRequest(_condition(member, model, info), member.n, member.seed)))
        except Exception as exc:  # a bad condition fails its own job only
            if member.id == job_id and not companions:
                raise
            finish_failed(member.id, lease.tokens[member.id], _readable(exc))
            lease.drop(member.id)
            outcomes[member.id] = JobStatus.FAILED

    groups_done, groups = [0], len({decode_group_key(model, request.condition) for _, request in members})

    def after_pass() -> None:  # after each decode group but the last: progress, stop if all were canceled
        groups_done[0] += 1
        if groups_done[0] < groups:
            lease.renew(one_transaction=True, progress=min(0.99, groups_done[0] / max(1, groups)))
        lease.check()  # after the last group, the fenced final transaction finds a canceled job anyway

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    writer = ImageWriter(int(cfg["PNG_THREADS"]))

    def on_ready(index: int, job_images: Any, final: bool) -> None:  # a job's rows are decoded: store them now
        job, request = members[index]
        if job.id in lease.live():  # after the last pass, a thread would overlap nothing: the task does it
            writer.submit(job.id, functools.partial(_encode_and_store, app, version, job, request, job_images),
                          inline=final)

    try:
        with _stage("generation failed"):
            images = decode_jobs(model, [request for _, request in members], int(cfg["GENERATE_CHUNK"]),
                                 after_pass, precision=resolve_precision(str(cfg["INFERENCE_PRECISION"]),
                                                                         model.device), on_ready=on_ready)
        outcomes.update(_store_and_finish(members, images, lease, writer))
    finally:
        writer.wait_all()  # no write outlives the task (a cleanup or the next task comes after it)
    return outcomes


def _run_operation(job: JobSnapshot, version: VersionSnapshot, lease: Lease, model: Any, info: Any) -> dict[str, str]:
    """A job with an ``operation`` (:mod:`app.services.experiments`), decoded as a job decodes (passes of
    GENERATE_CHUNK rows, the same precision) and stored like any job's images: an interpolation (``n`` images
    on the line between the code of the job's own condition and seed and the other end's), a reconstruction
    (the input image as the model sees it, then the decoding of its code) or a mix (``n`` decodings of two
    input images' codes mixed from all A to all B)."""
    import dataclasses

    from generation.latent_ops import interpolate_generated
    from generation.precision import resolve_precision
    from workers.batching import JobRequest

    cfg = current_app.config
    operation = dict(job.operation or {})
    precision = resolve_precision(str(cfg["INFERENCE_PRECISION"]), model.device)
    if operation.get("op") == "interpolate":
        end = operation["to"]
        other = dataclasses.replace(job, condition_kind=end["condition_kind"], label=end.get("label"),
                                    label_index=end.get("label_index"), cluster=end.get("cluster"),
                                    prompt=end.get("prompt"), seed=int(end["seed"]))
        request = JobRequest(_condition(job, model, info), job.n, job.seed)
        condition_b = _condition(other, model, info)
        with _stage("generation failed"), stage_clock("decode"):
            images = interpolate_generated(model, request.condition, job.seed, condition_b, other.seed, job.n,
                                           int(cfg["GENERATE_CHUNK"]), precision=precision)
    elif operation.get("op") in ("reconstruct", "mix"):
        from generation.base import Condition
        from generation.latent_ops import reconstruct_and_mix

        condition = _condition(job, model, info) if job.condition_kind != "none" else Condition()
        request = JobRequest(condition, job.n, job.seed)
        pictures = [_input_image(key, model) for key in operation["inputs"]]
        with _stage("could not encode the image"):
            with stage_clock("decode"):
                images = reconstruct_and_mix(model, pictures, operation.get("steps"), int(cfg["GENERATE_CHUNK"]),
                                             condition if job.condition_kind != "none" else None, precision)
                if operation.get("as"):  # the image re-generated under other conditions, its code kept
                    import torch

                    from generation.latent_ops import regenerate_as

                    targets = [_condition(dataclasses.replace(job, condition_kind=target["condition_kind"],
                                                              label=target.get("label"),
                                                              label_index=target.get("label_index"),
                                                              cluster=target.get("cluster"),
                                                              prompt=target.get("prompt")), model, info)
                               for target in operation["as"]]
                    images = torch.cat([images, regenerate_as(model, pictures[0], condition, targets,
                                                              int(cfg["GENERATE_CHUNK"]), precision)])
    else:
        raise ValueError(f"unknown operation {operation.get('op')!r}")
    lease.check()
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    writer = ImageWriter(0)
    try:
        writer.submit(job.id, functools.partial(_encode_and_store, app, version, job, request, images), inline=True)
        return _store_and_finish([(job, request)], [images], lease, writer)
    finally:
        writer.wait_all()


def _input_image(key: str, model: Any) -> Any:
    """An experiment's input image (a gallery image's PNG, or an upload) from the store, as ``(C, H, W)`` in
    [-1, 1] at the model's shape."""
    from PIL import Image as PILImage

    from generation.latent_ops import image_to_tensor

    data = current_app.extensions["priorforge_storage"].get(key)
    with _stage("could not read the input image"), PILImage.open(io.BytesIO(data)) as picture:
        return image_to_tensor(picture, model.config.image_shape)


def _condition(job: JobSnapshot, model: Any, info: Any) -> Any:
    from generation.sampling import condition_from_request

    with _stage("could not build the condition"):
        embedding = None
        if job.condition_kind == "text":
            from generation.text_encoder import encode_prompt_for_checkpoint

            embedding = encode_prompt_for_checkpoint(model, info, job.prompt or "")
        return condition_from_request(
            model, info.class_names, label=job.label_index, cluster=job.cluster,
            embedding=embedding, prompt=job.prompt if job.condition_kind == "text" else None)


def _encode_pngs(version: VersionSnapshot, job: JobSnapshot, request: Any, images: Any) -> list[tuple[str, bytes]]:
    """(storage key, PNG bytes) of each image of the job, with its generation parameters as text chunks.

    The same bytes as ``image_grid(images[i:i + 1]).save(..., format="PNG", pnginfo=...)``: the uint8
    conversion is done once for the job (elementwise, so each image's pixels are those of its own call)."""
    from PIL import Image as PILImage

    from generation.sampling import png_metadata, to_uint8

    base_params = {"model": version.name, "model_version": version.version, "backend": version.backend,
                   "job_id": job.id, "n": request.n, "job_seed": request.seed, **request.condition.describe()}
    if job.label is not None:
        base_params["label"] = job.label
    if job.experiment_id is not None:
        base_params["experiment_id"] = job.experiment_id
    pixels = to_uint8(images).permute(0, 2, 3, 1).numpy()  # (n, H, W, C)
    out = []
    for i in range(request.n):
        array = pixels[i]
        picture = PILImage.fromarray(array[:, :, 0], mode="L") if array.shape[2] == 1 \
            else PILImage.fromarray(array, mode="RGB")
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", pnginfo=png_metadata({**base_params, "index": i,
                                                                 **_image_params(job, request, i)}))
        out.append((image_key(job.id, i), buffer.getvalue()))
    return out


def _image_params(job: JobSnapshot, request: Any, index: int) -> dict[str, Any]:
    """What a PNG says of its own image besides the job's parameters: its seed, and for an interpolation its
    place on the line (``t`` from 0 at the job's own end to 1 at the other end) and both ends."""
    operation = job.operation
    if operation and operation.get("op") in ("reconstruct", "mix"):
        steps = max(2, request.n)
        if operation["op"] == "reconstruct":
            place: dict[str, Any] = {"role": ("input", "reconstruction", "regenerated")[min(index, 2)]}
            if index >= 2:  # under which condition
                target = operation["as"][index - 2]
                place.update({f"as_{key}": target[key] for key in ("label", "cluster", "prompt")
                              if target.get(key) is not None})
        else:
            place = {"weight_a": round(1 - index / (steps - 1), 6)}
        return {"seed": job.seed, "operation": operation["op"], **place}
    if not operation or operation.get("op") != "interpolate":
        return {"seed": request.seed + index}
    steps = max(2, request.n)
    end = operation["to"]
    other = {key: end[key] for key in ("label", "cluster", "prompt") if end.get(key) is not None}
    return {"seed": _image_seed(job, request, index), "operation": "interpolate", "t": round(index / (steps - 1), 6),
            "between": list(operation.get("between") or []), "from_seed": job.seed, "to_seed": int(end["seed"]),
            **{f"to_{key}": value for key, value in other.items()}}


def _image_seed(job: JobSnapshot, request: Any, index: int) -> int:
    """The seed an image row records: ``seed + index`` for a sampled image; on an interpolation the seed of
    the nearer end (the first half the job's own, the second half the other end's)."""
    operation = job.operation
    if operation and operation.get("op") in ("reconstruct", "mix"):
        return job.seed  # no seed is drawn: the images come from the input images' codes
    if not operation or operation.get("op") != "interpolate":
        return request.seed + index
    return job.seed if 2 * index < request.n else int(operation["to"]["seed"])


def _encode_and_store(app: Any, version: VersionSnapshot, job: JobSnapshot, request: Any,
                      images: Any) -> list[str]:
    """Encode a job's PNGs and write them (on an ImageWriter thread, or inline); their storage keys."""
    import torch

    with app.app_context(), torch.inference_mode():
        with stage_clock("png"):
            files = _encode_pngs(version, job, request, images)
        with stage_clock("storage"):
            app.extensions["priorforge_storage"].put_many(files)
    return [key for key, _data in files]


def _store_and_finish(members: list[tuple[JobSnapshot, Any]], images: list[Any], lease: Lease,
                      writer: ImageWriter) -> dict[str, str]:
    """Collect the jobs' written PNGs (``writer``), then, in ONE transaction, each job's status change (fenced
    by its claim token) with its image rows: a job's rows and its ``succeeded`` commit together, so they
    appear exactly once. A job that is no longer ours (canceled, taken over) gets no rows; its files are
    removed once its write has ended."""
    outcomes: dict[str, str] = {}
    stored: list[tuple[JobSnapshot, list[dict[str, Any]]]] = []
    for (job, request), job_images in zip(members, images):
        if job.id not in lease.live() or not writer.submitted(job.id):
            writer.wait(job.id)
            _remove_unrecorded_files(job.id)
            outcomes[job.id] = "aborted"
            continue
        with _stage("generation failed"):
            keys = writer.result(job.id)
        height, width = (int(side) for side in job_images.shape[-2:])  # (n, C, H, W)
        rows = [{"id": image_id(job.id, i), "job_id": job.id, "index": i, "storage_key": key,
                 "width": width, "height": height, "seed": _image_seed(job, request, i)}
                for i, key in enumerate(keys)]
        stored.append((job, rows))

    with stage_clock("finish"):
        db.session.rollback()
        succeeded: list[tuple[JobSnapshot, Any]] = []
        lost: list[tuple[JobSnapshot, Any]] = []
        now = utcnow()
        try:
            ours = transitions.succeed_jobs({job.id: lease.tokens[job.id] for job, _ in stored}, now)
            for job, rows in stored:
                (succeeded if job.id in ours else lost).append((job, rows))
            if succeeded:
                ids = [job.id for job, _ in succeeded]
                db.session.execute(delete(Image).where(Image.job_id.in_(ids)))  # replace, never duplicate
                db.session.execute(insert(Image), [{**row, "created_at": now}
                                                   for _, rows in succeeded for row in rows])
            db.session.commit()
        except BaseException:
            db.session.rollback()
            raise
    for job, _ in succeeded:
        lease.drop(job.id)  # finished: the lease stops renewing it
        outcomes[job.id] = JobStatus.SUCCEEDED
    for job, _ in lost:
        lease.drop(job.id)
        _remove_unrecorded_files(job.id)
        outcomes[job.id] = "aborted"
    return outcomes


def _remove_unrecorded_files(job_id: str) -> None:
    """A canceled job's partial files (no image rows point at them)."""
    db.session.rollback()
    job = db.session.get(Job, job_id)
    if job is None or job.status != JobStatus.CANCELED:
        return
    storage = current_app.extensions["priorforge_storage"]
    recorded = set(db.session.scalars(select(Image.storage_key).where(Image.job_id == job_id)))
    for i in range(job.n):
        key = image_key(job_id, i)
        if key not in recorded:
            storage.delete(key)


# -- metrics and the queue page ----------------------------------------------------------------------
def record_finished(job_ids: list[str]) -> None:
    """Count the task's jobs that ended (by model, status and lane) and their latencies from submission
    (/metrics). One read after the task's last commit; never raises."""
    try:
        from app.services.metrics import lane_name

        db.session.rollback()
        rows = db.session.execute(
            select(Job.status, Job.n, Job.batch_id, Job.created_at, Job.started_at, Job.finished_at, ModelVersion.name)
            .join(ModelVersion, Job.model_version_id == ModelVersion.id)
            .where(Job.id.in_(job_ids), Job.status.in_((JobStatus.SUCCEEDED, JobStatus.FAILED)))).all()
        db.session.rollback()  # a read: ending it commits nothing (a task's job rows change in two commits)
        for row in rows:
            created, started, finished = aware(row.created_at), aware(row.started_at), aware(row.finished_at)
            metrics.job_finished(row.name, row.status, lane_name(row.batch_id, row.n), row.n,
                                 (started - created).total_seconds() if started and created else None,
                                 (finished - created).total_seconds() if finished and created else None)
    except Exception as exc:
        db.session.rollback()
        log.warning("metrics of jobs %s: %s: %s", job_ids, type(exc).__name__, exc)


_tasks_run = [0]
# a busy worker writes its status row at most this often (and at once when its loaded models change): the row
# is for a page that reloads every 10 s, and a commit per task would double a task's commits
WORKER_STATUS_EVERY = 5.0
_status_written: dict[str, Any] = {"at": None, "models": None}


def note_worker(node: str | None) -> None:
    """This pool process's row of ``worker_status`` (the admin's queue page): its loaded models. Never raises."""
    _tasks_run[0] += 1
    try:
        from app.services.dashboard import note_worker as note

        keys = loaded_models()
        now, last = time.monotonic(), _status_written["at"]
        if last is not None and now - last < WORKER_STATUS_EVERY and _status_written["models"] == keys:
            return
        _status_written.update(at=now, models=keys)
        labels = {row.id: f"{row.name} v{row.version}" for row in db.session.execute(
            select(ModelVersion.id, ModelVersion.name, ModelVersion.version).where(
                ModelVersion.id.in_([version_id for version_id, _ in keys])))} if keys else {}
        note(f"{socket.gethostname()}:{os.getpid()}", node, [labels.get(version_id, f"version id {version_id}")
                                                             for version_id, _ in keys],
             _tasks_run[0])
    except Exception as exc:
        db.session.rollback()
        log.warning("worker status: %s: %s", type(exc).__name__, exc)


@shared_task(name=RECONCILE_TASK, ignore_result=True)
def reconcile() -> dict[str, int]:
    from app.services.reconcile import reconcile as run

    return run()
