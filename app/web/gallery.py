"""The gallery (``/gallery``) and the image pages (``/images/<id>``, with a download)."""

from __future__ import annotations

import io
import re

from flask import current_app, render_template, request, send_file

from app.core.errors import ApiError
from app.core.storage import StorageUnavailable
from app.core.tables import Image
from app.services import gallery
from app.services.jobs import get_image
from app.web.blueprint import bp


@bp.get("/gallery")
def gallery_view():
    if not current_app.config["PUBLIC_GALLERY"]:  # switched off: images stay reachable by their ids only
        raise ApiError(404, "the gallery is not public on this service")
    filters = gallery.GalleryFilters.from_args(request.args)
    page_number, per_page = gallery.parse_page_args(request.args)
    page = gallery.gallery_page(filters, page_number, per_page)
    per_page_arg = {"per_page": per_page} if per_page != gallery.DEFAULT_PER_PAGE else {}
    return render_template("gallery.html", page=page, filters=filters, model_names=gallery.model_names(),
                           link_args={**filters.as_args(), **per_page_arg})


@bp.get("/images/<image_id>")
def image(image_id: str):
    image = get_image(image_id)
    return render_template("image.html", image=image, job=image.job, version=image.job.model_version,
                           download_name=download_name(image))


def download_name(image: Image) -> str:
    """``priorforge-<model>-<seed>.png``: what a downloaded image is saved as."""
    model = re.sub(r"[^A-Za-z0-9_.-]+", "_", image.job.model_version.name)
    return f"priorforge-{model}-{image.seed}.png"


@bp.get("/images/<image_id>/download")
def download_image(image_id: str):
    """The PNG as an attachment with a descriptive name (read through the storage, whatever its backend)."""
    image = get_image(image_id)
    try:
        data = current_app.extensions["priorforge_storage"].get(image.storage_key)
    except KeyError:
        raise ApiError(404, f"the file of image {image_id} is missing from storage") from None
    except StorageUnavailable as exc:
        raise ApiError(503, f"the image store is unavailable: {exc}") from None
    return send_file(io.BytesIO(data), mimetype="image/png", as_attachment=True, download_name=download_name(image))
