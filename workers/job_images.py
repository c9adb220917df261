"""A job's images: PNG files with their generation parameters, written to the store (on an
:class:`~workers.image_writer.ImageWriter` thread or inline), then the jobs marked ``succeeded`` with their
image rows in one transaction fenced by the claim tokens (docs/architecture.md, step 5)."""
from __future__ import annotations

import functools
import io
from typing import Any

from flask import current_app
from sqlalchemy import select

from app.core import transitions
from app.core.extensions import db
from app.core.status import JobStatus
from app.core.storage import image_key
from app.core.tables import Image, Job, image_id, utcnow
from workers.batching import JobSnapshot, stage_clock
from workers.failures import failing_stage
from workers.image_writer import ImageWriter
from workers.lease import Lease, commit_without_flush_wait
from workers.model_cache import VersionSnapshot


def encode_pngs(version: VersionSnapshot, job: JobSnapshot, request: Any, images: Any) -> list[tuple[str, bytes]]:
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
                                                                 **image_params(job, request, i)}))
        out.append((image_key(job.id, i), buffer.getvalue()))
    return out


def image_params(job: JobSnapshot, request: Any, index: int) -> dict[str, Any]:
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
    return {"seed": image_seed(job, request, index), "operation": "interpolate", "t": round(index / (steps - 1), 6),
            "between": list(operation.get("between") or []), "from_seed": job.seed, "to_seed": int(end["seed"]),
            **{f"to_{key}": value for key, value in other.items()}}


def image_seed(job: JobSnapshot, request: Any, index: int) -> int:
    """The seed an image row records: ``seed + index`` for a sampled image; on an interpolation the seed of
    the nearer end (the first half the job's own, the second half the other end's)."""
    operation = job.operation
    if operation and operation.get("op") in ("reconstruct", "mix"):
        return job.seed  # no seed is drawn: the images come from the input images' codes
    if not operation or operation.get("op") != "interpolate":
        return request.seed + index
    return job.seed if 2 * index < request.n else int(operation["to"]["seed"])


def encode_and_store(app: Any, version: VersionSnapshot, job: JobSnapshot, request: Any,
                      images: Any) -> list[str]:
    """Encode a job's PNGs and write them (on an ImageWriter thread, or inline); their storage keys."""
    import torch

    with app.app_context(), torch.inference_mode():
        with stage_clock("png"):
            files = encode_pngs(version, job, request, images)
        with stage_clock("storage"):
            app.extensions["priorforge_storage"].put_many(files)
    return [key for key, _data in files]


def _insert_images() -> Any:
    """The image rows' INSERT. Their ids are derived from the job id and index, so a job run again after its
    row was reset keeps its rows (the same ids, keys and seeds): never duplicated, and no DELETE before it."""
    return _insert_images_for(db.engine.dialect.name)


@functools.cache
def _insert_images_for(dialect: str) -> Any:
    from sqlalchemy.dialects import postgresql, sqlite

    if dialect == "postgresql":
        return postgresql.insert(Image).on_conflict_do_nothing(index_elements=["id"])
    if dialect == "sqlite":
        return sqlite.insert(Image).on_conflict_do_nothing(index_elements=["id"])
    raise RuntimeError(f"unsupported database {dialect!r}: PostgreSQL or SQLite")  # the service runs on these


def store_and_finish(members: list[tuple[JobSnapshot, Any]], images: list[Any], lease: Lease,
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
            remove_unrecorded_files(job.id)
            outcomes[job.id] = "aborted"
            continue
        with failing_stage("generation failed"):
            keys = writer.result(job.id)
        height, width = (int(side) for side in job_images.shape[-2:])  # (n, C, H, W)
        rows = [{"id": image_id(job.id, i), "job_id": job.id, "index": i, "storage_key": key,
                 "width": width, "height": height, "seed": image_seed(job, request, i)}
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
                db.session.execute(_insert_images(), [{**row, "created_at": now}
                                                      for _, rows in succeeded for row in rows])
            commit_without_flush_wait()
        except BaseException:
            db.session.rollback()
            raise
    for job, _ in succeeded:
        lease.drop(job.id)  # finished: the lease stops renewing it
        lease.succeeded[job.id] = (job, now)
        outcomes[job.id] = JobStatus.SUCCEEDED
    for job, _ in lost:
        lease.drop(job.id)
        remove_unrecorded_files(job.id)
        outcomes[job.id] = "aborted"
    return outcomes


def remove_unrecorded_files(job_id: str) -> None:
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
