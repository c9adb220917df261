"""JSON views of jobs, batches and images, with the URLs of the API's own routes."""

from __future__ import annotations

from typing import Any

from flask import g, url_for

from app.core.tables import Batch, Experiment, Image, Job, ModelVersion, iso
from app.services.job_reads import ImageView, JobView, VersionView
from app.services import experiments
from app.services.jobs import batch_summary
from app.services.webhooks import deliveries_of
from app.core.status import JobStatus


def image_to_dict(image: Image) -> dict[str, Any]:
    # the exact version that made it (fixed when the job was created)
    return _image_dict(image, image.job.model_version)


def _image_dict(image: Image | ImageView, version: ModelVersion | VersionView) -> dict[str, Any]:
    return {
        "id": image.id, "job_id": image.job_id, "index": image.index, "width": image.width,
        "height": image.height, "seed": image.seed, "created_at": iso(image.created_at),
        "model": version.name, "model_version": version.version, "model_version_id": version.id,
        "url": url_for("api.get_image", image_id=image.id),
        "png_url": url_for("api.get_image_png", image_id=image.id),
    }


def job_to_dict(job: Job | JobView) -> dict[str, Any]:
    version = job.model_version
    return {
        "id": job.id, "url": url_for("api.get_job", job_id=job.id), "status": job.status,
        "progress": round(float(job.progress or 0.0), 4), "error": job.error,
        "model": version.name, "model_version": version.version, "model_version_id": version.id,
        "backend": version.backend, "condition": job.condition_kind, "label": job.label, "cluster": job.cluster, "prompt": job.prompt,
        "n": job.n, "seed": job.seed, "attempts": job.attempts, "batch_id": job.batch_id,
        "created_at": iso(job.created_at), "started_at": iso(job.started_at), "finished_at": iso(job.finished_at),
        "images": [_image_dict(image, version) for image in job.images] if job.status == JobStatus.SUCCEEDED else [],
        **_webhook_of(job),
    }


def _webhook_of(owned: Job | JobView | Batch) -> dict[str, Any]:
    """The job's (or batch's) webhook and its recorded deliveries, for the token that created it or an admin
    only (the URL may hold a receiver's own secret; job ids are visible on public pages)."""
    client = g.get("client")
    if not owned.webhook or client is None or not (client.is_admin or (
            client.token_id is not None and client.token_id == owned.owner_token_id)):
        return {}
    deliveries = deliveries_of(batch_id=owned.id) if isinstance(owned, Batch) else deliveries_of(job_id=owned.id)
    return {"webhook": {"url": owned.webhook, "events_filter": list(owned.webhook_events or []),
                        "deliveries": deliveries}}


def batch_to_dict(batch: Batch) -> dict[str, Any]:
    summary = batch_summary(batch)
    return {
        "id": batch.id, "url": url_for("api.get_batch", batch_id=batch.id), "status": summary["status"],
        "created_at": iso(batch.created_at), "source": batch.source, "total": summary["total"],
        "counts": summary["counts"], "progress": summary["progress"],
        "jobs": [{"id": job.id, "url": url_for("api.get_job", job_id=job.id), "status": job.status,
                  "progress": round(float(job.progress or 0.0), 4), "error": job.error} for job in batch.jobs],
        **_webhook_of(batch),
    }


def experiment_to_dict(experiment: Experiment, jobs: list[Job]) -> dict[str, Any]:
    """An experiment with its combined status and its result as a grid: named axes, and each cell the image
    (as :func:`image_to_dict`) or null while it is not made; a comparison's rows carry the model's figures."""
    summary = experiments.summary(jobs)
    grid = experiments.grid(experiment, jobs)
    rows = []
    for r, label in enumerate(grid["rows"]["labels"]):
        job = grid["row_jobs"][r]
        row: dict[str, Any] = {"label": label, "job_id": job.id if job is not None else None}
        if grid["figures"] is not None:
            row["figures"] = grid["figures"][r]
        row["cells"] = [image_to_dict(image) if image is not None else None for image in grid["cells"][r]]
        rows.append(row)
    columns = [{"label": label, "job_id": job.id if job is not None else None}
               for label, job in zip(grid["columns"]["labels"], grid["column_jobs"])]
    return {
        "id": experiment.id, "url": url_for("api.get_experiment", experiment_id=experiment.id),
        "page_url": url_for("web.experiment", experiment_id=experiment.id), "kind": experiment.kind,
        "status": summary["status"], "progress": summary["progress"], "counts": summary["counts"],
        "created_at": iso(experiment.created_at), "params": experiment.params, "varied": grid["varied"],
        "row_axis": grid["rows"]["axis"], "column_axis": grid["columns"]["axis"], "columns": columns, "rows": rows,
        "jobs": [{"id": job.id, "url": url_for("api.get_job", job_id=job.id), "model": job.model_version.name,
                  "status": job.status, "progress": round(float(job.progress or 0.0), 4), "error": job.error}
                 for job in jobs],
    }
