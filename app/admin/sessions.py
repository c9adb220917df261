"""Admin sign-in with the Flask session (signed with ``SECRET_KEY``): an anonymous caller of an admin page is
redirected to ``/admin/login``, a signed-in non-admin gets 403 (:func:`app.admin.blueprints.guard`)."""

from __future__ import annotations

from flask import session

from app.core.extensions import db
from app.core.models import User

SESSION_KEY = "admin_user_id"


def login(user: User) -> None:
    session.clear()  # a fresh session on sign-in (no fixation of a pre-login session)
    session[SESSION_KEY] = user.id


def logout() -> None:
    session.clear()


def session_user() -> User | None:
    user_id = session.get(SESSION_KEY)
    return db.session.get(User, user_id) if isinstance(user_id, int) else None
