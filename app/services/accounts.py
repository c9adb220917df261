"""Accounts: argon2id password hashes, users, bearer tokens for scripts, and the sign-in throttle.

* The admin pages sign a person in with the Flask session (:mod:`app.admin.sessions`) after
  :func:`authenticate`; the admin JSON API reads ONLY ``Authorization: Bearer <token>``
  (:func:`bearer_user`).
* A token is ``pf_`` + 43 URL-safe characters (256 random bits); only its SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app
from sqlalchemy import delete, insert, select, text, update

from app.core.errors import ApiError
from app.core.extensions import db
from app.core.tables import ApiToken, LoginFailure, User, utcnow

MIN_PASSWORD_LENGTH = 10
TOKEN_PREFIX = "pf_"
_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
_DUMMY_HASH = _hasher.hash("not a real password")  # verified against for unknown names (same timing)


# -- passwords --------------------------------------------------------------------------------------
def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ApiError(422, f"the password needs at least {MIN_PASSWORD_LENGTH} characters")


def authenticate(username: str, password: str) -> User | None:
    """The user with this name and password, or None (unknown name and wrong password look the same)."""
    # a NUL is never part of a name (and PostgreSQL refuses it in a query): an unknown name, same timing
    user = db.session.scalars(select(User).where(User.username == username)).first() if "\x00" not in username \
        else None
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if user is None:
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
        db.session.commit()
    return user


def create_user(username: str, password: str, *, is_admin: bool = True) -> User:
    username = username.strip()
    if not username or len(username) > 100:
        raise ApiError(422, "a username needs 1-100 characters")
    check_password_strength(password)
    if db.session.scalars(select(User).where(User.username == username)).first() is not None:
        raise ApiError(409, f"user {username!r} already exists")
    user = User(username=username, password_hash=hash_password(password), is_admin=is_admin)
    db.session.add(user)
    db.session.commit()
    return user


# -- API tokens -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IssuedToken:
    token: str  # shown once; only its hash is stored
    row: ApiToken


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(user: User, name: str = "script") -> IssuedToken:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, name=(name.strip() or "script")[:100], token_hash=_token_hash(token),
                   prefix=token[:10])
    db.session.add(row)
    db.session.commit()
    return IssuedToken(token, row)


def revoke_token(token_id: int, user: User) -> None:
    row = db.session.get(ApiToken, token_id)
    if row is None or row.user_id != user.id:
        raise ApiError(404, f"no token {token_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        db.session.commit()


def bearer_token(header: str | None) -> ApiToken | None:
    """The live token of an ``Authorization: Bearer <token>`` header, or None (missing, unknown or revoked)."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX):
        return None
    row = db.session.scalars(select(ApiToken).where(ApiToken.token_hash == _token_hash(token))).first()
    if row is None or row.revoked_at is not None:
        return None
    row.last_used_at = utcnow()
    db.session.commit()
    return row


def bearer_user(header: str | None) -> User | None:
    """The user of an ``Authorization: Bearer <token>`` header, or None (missing, unknown or revoked)."""
    row = bearer_token(header)
    return row.user if row is not None else None


@dataclass(frozen=True)
class Client:
    """Who is asking, for quotas, rate limits and ownership: an API token's holder, else an address."""

    key: str  # "token:<id>" or "addr:<remote address>"
    token_id: int | None = None
    is_admin: bool = False


def identify_client(authorization: str | None, remote_addr: str | None) -> Client:
    """The client of a request; a missing, unknown or revoked token counts as anonymous (by address)."""
    row = bearer_token(authorization) if authorization else None
    if row is not None:
        return Client(f"token:{row.id}", row.id, bool(row.user.is_admin))
    return Client(f"addr:{(remote_addr or 'unknown')[:64]}")


def set_password(user: User, password: str) -> None:
    """A new password; every session signed in before is revoked (the session version moves on)."""
    check_password_strength(password)
    user.password_hash = hash_password(password)
    user.session_version = (user.session_version or 0) + 1
    db.session.commit()


def end_sessions(user: User) -> None:
    """Revoke every session of ``user`` (sign-out): cookies signed before no longer open anything."""
    db.session.execute(update(User).where(User.id == user.id)
                       .values(session_version=User.session_version + 1))
    db.session.commit()


# -- sign-in throttle ---------------------------------------------------------------------------------
def _login_window() -> tuple[datetime, Any]:
    return utcnow() - timedelta(seconds=current_app.config["LOGIN_WINDOW_SECONDS"]), current_app.config


def login_retry_after(username: str, remote_addr: str) -> int | None:
    """Seconds until this address may try this user name again, or None when it may try now.

    Too many failures for one user name from one address, or for any names from one address, within
    LOGIN_WINDOW_SECONDS block further tries from that address (before any password is checked), until the
    oldest of them leaves the window. Other addresses are not affected, so a guesser cannot lock an admin out.
    """
    since, cfg = _login_window()
    recent = select(LoginFailure.at).where(LoginFailure.remote_addr == remote_addr, LoginFailure.at >= since)
    per_address = list(db.session.scalars(recent.order_by(LoginFailure.at)))
    per_user = list(db.session.scalars(recent.where(LoginFailure.username == username).order_by(LoginFailure.at)))
    for failures, limit in ((per_user, cfg["LOGIN_MAX_FAILURES"]),
                            (per_address, cfg["LOGIN_MAX_FAILURES_PER_ADDRESS"])):
        if len(failures) >= limit:
            oldest = failures[-limit]
            oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=timezone.utc)
            return max(1, int((oldest - since).total_seconds()) + 1)
    return None


def reserve_login_attempt(username: str, remote_addr: str) -> int | None:
    """Atomically count this try against the throttle BEFORE its password is checked: None when it may go on
    (a failure is recorded in advance; a success removes it with :func:`clear_login_failures`), else the
    seconds to wait. Check and record are one transaction that concurrent tries from the same address wait
    for (an advisory lock on PostgreSQL, SQLite's write lock taken by the first statement), so 30 tries at once
    get at most the limit's password checks."""
    username, remote_addr = username.replace("\x00", "")[:100], remote_addr[:64]
    since, _ = _login_window()
    db.session.commit()  # a fresh transaction, whose first statement below takes the lock
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:addr, 17))"), {"addr": remote_addr})
    db.session.execute(delete(LoginFailure).where(LoginFailure.at < since))  # keep the table small
    retry_after = login_retry_after(username, remote_addr)
    if retry_after is None:
        db.session.execute(insert(LoginFailure).values(username=username, remote_addr=remote_addr, at=utcnow()))
    db.session.commit()
    return retry_after


def clear_login_failures(username: str, remote_addr: str) -> None:
    username = username.replace("\x00", "")
    db.session.execute(delete(LoginFailure).where(LoginFailure.username == username[:100],
                                                  LoginFailure.remote_addr == remote_addr[:64]))
    db.session.commit()
