"""Accounts and what surrounds them: changing a password on a page and resetting one from the command line
(both revoke the account's other sessions), admin answers that no cache keeps, admin sign-ins that end, and
the instance folder and SQLite files that only their owner can read (docs/security.md)."""

from __future__ import annotations

import io
import json
import os
import stat
import time

import pytest

from tests.admin.conftest import ADMIN, OTHER, csrf_token, sign_in


def change(client, current: str, new: str, again: str | None = None, address: str = "127.0.0.1"):
    token = csrf_token(client, "/admin/password")
    return client.post("/admin/password", data={"current_password": current, "new_password": new,
                                                "new_password_again": new if again is None else again,
                                                "csrf_token": token}, environ_base={"REMOTE_ADDR": address})


# -- changing a password -------------------------------------------------------------------------------
def test_a_signed_in_admin_changes_their_password_and_other_sessions_end(admin_app, client):
    other_device = admin_app.test_client()
    assert sign_in(client, *ADMIN).status_code == 303
    assert sign_in(other_device, *ADMIN).status_code == 303
    page = client.get("/admin/")
    assert 'href="/admin/password"' in page.get_data(as_text=True)
    assert client.get("/admin/password").status_code == 200
    response = change(client, ADMIN[1], "a much better passphrase")
    assert response.status_code == 200 and "Your password was changed" in response.get_data(as_text=True)
    assert client.get("/admin/").status_code == 200  # this browser stays signed in
    assert other_device.get("/admin/").status_code == 302  # every other session is out
    fresh = admin_app.test_client()
    assert sign_in(fresh, *ADMIN).status_code == 401
    assert sign_in(fresh, ADMIN[0], "a much better passphrase").status_code == 303


@pytest.mark.parametrize("current, new, again, status, message", [
    ("not my password", "a much better passphrase", None, 401, "The current password is wrong."),
    (ADMIN[1], "a much better passphrase", "a different passphrase", 422, "The two new passwords differ."),
    (ADMIN[1], "short", None, 422, "at least 10 characters"),
])
def test_a_bad_password_change_says_why_and_changes_nothing(admin_app, client, current, new, again, status, message):
    sign_in(client, *ADMIN)
    response = change(client, current, new, again)
    assert response.status_code == status and message in response.get_data(as_text=True)
    assert client.get("/admin/").status_code == 200
    assert sign_in(admin_app.test_client(), *ADMIN).status_code == 303  # the old password still works


def test_the_password_page_needs_a_session_a_csrf_token_and_throttles_guesses(admin_app, client):
    assert client.get("/admin/password").status_code == 302  # anonymous: to the sign-in
    sign_in(client, *OTHER)  # not an admin: may still change their own password
    assert client.get("/admin/password").status_code == 200
    assert client.post("/admin/password", data={"current_password": OTHER[1], "new_password": "x" * 12,
                                                "new_password_again": "x" * 12}).status_code == 400  # no CSRF
    admin_app.config["LOGIN_MAX_FAILURES"] = 2
    statuses = [change(client, "guess number %d" % i, "x" * 12, address="10.4.4.4").status_code for i in range(3)]
    assert statuses == [401, 401, 429]


def test_reset_password_command(admin_app, client, tmp_path, monkeypatch, capsys):
    from priorforge.cli import main

    monkeypatch.setenv("PRIORFORGE_SQLALCHEMY_DATABASE_URI", admin_app.config["SQLALCHEMY_DATABASE_URI"])
    monkeypatch.setenv("PRIORFORGE_CELERY_BROKER_URL", admin_app.config["CELERY_BROKER_URL"])
    monkeypatch.setenv("PRIORFORGE_SECRET_KEY", admin_app.config["SECRET_KEY"])
    for key in ("STORAGE_ROOT", "DATASET_ROOT", "TRAINING_ROOT"):
        monkeypatch.setenv(f"PRIORFORGE_{key}", json.dumps(str(tmp_path / key.lower())))
    sign_in(client, *ADMIN)
    monkeypatch.setattr("sys.stdin", io.StringIO("reset by the operator\n"))
    assert main(["reset-password", "--username", ADMIN[0], "--password-stdin"]) == 0
    assert "new password set for 'admin'" in capsys.readouterr().out
    assert client.get("/admin/").status_code == 302  # its sessions are signed out
    assert sign_in(admin_app.test_client(), ADMIN[0], "reset by the operator").status_code == 303
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["reset-password", "--username", ADMIN[0], "--password-stdin"]) == 1
    assert "at least 10 characters" in capsys.readouterr().err
    assert main(["reset-password", "--username", "nobody", "--password-stdin"]) == 1
    assert "no user 'nobody'" in capsys.readouterr().err


# -- caching and session lifetime ----------------------------------------------------------------------
def test_admin_answers_are_not_stored_by_caches(admin_app, client):
    from tests.admin.conftest import token_for

    assert client.get("/admin/login").headers["Cache-Control"] == "no-store"
    sign_in(client, *ADMIN)
    token = csrf_token(client, "/admin/")
    response = client.post("/admin/tokens", data={"name": "script", "csrf_token": token})
    assert "pf_" in response.get_data(as_text=True) and response.headers["Cache-Control"] == "no-store"
    api = client.get("/api/v1/admin/datasets", headers={"Authorization": f"Bearer {token_for(admin_app, ADMIN[0])}"})
    assert api.status_code == 200 and api.headers["Cache-Control"] == "no-store"
    assert "no-store" not in client.get("/gallery").headers.get("Cache-Control", "")


def test_an_admin_session_ends_after_its_lifetime(admin_app, client, monkeypatch):
    assert admin_app.permanent_session_lifetime.total_seconds() == 12 * 3600  # Flask's default was 31 days
    sign_in(client, *ADMIN)
    assert client.get("/admin/").status_code == 200
    later = time.time() + admin_app.config["ADMIN_SESSION_LIFETIME"] + 1
    monkeypatch.setattr(time, "time", lambda: later)
    assert client.get("/admin/").status_code == 302


# -- the instance folder -------------------------------------------------------------------------------
def test_the_instance_folder_and_sqlite_files_are_private(tmp_path):
    """Made with a umask of 022 the folder was 0755 and the database 0644: password hashes readable by every
    user of the machine."""
    from app import create_app
    from app.core.files import private_folder as _private_folder
    from app.core.migrate import upgrade

    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    instance = tmp_path / "instance"
    old = os.umask(0o022)
    try:
        _private_folder(str(instance))  # created
        assert mode(instance) == 0o700
        os.chmod(instance, 0o755)
        _private_folder(str(instance))  # tightened
        assert mode(instance) == 0o700
        (instance / "priorforge.sqlite3").touch()  # made by an older version with the umask's mode
        os.chmod(instance / "priorforge.sqlite3", 0o644)
        app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{instance / 'priorforge.sqlite3'}",
                          "CELERY_BROKER_URL": f"sqla+sqlite:///{instance / 'broker.sqlite3'}",
                          "SECRET_KEY_FILE": str(instance / "secret_key"), "STORAGE_ROOT": str(tmp_path / "images")})
        upgrade(app)
        app.extensions["celery"].send_task("nothing", queue="generate")  # the embedded broker creates its file
    finally:
        os.umask(old)
    assert mode(instance / "priorforge.sqlite3") == 0o600 and mode(instance / "broker.sqlite3") == 0o600
    assert mode(instance / "secret_key") == 0o600
    assert app.instance_path != str(instance) or mode(app.instance_path) == 0o700
    with app.app_context():
        from app.core.extensions import db

        db.session.remove()
        db.engine.dispose()
