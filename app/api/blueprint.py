"""The JSON API's blueprint (``/api/v1``): service errors as JSON, and the ``?wait=`` parameter."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from app.core.errors import ApiError
from app.core.fastpath.job_events import parse_wait

bp = Blueprint("api", __name__)


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    return jsonify(exc.to_dict()), exc.status, exc.headers()


def wait_seconds() -> float | None:
    """The optional ``wait`` query parameter (seconds to wait for the job(s) to end); 422 if malformed."""
    try:
        return parse_wait(request.args.get("wait"), current_app.config["JOB_WAIT_MAX_SECONDS"])
    except ValueError as exc:
        raise ApiError(422, str(exc), field="wait") from None
