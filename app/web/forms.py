"""The job form's posted strings -> the dict :func:`app.services.jobs.validate_job` takes, and which form field a
service message is about."""

from __future__ import annotations

import re
from typing import Any

from app.services.jobs import parse_int_text
from app.services.schemas import JOB_FIELDS

INT_FIELDS = ("n", "seed", "cluster")


def job_request_from_form(form: Any) -> dict[str, Any]:
    """Posted form fields -> the dict :func:`services.validate_job` takes (as the JSON API gets it).

    Empty fields are left out (the service's defaults apply); integer fields are parsed when they parse and
    passed on as text otherwise, so the service's own message names the bad value. Unknown fields (a CSRF
    token, the submit button) are ignored.
    """
    data: dict[str, Any] = {}
    for key in JOB_FIELDS:
        raw = form.get(key)
        if raw is None:
            continue
        if key == "prompt":
            data[key] = raw  # an empty prompt is reported by the service
            continue
        value = raw.strip()
        if not value:
            continue
        number = parse_int_text(value) if key in INT_FIELDS else None
        if number is not None:  # ASCII digits only ("٣" stays text and is refused by the service)
            data[key] = number
        else:
            data[key] = value
    return data


_FIELD_ORDER = ("n", "seed", "cluster", "prompt", "label", "model")


def field_of_error(message: str) -> str | None:
    """The form field a service message is about (to mark it invalid), or None."""
    for name in _FIELD_ORDER:
        if re.search(rf"(?<![\w']){name}(?![\w'])", message):
            return name
    return None
