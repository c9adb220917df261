"""Reading a JSON request body, shared by the JSON API and the admin's JSON API."""

from __future__ import annotations

from typing import Any

from flask import request
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

from app.core.errors import LONE_SURROGATE_MESSAGE, MAX_JSON_DEPTH, ApiError, has_lone_surrogate, json_depth


def json_body() -> Any:
    """The request's JSON; 415 for another content type, 400 for malformed JSON (nested too deeply for the
    parser's recursion included, and a lone surrogate escape, which decodes to no character)."""
    if not request.is_json:
        raise ApiError(415, f"expected Content-Type: application/json, got {request.mimetype or 'none'!r}")
    if json_depth(request.get_data(cache=True)) > MAX_JSON_DEPTH:
        raise ApiError(400, f"the JSON in the request body is nested too deeply (more than {MAX_JSON_DEPTH} levels)")
    try:
        body = request.get_json()
    except (BadRequest, UnsupportedMediaType):
        raise ApiError(400, "malformed JSON in the request body") from None
    except RecursionError:
        raise ApiError(400, "the JSON in the request body is nested too deeply") from None
    if has_lone_surrogate(body):
        raise ApiError(400, LONE_SURROGATE_MESSAGE)
    return body
