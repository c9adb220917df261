"""``/api/v1/images``: an image's metadata (with the parameters read back from its PNG) and the PNG.

Whichever worker stored it: a local file is sent as a file; from an object store the PNG is streamed through
the web process (``IMAGE_DELIVERY=stream``, the default: clients need no access to the store) or the client
is redirected to a presigned URL of the store (``redirect``: the bytes skip the web process).
"""

from __future__ import annotations

import io
import json
from typing import Any

from flask import current_app, jsonify, redirect, send_file, stream_with_context

from app.api.blueprint import bp
from app.api.views import image_to_dict
from app.core.errors import ApiError
from app.core.storage import StorageUnavailable
from app.services import jobs
from priorforge_spec.png import read_png_params


def _missing(image_id: str) -> ApiError:
    return ApiError(404, f"the file of image {image_id} is missing from storage")


def _unavailable(exc: StorageUnavailable) -> ApiError:
    return ApiError(503, f"the image store is unavailable: {exc}")


@bp.get("/images/<image_id>.png")
def get_image_png(image_id: str):
    image = jobs.get_image(image_id)
    storage = current_app.extensions["priorforge_storage"]
    path = storage.local_path(image.storage_key)
    if path is not None:
        if not path.is_file():
            raise _missing(image_id)
        return send_file(path, mimetype="image/png", max_age=3600)
    if current_app.config["IMAGE_DELIVERY"] == "redirect":
        url = storage.url(image.storage_key)
        if url:
            return redirect(url, 302)
    try:
        chunks = iter(storage.chunks(image.storage_key))
        first = next(chunks, b"")  # errors (a missing object, a store that is down) before the 200 goes out
    except KeyError:
        raise _missing(image_id) from None
    except StorageUnavailable as exc:
        raise _unavailable(exc) from None

    def body():
        yield first
        yield from chunks

    response = current_app.response_class(stream_with_context(body()), mimetype="image/png")
    response.cache_control.max_age = 3600
    return response


@bp.get("/images/<image_id>")
def get_image(image_id: str):
    image = jobs.get_image(image_id)
    body = image_to_dict(image)
    storage = current_app.extensions["priorforge_storage"]
    path = storage.local_path(image.storage_key)
    if path is not None:
        body["parameters"] = _png_parameters(path) if path.is_file() else None
    else:
        try:
            body["parameters"] = _png_parameters(io.BytesIO(storage.get(image.storage_key)))
        except (KeyError, StorageUnavailable):
            body["parameters"] = None
    return jsonify(body)


def _png_parameters(source) -> dict[str, Any] | None:
    try:
        return read_png_params(source)
    except (OSError, json.JSONDecodeError):
        return None
