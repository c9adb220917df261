"""``Idempotency-Key`` on the creating requests (``POST /api/v1/jobs``, ``/batches``): a client that lost the
answer (a reset connection, a web restart) sends the same request with the same key again and gets what the
first one made, instead of a second job. The key row is written in the transaction that stores the job (or
batch), so a key exists exactly when its job does. The same key with another body is refused (422, as the
IETF draft "The Idempotency-Key HTTP Header Field" says). Keys are forgotten after ``IDEMPOTENCY_KEY_TTL``
(the reconciliation deletes them).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import delete, select

from app.core.errors import ApiError
from app.core.extensions import db, rowcount
from app.core.tables import IdempotencyKey

HEADER = "Idempotency-Key"
KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,200}")  # visible ASCII: a UUID, a ULID, a hash...


@dataclass(frozen=True)
class IdempotentRequest:
    scope: str  # "jobs" | "batches"
    key: str
    request_hash: str


# An anonymous client is only its address, which many users share behind a NAT; a replay answers with the job
# AND its cancel secret, so such a key must be as unguessable as a secret: 16 or more characters, 8 or more of
# them distinct (a UUID, a ULID, secrets.token_urlsafe()), not "retry-1" or a counter another user of the same
# client library and address would send too. A token's keys are scoped by the token and may be anything.
ANONYMOUS_KEY_MIN_LENGTH = 16
ANONYMOUS_KEY_MIN_DISTINCT = 8


def from_header(scope: str, header: str | None, fingerprint: bytes, *, anonymous: bool = False) -> IdempotentRequest | None:
    """None without the header; ApiError(422) for a malformed key (or, ``anonymous``, a guessable one)."""
    if header is None:
        return None
    key = header.strip()
    if not KEY_PATTERN.fullmatch(key):
        raise ApiError(422, f"{HEADER} must be 1 to 200 visible ASCII characters (e.g. a UUID)", field=HEADER)
    if anonymous and (len(key) < ANONYMOUS_KEY_MIN_LENGTH or len(set(key)) < ANONYMOUS_KEY_MIN_DISTINCT):
        raise ApiError(422, f"without an API token an {HEADER} must be a random value of at least "
                            f"{ANONYMOUS_KEY_MIN_LENGTH} characters (e.g. a UUID): clients sharing an address "
                            "share its keys", field=HEADER)
    return IdempotentRequest(scope, key, hashlib.sha256(fingerprint).hexdigest())


def earlier(request: IdempotentRequest) -> str | None:
    """The id of what an earlier request with this key made, or None; ApiError(422) if its body differed."""
    row = db.session.get(IdempotencyKey, (request.scope, request.key), populate_existing=True)
    if row is None:
        return None
    if row.request_hash != request.request_hash:
        raise ApiError(422, f"this {HEADER} was used for a different request; use a new key for a new request",
                       field=HEADER)
    return row.resource_id


def remember(request: IdempotentRequest, resource_id: str) -> None:
    """Stage the key in the current session: the caller commits it with the job or batch it made."""
    db.session.add(IdempotencyKey(scope=request.scope, key=request.key, request_hash=request.request_hash,
                                  resource_id=resource_id))


def forget_expired(now: datetime) -> int:
    cutoff = now - timedelta(seconds=current_app.config["IDEMPOTENCY_KEY_TTL"])
    result = db.session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff))
    db.session.commit()
    return rowcount(result)


def known_ids(scope: str) -> list[str]:  # for tests
    return list(db.session.scalars(select(IdempotencyKey.resource_id).where(IdempotencyKey.scope == scope)))
