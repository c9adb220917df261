"""The HTML pages' blueprint (``/``): service errors as HTML pages, and the templates' filters."""

from __future__ import annotations

from datetime import datetime, timezone

from flask import Blueprint, render_template

from app.core.errors import ApiError
from app.core.tables import aware, iso
from app.services.gallery import GalleryError, condition_text

bp = Blueprint("web", __name__)


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    """Service errors on a page (an unknown job id...) as an HTML page, not the API's JSON."""
    return render_template("error.html", status=exc.status, message=exc.message), exc.status, exc.headers()


@bp.errorhandler(GalleryError)
def _gallery_error(exc: GalleryError):
    return render_template("error.html", status=exc.status, message=exc.message), exc.status


@bp.app_template_filter("condition")
def _condition_filter(job) -> str:
    return condition_text(job)


@bp.app_template_filter("utc")
def _utc_filter(value: datetime | None) -> str:
    value = aware(value)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


@bp.app_template_filter("iso")
def _iso_filter(value: datetime | None) -> str:
    return iso(value) or ""


@bp.app_template_filter("metric")
def _metric_filter(value, key: str = "") -> str:
    """A card metric for people: shares (accuracies, precision, recall, purity) as percentages, other numbers
    with three significant digits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if any(word in key for word in ("accuracy", "precision", "recall", "purity")) and 0 <= value <= 1:
        return f"{100 * value:.1f}%"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


@bp.app_template_filter("percent")
def _percent_filter(value: float | None) -> str:
    return f"{round(100 * float(value or 0))}%"
