"""Admin sign-in with the Flask session (signed with ``SECRET_KEY``): an anonymous caller of an admin page is
redirected to ``/admin/login``, a signed-in non-admin gets 403 (:func:`app.admin.blueprints.guard`).

A session is revocable on the server: it carries the user's ``session_version``, which every request compares
with the database; sign-out and a password change move it on, so a copied cookie stops working. It also ends
``ADMIN_SESSION_LIFETIME`` (12 hours) after the sign-in, and the signed cookie itself is refused after
``PERMANENT_SESSION_LIFETIME`` (the same 12 hours by default; Flask's default was 31 days).
"""

from __future__ import annotations

import time

from flask import current_app, session

from app.core.extensions import db
from app.core.tables import User
from app.services.accounts import end_sessions

SESSION_KEY = "admin_user_id"
VERSION_KEY = "admin_session_version"


SIGNED_IN_AT_KEY = "admin_signed_in_at"


def login(user: User) -> None:
    session.clear()  # a fresh session on sign-in (no fixation of a pre-login session)
    session[SESSION_KEY] = user.id
    session[VERSION_KEY] = user.session_version or 0
    session[SIGNED_IN_AT_KEY] = int(time.time())


def logout() -> None:
    user = session_user()
    if user is not None:
        end_sessions(user)
    session.clear()


def session_user() -> User | None:
    user_id = session.get(SESSION_KEY)
    user = db.session.get(User, user_id) if isinstance(user_id, int) and not isinstance(user_id, bool) else None
    if user is None or session.get(VERSION_KEY) != (user.session_version or 0):
        return None  # unknown, or signed out / password changed since this cookie was issued
    signed_in_at = session.get(SIGNED_IN_AT_KEY)
    lifetime = current_app.config["ADMIN_SESSION_LIFETIME"]
    if not isinstance(signed_in_at, int) or not 0 <= time.time() - signed_in_at <= lifetime:
        return None  # an admin signs in again after ADMIN_SESSION_LIFETIME, however busy the session was
    return user
