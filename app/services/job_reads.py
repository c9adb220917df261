"""Reading a job for the API's answers: one Core statement, plain rows, no ORM objects.

``GET /api/v1/jobs/<id>`` and every ``?wait=`` answer read a job, its model version and its images. Through
the ORM (``Session.get`` with joined loads) that read was about half of such a request's CPU: the loader's
per-column processing, identity-map bookkeeping and the driver's description of all the tables' columns.
Here one statement selects only the columns an answer shows and the rows become frozen views with the
ORM objects' attribute names, so :func:`app.api.views.job_to_dict` renders either. Pages and state changes
keep the ORM (:func:`app.services.jobs.get_job`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, bindparam, select

from app.core.errors import ApiError
from app.core.extensions import db
from app.core.tables import Image, Job, ModelVersion, table_of


@dataclass(frozen=True, slots=True)
class VersionView:
    id: int
    name: str
    version: int
    backend: str


@dataclass(frozen=True, slots=True)
class ImageView:
    id: str
    job_id: str
    index: int
    width: int
    height: int
    seed: int
    created_at: datetime | None


@dataclass(frozen=True, slots=True)
class JobView:
    """What an API answer shows of a job (attribute names as on :class:`app.core.tables.Job`)."""

    id: str
    status: str
    progress: float
    error: str | None
    condition_kind: str
    label: str | None
    cluster: int | None
    prompt: str | None
    n: int
    seed: int
    attempts: int
    batch_id: str | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    owner_token_id: int | None
    webhook: str | None
    webhook_events: list[str] | None
    model_version: VersionView
    images: tuple[ImageView, ...]


_JOB_FIELDS = ("id", "status", "progress", "error", "condition_kind", "label", "cluster", "prompt", "n", "seed",
               "attempts", "batch_id", "created_at", "started_at", "finished_at", "owner_token_id", "webhook",
               "webhook_events")
_VERSION_FIELDS = ("id", "name", "version", "backend")
_IMAGE_FIELDS = ("id", "index", "width", "height", "seed", "created_at")


@functools.cache
def _statement() -> Select[Any]:
    """The job's columns with its version's, once per image (one row with NULL image columns when it has none),
    images in index order. Built once: SQLAlchemy's compiled cache and psycopg's prepared statements then see
    the same statement every time."""
    jobs, versions, images = table_of(Job), table_of(ModelVersion), table_of(Image)
    columns = ([jobs.c[name] for name in _JOB_FIELDS]
               + [versions.c[name].label(f"version_{name}") for name in _VERSION_FIELDS]
               + [images.c[name].label(f"image_{name}") for name in _IMAGE_FIELDS])
    return (select(*columns)
            .join(versions, versions.c.id == jobs.c.model_version_id)
            .outerjoin(images, images.c.job_id == jobs.c.id)
            .where(jobs.c.id == bindparam("job_id"))
            .order_by(images.c.index))


def read_job(job_id: str) -> JobView:
    """The job as an answer shows it; 404 when there is none. Runs in the session's transaction (the caller
    ends it, see :func:`app.core.extensions.end_read`)."""
    rows = db.session.execute(_statement(), {"job_id": job_id}).all()
    if not rows:
        raise ApiError(404, f"no job {job_id!r}")
    first = tuple(rows[0])
    image_at = len(_JOB_FIELDS) + len(_VERSION_FIELDS)  # where a row's image columns start
    version = VersionView(*first[len(_JOB_FIELDS):image_at])
    images = tuple(ImageView(row[image_at], job_id, *row[image_at + 1:]) for row in rows if row[image_at] is not None)
    return JobView(**dict(zip(_JOB_FIELDS, first)), model_version=version, images=images)
