"""``/admin/password``: the signed-in user changes their own password. The current password is asked again
(a session left open on a shared computer must not be enough) and counted by the sign-in throttle; the change
revokes every other session of the user (``accounts.set_password`` moves the session version on) and keeps
this one signed in. A forgotten password is reset on the server: ``priorforge reset-password``.
"""

from __future__ import annotations

from flask import g, render_template, request

from app.admin import sessions
from app.admin.blueprints import bp
from app.core.errors import ApiError
from app.services import accounts


@bp.route("/password", methods=["GET", "POST"])
def change_password():  # open to any signed-in user (blueprints.SIGNED_IN_ENDPOINTS)
    user = g.admin_user
    if request.method == "GET":
        return render_template("admin/password.html", user=user, error=None, done=False)
    address = request.remote_addr or "unknown"
    retry_after = accounts.reserve_login_attempt(user.username, address)
    if retry_after is not None:
        return render_template("admin/password.html", user=user, done=False,
                               error=f"Too many wrong passwords; try again in {retry_after} seconds."), 429, \
            {"Retry-After": str(retry_after)}
    if accounts.authenticate(user.username, request.form.get("current_password", "")) is None:
        return render_template("admin/password.html", user=user, done=False,
                               error="The current password is wrong."), 401
    accounts.clear_login_failures(user.username, address)
    new, again = request.form.get("new_password", ""), request.form.get("new_password_again", "")
    if new != again:
        return render_template("admin/password.html", user=user, done=False,
                               error="The two new passwords differ."), 422
    try:
        accounts.set_password(user, new)
    except ApiError as exc:
        return render_template("admin/password.html", user=user, done=False,
                               error=f"{exc.message[0].upper()}{exc.message[1:]}."), exc.status
    sessions.login(user)  # this browser stays signed in with the new session version; the others are out
    return render_template("admin/password.html", user=user, error=None, done=True)
