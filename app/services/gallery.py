"""Read-only queries for the HTML pages: the image gallery (filters + pagination) and small display helpers.

Everything here reads; creating and validating jobs is :mod:`app.services.jobs`, shared with the JSON API.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, func, select

from app.core.extensions import db
from app.core.tables import Image, Job, ModelVersion
from app.core.status import JobStatus

DEFAULT_PER_PAGE = 24
MAX_PER_PAGE = 96


class GalleryError(ValueError):
    """A bad gallery query parameter; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class GalleryFilters:
    """Gallery filters as given in the query string; empty strings mean "no filter"."""

    model: str = ""
    prompt: str = ""
    label: str = ""

    @classmethod
    def from_args(cls, args: Any) -> "GalleryFilters":
        return cls(model=(args.get("model") or "").strip(), prompt=(args.get("prompt") or "").strip(),
                   label=(args.get("label") or "").strip())

    def active(self) -> bool:
        return bool(self.model or self.prompt or self.label)

    def as_args(self) -> dict[str, str]:
        """The non-empty filters, for building links that keep them."""
        return {k: v for k, v in (("model", self.model), ("prompt", self.prompt), ("label", self.label)) if v}


@dataclass
class GalleryPage:
    items: list[Image]
    page: int
    per_page: int
    total: int
    filters: GalleryFilters = field(default_factory=GalleryFilters)

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def has_prev(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        return self.page < self.pages

    @property
    def first_index(self) -> int:
        """1-based position of the first item on this page (0 when there is none)."""
        return (self.page - 1) * self.per_page + 1 if self.items else 0


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def gallery_select(filters: GalleryFilters) -> Select:
    """Images of succeeded jobs matching ``filters``, newest first (then job, then index within the job)."""
    stmt = (select(Image).join(Job, Image.job_id == Job.id).join(ModelVersion, Job.model_version_id == ModelVersion.id)
            .where(Job.status == JobStatus.SUCCEEDED))
    if filters.model:
        stmt = stmt.where(ModelVersion.name == filters.model)
    if filters.prompt:
        stmt = stmt.where(Job.prompt.ilike(f"%{_like_escape(filters.prompt)}%", escape="\\"))
    if filters.label:
        stmt = stmt.where(func.lower(Job.label) == filters.label.lower())
    return stmt.order_by(Image.created_at.desc(), Image.job_id.desc(), Image.index)


PAGE_NUMBER = re.compile(r"[0-9]{1,9}")  # far past any last page, and int() stays cheap


def parse_page_args(args: Any) -> tuple[int, int]:
    """``page`` (>= 1) and ``per_page`` (1..MAX_PER_PAGE) from the query string; GalleryError(400) if bad."""
    values = []
    for name, default, upper in (("page", 1, None), ("per_page", DEFAULT_PER_PAGE, MAX_PER_PAGE)):
        raw = (args.get(name) or "").strip()
        if not raw:
            values.append(default)
            continue
        # ASCII digits only: str.isdigit also takes "²" and "①", which int() then refuses
        if not PAGE_NUMBER.fullmatch(raw) or int(raw) < 1 or (upper is not None and int(raw) > upper):
            bound = f"from 1 to {upper}" if upper else "of at least 1"
            raise GalleryError(400, f"{name} must be a whole number {bound}, got {raw!r}")
        values.append(int(raw))
    return values[0], values[1]


def gallery_page(filters: GalleryFilters, page: int = 1, per_page: int = DEFAULT_PER_PAGE) -> GalleryPage:
    """One page of the gallery; GalleryError(404) for a page past the last one."""
    stmt = gallery_select(filters)
    total = db.session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    result = GalleryPage(items=[], page=page, per_page=per_page, total=total, filters=filters)
    if page > result.pages:
        raise GalleryError(404, f"page {page} does not exist; the last page is {result.pages}")
    result.items = list(db.session.scalars(stmt.limit(per_page).offset((page - 1) * per_page)))
    return result


def model_names() -> list[str]:
    """Every registered model name (serving or not), for the gallery's model filter."""
    return list(db.session.scalars(select(ModelVersion.name).distinct().order_by(ModelVersion.name)))


def condition_text(job: Job) -> str:
    """A short human description of a job's condition."""
    if job.condition_kind == "class":
        return f"label {job.label}"
    if job.condition_kind == "cluster":
        return f"cluster {job.cluster}"
    if job.condition_kind == "text":
        return f"prompt \u201c{job.prompt}\u201d"
    return "unconditional"
