"""``/api/v1/images``: an image's metadata (with the parameters read back from its PNG) and the PNG."""

from __future__ import annotations

import json
from typing import Any

from flask import current_app, jsonify, send_file

from app.api.blueprint import bp
from app.api.views import image_to_dict
from app.core.errors import ApiError
from app.services import jobs
from priorforge.spec.png import read_png_params


@bp.get("/images/<image_id>.png")
def get_image_png(image_id: str):
    image = jobs.get_image(image_id)
    storage = current_app.extensions["priorforge_storage"]
    path = storage.local_path(image.storage_key)
    if path is not None:
        if not path.is_file():
            raise ApiError(404, f"the file of image {image_id} is missing from storage")
        return send_file(path, mimetype="image/png", max_age=3600)
    try:
        data = storage.get(image.storage_key)
    except KeyError:
        raise ApiError(404, f"the file of image {image_id} is missing from storage") from None
    return current_app.response_class(data, mimetype="image/png")


@bp.get("/images/<image_id>")
def get_image(image_id: str):
    image = jobs.get_image(image_id)
    body = image_to_dict(image)
    storage = current_app.extensions["priorforge_storage"]
    path = storage.local_path(image.storage_key)
    body["parameters"] = _png_parameters(path) if path is not None and path.is_file() else None
    return jsonify(body)


def _png_parameters(path) -> dict[str, Any] | None:
    try:
        return read_png_params(path)
    except (OSError, json.JSONDecodeError):
        return None
