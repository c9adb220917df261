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
from sqlalchemy import delete, select

from app.core.errors import ApiError
from app.core.extensions import db
from app.core.models import ApiToken, LoginFailure, User, utcnow

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
    user = db.session.scalars(select(User).where(User.username == username)).first()
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


def bearer_user(header: str | None) -> User | None:
    """The user of an ``Authorization: Bearer <token>`` header, or None (missing, unknown or revoked)."""
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
    return row.user


# -- sign-in throttle ---------------------------------------------------------------------------------
def _login_window() -> tuple[datetime, Any]:
    return utcnow() - timedelta(seconds=float(current_app.config["LOGIN_WINDOW_SECONDS"])), current_app.config


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
    for failures, limit in ((per_user, int(cfg["LOGIN_MAX_FAILURES"])),
                            (per_address, int(cfg["LOGIN_MAX_FAILURES_PER_ADDRESS"]))):
        if len(failures) >= limit:
            oldest = failures[-limit]
            oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=timezone.utc)
            return max(1, int((oldest - since).total_seconds()) + 1)
    return None


def record_login_failure(username: str, remote_addr: str) -> None:
    since, _ = _login_window()
    db.session.execute(delete(LoginFailure).where(LoginFailure.at < since))  # keep the table small
    db.session.add(LoginFailure(username=username[:100], remote_addr=remote_addr[:64], at=utcnow()))
    db.session.commit()


def clear_login_failures(username: str, remote_addr: str) -> None:
    db.session.execute(delete(LoginFailure).where(LoginFailure.username == username,
                                                  LoginFailure.remote_addr == remote_addr))
    db.session.commit()
