"""The one error a service function raises for bad input or a state conflict."""

from __future__ import annotations

import json
from typing import Any


class ApiError(Exception):
    """Bad input or a state conflict; ``status`` is the HTTP status to answer with, ``details`` go into the
    JSON body beside ``error`` (e.g. ``field``, ``line``)."""

    def __init__(self, status: int, message: str, **details: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.message, **self.details}

    def headers(self) -> dict[str, str]:
        """HTTP headers that go with it: Retry-After when ``details`` has ``retry_after`` (seconds)."""
        retry = self.details.get("retry_after")
        return {"Retry-After": str(int(retry))} if retry is not None else {}


MAX_JSON_DEPTH = 64  # far above any request this API takes; checked before parsing


def json_depth(text: str | bytes) -> int:
    """How deeply ``[`` and ``{`` nest in a JSON text (strings skipped), without parsing it: a limit that does
    not depend on the interpreter's recursion limit, which other libraries raise."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def has_lone_surrogate(value: Any) -> bool:
    """Whether a decoded JSON value holds a lone UTF-16 surrogate (``"\\udfff"``) in a string or key: JSON's
    escapes allow one, Python's parser returns it, and it is no character: it cannot be encoded as UTF-8 (for
    the database, a log line or a PNG chunk), so such input is refused where it is parsed. A valid pair
    (``"\\ud83d\\ude00"``) is decoded into its one character and passes."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


LONE_SURROGATE_MESSAGE = ("a string in the JSON holds a lone UTF-16 surrogate escape (such as \\udfff), which is "
                          "not a character; send text as UTF-8 or as complete surrogate pairs")
