"""What a task does with the jobs it holds: claims companions of the same model version
(micro-batching, :mod:`workers.batching`), builds each job's condition, decodes them together (or an
experiment's operation alone) and hands the images to :mod:`workers.job_images` (docs/architecture.md, step 4).
"""
from __future__ import annotations

import functools
import io
import logging
import time
from typing import Any

from flask import current_app

from app.core import metrics
from app.core.extensions import db
from app.core.status import JobStatus
from workers import faults
from workers.batching import JobSnapshot, stage_clock
from workers.failures import failing_stage, readable
from workers.image_writer import ImageWriter
from workers.job_images import encode_and_store, store_and_finish
from workers.lease import Lease, claim_many, finish_failed
from workers.model_cache import VersionSnapshot, get_model

log = logging.getLogger(__name__)


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
    budget = cfg["BATCH_MAX_IMAGES"] - primary.n
    if budget < 1 or not faults.active().batching_allowed():
        return []
    with stage_clock("companions"):
        candidates = companion_candidates(primary, budget, in_transaction=in_transaction)
    wait = cfg["BATCH_WAIT_MS"] / 1000
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


def run_job(primary: JobSnapshot, version: VersionSnapshot, lease: Lease,
             companions: list[JobSnapshot] | None) -> dict[str, str]:
    """Generate the job of the message and the jobs batched with it (``companions``, None: not claimed yet);
    returns each job's outcome."""
    cfg = current_app.config
    job_id = primary.id
    faults.active().job_started(lease)
    with failing_stage(f"could not load model {version.name!r} version {version.version} "
                f"({version.checkpoint_path})"):
        with stage_clock("model"):
            model, info = get_model(version)
    lease.check()
    if primary.operation:
        return run_operation(primary, version, lease, model, info)
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
                members.append((member, JobRequest(job_condition(member, model, info), member.n, member.seed)))
        except Exception as exc:  # a bad condition fails its own job only
            if member.id == job_id and not companions:
                raise
            finish_failed(member.id, lease.tokens[member.id], readable(exc))
            lease.drop(member.id)
            outcomes[member.id] = JobStatus.FAILED

    groups_done, groups = [0], len({decode_group_key(model, request.condition) for _, request in members})

    def after_pass() -> None:  # after each decode group but the last: progress, stop if all were canceled
        groups_done[0] += 1
        if groups_done[0] < groups:
            lease.renew(one_transaction=True, progress=min(0.99, groups_done[0] / max(1, groups)))
        lease.check()  # after the last group, the fenced final transaction finds a canceled job anyway

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    writer = ImageWriter(cfg["PNG_THREADS"])

    def on_ready(index: int, job_images: Any, final: bool) -> None:  # a job's rows are decoded: store them now
        job, request = members[index]
        if job.id in lease.live():  # after the last pass, a thread would overlap nothing: the task does it
            writer.submit(job.id, functools.partial(encode_and_store, app, version, job, request, job_images),
                          inline=final)

    try:
        with failing_stage("generation failed"):
            images = decode_jobs(model, [request for _, request in members], cfg["GENERATE_CHUNK"],
                                 after_pass, precision=resolve_precision(cfg["INFERENCE_PRECISION"],
                                                                         model.device), on_ready=on_ready)
        outcomes.update(store_and_finish(members, images, lease, writer))
    finally:
        writer.wait_all()  # no write outlives the task (a cleanup or the next task comes after it)
    return outcomes


def run_operation(job: JobSnapshot, version: VersionSnapshot, lease: Lease, model: Any, info: Any) -> dict[str, str]:
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
    precision = resolve_precision(cfg["INFERENCE_PRECISION"], model.device)
    if operation.get("op") == "interpolate":
        end = operation["to"]
        other = dataclasses.replace(job, condition_kind=end["condition_kind"], label=end.get("label"),
                                    label_index=end.get("label_index"), cluster=end.get("cluster"),
                                    prompt=end.get("prompt"), seed=int(end["seed"]))
        request = JobRequest(job_condition(job, model, info), job.n, job.seed)
        condition_b = job_condition(other, model, info)
        with failing_stage("generation failed"), stage_clock("decode"):
            images = interpolate_generated(model, request.condition, job.seed, condition_b, other.seed, job.n,
                                           cfg["GENERATE_CHUNK"], precision=precision)
    elif operation.get("op") in ("reconstruct", "mix"):
        from generation.base import Condition
        from generation.latent_ops import reconstruct_and_mix

        condition = job_condition(job, model, info) if job.condition_kind != "none" else Condition()
        request = JobRequest(condition, job.n, job.seed)
        pictures = [input_image(key, model) for key in operation["inputs"]]
        with failing_stage("could not encode the image"):
            with stage_clock("decode"):
                images = reconstruct_and_mix(model, pictures, operation.get("steps"), cfg["GENERATE_CHUNK"],
                                             condition if job.condition_kind != "none" else None, precision)
                if operation.get("as"):  # the image re-generated under other conditions, its code kept
                    import torch

                    from generation.latent_ops import regenerate_as

                    targets = [job_condition(dataclasses.replace(job, condition_kind=target["condition_kind"],
                                                              label=target.get("label"),
                                                              label_index=target.get("label_index"),
                                                              cluster=target.get("cluster"),
                                                              prompt=target.get("prompt")), model, info)
                               for target in operation["as"]]
                    images = torch.cat([images, regenerate_as(model, pictures[0], condition, targets,
                                                              cfg["GENERATE_CHUNK"], precision)])
    else:
        raise ValueError(f"unknown operation {operation.get('op')!r}")
    lease.check()
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    writer = ImageWriter(0)
    try:
        writer.submit(job.id, functools.partial(encode_and_store, app, version, job, request, images), inline=True)
        return store_and_finish([(job, request)], [images], lease, writer)
    finally:
        writer.wait_all()


def input_image(key: str, model: Any) -> Any:
    """An experiment's input image (a gallery image's PNG, or an upload) from the store, as ``(C, H, W)`` in
    [-1, 1] at the model's shape."""
    from PIL import Image as PILImage

    from generation.latent_ops import image_to_tensor

    data = current_app.extensions["priorforge_storage"].get(key)
    with failing_stage("could not read the input image"), PILImage.open(io.BytesIO(data)) as picture:
        return image_to_tensor(picture, model.config.image_shape)


def job_condition(job: JobSnapshot, model: Any, info: Any) -> Any:
    from generation.sampling import condition_from_request

    with failing_stage("could not build the condition"):
        embedding = None
        if job.condition_kind == "text":
            from generation.text_encoder import encode_prompt_for_checkpoint

            embedding = encode_prompt_for_checkpoint(model, info, job.prompt or "")
        return condition_from_request(
            model, info.class_names, label=job.label_index, cluster=job.cluster,
            embedding=embedding, prompt=job.prompt if job.condition_kind == "text" else None)
