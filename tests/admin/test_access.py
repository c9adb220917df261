"""Access control: every admin route refuses anonymous and non-admin callers; login, CSRF, tokens, the
production secret-key check and ``priorforge create-admin``."""

from __future__ import annotations

import io
import json

import pytest

from tests.admin.conftest import ADMIN, OTHER, csrf_token, sign_in, token_for

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def admin_routes(app):
    """(url, method, is_api) of every route under /admin and /api/v1/admin, login excepted."""
    out = []
    for rule in app.url_map.iter_rules():
        if not (rule.rule.startswith("/admin") or rule.rule.startswith("/api/v1/admin")):
            continue
        if rule.endpoint == "admin.login":
            continue
        args = {name: 1 if isinstance(conv, type(app.url_map.converters["int"](app.url_map))) else "x"
                for name, conv in rule._converters.items()}
        with app.test_request_context():
            from flask import url_for

            url = url_for(rule.endpoint, **args)
        for method in sorted(rule.methods & set(METHODS)):
            out.append((url, method, rule.rule.startswith("/api/")))
    return out


def test_the_route_list_covers_the_admin_area(admin_app):
    routes = admin_routes(admin_app)
    urls = {url for url, _, _ in routes}
    assert {"/admin/", "/admin/datasets", "/admin/tokens", "/admin/logout", "/api/v1/admin/datasets"} <= urls
    assert len(routes) >= 8


def test_every_admin_route_refuses_anonymous_callers(admin_app, client):
    for url, method, is_api in admin_routes(admin_app):
        response = client.open(url, method=method)
        if is_api:
            assert response.status_code == 401, (method, url)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert "Bearer" in response.get_json()["error"]
        else:
            assert response.status_code == 302, (method, url)
            assert response.headers["Location"].startswith("/admin/login"), (method, url)


def test_every_admin_route_refuses_a_bad_token_and_a_session_cookie(admin_app, client):
    assert sign_in(client, *ADMIN).status_code == 303
    for url, method, is_api in admin_routes(admin_app):
        if is_api:  # the admin API never reads the session cookie (no CSRF risk)
            assert client.open(url, method=method).status_code == 401, (method, url)
            assert client.open(url, method=method, headers={"Authorization": "Bearer pf_nope"}).status_code == 401


def test_every_admin_route_refuses_non_admins(admin_app, client):
    token = token_for(admin_app, OTHER[0])
    assert sign_in(client, *OTHER).status_code == 303
    for url, method, is_api in admin_routes(admin_app):
        if url in ("/admin/logout", "/admin/password"):
            continue  # any signed-in user may sign out (tested below) and change their own password
            # (tests/admin/test_account_security.py)
        headers = {"Authorization": f"Bearer {token}"} if is_api else {}
        response = client.open(url, method=method, headers=headers)
        assert response.status_code == 403, (method, url)


def test_a_non_admin_can_sign_out(admin_app, client):
    """Any signed-in user can sign out: POST /admin/logout is not an admin-only route (it once answered 403)."""
    assert sign_in(client, *OTHER).status_code == 303
    token = csrf_token(client)
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 303

    with client.session_transaction() as sess:
        assert "admin_user_id" not in sess


def test_a_signed_out_cookie_no_longer_opens_the_admin(client):
    """Signing out ends the session on the server, not only in the browser: a copy of the cookie taken before
    no longer opens /admin/."""
    sign_in(client, *ADMIN)
    cookie = client.get_cookie("session").value
    assert client.post("/admin/logout", data={"csrf_token": csrf_token(client, "/admin/")}).status_code == 303
    client.set_cookie("session", cookie)  # the stolen / copied cookie from before the sign-out
    assert client.get("/admin/").status_code == 302


def test_a_password_change_revokes_older_sessions(admin_app, client):
    from sqlalchemy import select

    from app.core.extensions import db
    from app.core.tables import User
    from app.services.accounts import set_password

    sign_in(client, *ADMIN)
    assert client.get("/admin/").status_code == 200
    with admin_app.app_context():
        set_password(db.session.scalars(select(User).where(User.username == ADMIN[0])).one(), "a new long password")
    assert client.get("/admin/").status_code == 302
    assert sign_in(client, ADMIN[0], "a new long password").status_code == 303
    assert client.get("/admin/").status_code == 200


def test_admins_get_in(admin_app, client):
    assert client.get("/admin/").status_code == 302
    assert sign_in(client, *ADMIN).headers["Location"] == "/admin/"
    body = client.get("/admin/").get_data(as_text=True)
    assert "Signed in as <strong>admin</strong>" in body and "mnist" in body
    token = token_for(admin_app, ADMIN[0])
    response = client.get("/api/v1/admin/datasets", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert [d["name"] for d in response.get_json()["builtin"]] == ["mnist", "fashion-mnist", "cifar10", "digits",
                                                                   "fashion-mnist-captions", "cifar10-captions",
                                                                   "oxford102-flowers"]


def test_login_needs_the_right_password_and_a_csrf_token(client):
    response = client.post("/admin/login", data={"username": ADMIN[0], "password": ADMIN[1]})
    assert response.status_code == 400  # no CSRF token
    assert client.get("/admin/").status_code == 302
    wrong = sign_in(client, ADMIN[0], "not the password")
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.get_data(as_text=True)
    assert sign_in(client, "nobody", ADMIN[1]).status_code == 401
    assert sign_in(client, *ADMIN).status_code == 303
    assert client.get("/admin/").status_code == 200


def test_login_redirects_only_inside_the_admin_area(client):
    token = csrf_token(client)
    data = {"username": ADMIN[0], "password": ADMIN[1], "csrf_token": token}
    assert client.post("/admin/login?next=//evil.example/x", data=data).headers["Location"] == "/admin/"


def test_logout_needs_csrf_and_ends_the_session(client):
    sign_in(client, *ADMIN)
    assert client.post("/admin/logout").status_code == 400
    token = csrf_token(client, "/admin/")
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 303
    assert client.get("/admin/").status_code == 302


def test_tokens_from_the_admin_page_work_until_revoked(admin_app, client):
    sign_in(client, *ADMIN)
    assert client.post("/admin/tokens", data={"name": "ci"}).status_code == 400  # CSRF
    page = client.post("/admin/tokens", data={"name": "ci", "csrf_token": csrf_token(client, "/admin/")})
    body = page.get_data(as_text=True)
    token = body.split('id="new-token">', 1)[1].split("<", 1)[0]
    assert token.startswith("pf_")
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/admin/datasets", headers=headers).status_code == 200
    from app.core.extensions import db
    from app.core.tables import ApiToken

    with admin_app.app_context():
        row = db.session.query(ApiToken).filter_by(name="ci").one()
        assert token not in (row.token_hash, row.prefix) and len(row.token_hash) == 64
        token_id = row.id
    response = client.post(f"/admin/tokens/{token_id}/revoke", data={"csrf_token": csrf_token(client, "/admin/")})
    assert response.status_code == 303
    assert client.get("/api/v1/admin/datasets", headers=headers).status_code == 401


def test_passwords_are_stored_as_argon2_hashes(admin_app):
    from app.core.extensions import db
    from app.core.tables import User

    with admin_app.app_context():
        user = db.session.query(User).filter_by(username=ADMIN[0]).one()
        assert user.password_hash.startswith("$argon2id$") and ADMIN[1] not in user.password_hash


def test_public_forms_need_the_csrf_token_and_the_json_api_does_not(client):
    assert client.post("/", data={"model": "digits", "label": "1", "n": "1"}).status_code == 400
    assert client.post("/batches", data={"file": (io.BytesIO(b"model,n\nnope,1\n"), "a.csv")},
                       content_type="multipart/form-data").status_code == 400
    token = csrf_token(client, "/batches/new")  # the job form is not shown while no model is served
    response = client.post("/", data={"model": "nope", "label": "1", "n": "1", "csrf_token": token})
    assert response.status_code == 422  # past the CSRF check, refused by validation (no such model)
    response = client.post("/batches", data={"file": (io.BytesIO(b"model,n\nnope,1\n"), "a.csv"),
                                             "csrf_token": token}, content_type="multipart/form-data")
    assert response.status_code == 422
    assert client.post("/api/v1/jobs", json={"model": "nope", "n": 1}).status_code in (404, 422)


@pytest.mark.parametrize("key", ["dev", "changeme", "CHANGE-ME", "short", "k" * 64, "secret",
                                 # long enough, and still typed rather than drawn
                                 "abcdefghabcdefghabcdefghabcdefgh", "0123456789abcdef" * 3,
                                 "abcdefghijklmnopqrstuvwxyz0123456789", "aaaaaaaabbbbbbbbccccccccddddddddeeeeffffgghh"])
@pytest.mark.parametrize("env", ["development", "production"])
def test_a_known_or_weak_secret_key_is_refused_in_every_mode(tmp_path, monkeypatch, env, key):
    """A known or weak secret key is refused in every mode, not only in production (the default was once the
    fixed string 'dev')."""
    from app import create_app

    monkeypatch.setenv("PRIORFORGE_ENV", env)
    monkeypatch.setenv("PRIORFORGE_SECRET_KEY", key)
    with pytest.raises(RuntimeError, match="PRIORFORGE_SECRET_KEY"):
        create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'p.sqlite3'}", "SESSION_COOKIE_SECURE": True})


def test_an_unset_secret_key_is_generated_once_and_kept(tmp_path):
    import os
    import stat

    from app import create_app

    path = tmp_path / "instance" / "secret_key"
    config = {"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'p.sqlite3'}", "SECRET_KEY_FILE": str(path),
              "CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}"}
    first = create_app(dict(config)).config["SECRET_KEY"]
    assert len(first) >= 64 and first not in ("dev", "")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert create_app(dict(config)).config["SECRET_KEY"] == first  # a restart keeps the sessions valid


def test_production_needs_secure_cookies(tmp_path, monkeypatch):
    from app import create_app

    monkeypatch.setenv("PRIORFORGE_ENV", "production")
    monkeypatch.setenv("PRIORFORGE_SECRET_KEY", "5e0f3c9a71d24b86ae13f07c9d5b2e48c61a7f3092db54e8")
    config = {"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'p.sqlite3'}",
              "CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}"}
    with pytest.raises(RuntimeError, match="SESSION_COOKIE_SECURE"):
        create_app(dict(config))
    monkeypatch.setenv("PRIORFORGE_SESSION_COOKIE_SECURE", "true")
    app = create_app(dict(config))
    assert app.config["WTF_CSRF_ENABLED"] is True and app.config["SESSION_COOKIE_SECURE"] is True


def test_create_admin_command(admin_app, tmp_path, monkeypatch, capsys):
    from priorforge.cli import main

    monkeypatch.setenv("PRIORFORGE_SQLALCHEMY_DATABASE_URI", admin_app.config["SQLALCHEMY_DATABASE_URI"])
    monkeypatch.setenv("PRIORFORGE_CELERY_BROKER_URL", admin_app.config["CELERY_BROKER_URL"])
    monkeypatch.setenv("PRIORFORGE_STORAGE_ROOT", json.dumps(str(tmp_path / "images")))
    monkeypatch.setattr("sys.stdin", io.StringIO("a brand new password\n"))
    assert main(["create-admin", "--username", "ops", "--password-stdin", "--token"]) == 0
    out = capsys.readouterr().out
    token = out.strip().rsplit(" ", 1)[-1]
    assert "created admin 'ops'" in out and token.startswith("pf_")
    client = admin_app.test_client()
    assert client.get("/api/v1/admin/datasets", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert sign_in(client, "ops", "a brand new password").status_code == 303
    assert main(["create-admin", "--username", "ops", "--password-stdin"]) == 1  # exists already
    assert main(["create-admin", "--username", "ops", "--token"]) == 0  # a second token, no password asked
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["create-admin", "--username", "weak", "--password-stdin"]) == 1
    assert "at least 10 characters" in capsys.readouterr().err


# -- sign-in throttle -------------------------------------------------------------------------------------
def _try(client, username: str, password: str, address: str):
    token = csrf_token(client)
    return client.post("/admin/login", data={"username": username, "password": password, "csrf_token": token},
                       environ_base={"REMOTE_ADDR": address})


def test_repeated_wrong_passwords_are_throttled_per_address_and_a_success_clears_them(admin_app, client):
    from datetime import timedelta

    from app.core.extensions import db
    from app.core.tables import LoginFailure

    admin_app.config.update(LOGIN_MAX_FAILURES=3, LOGIN_MAX_FAILURES_PER_ADDRESS=5, LOGIN_WINDOW_SECONDS=600)
    for _ in range(3):
        assert _try(client, ADMIN[0], "wrong password!", "10.0.0.1").status_code == 401
    blocked = _try(client, ADMIN[0], ADMIN[1], "10.0.0.1")  # even the right password, from that address
    assert blocked.status_code == 429 and 0 < int(blocked.headers["Retry-After"]) <= 600
    assert "Too many failed sign-ins" in blocked.get_data(as_text=True)
    with admin_app.app_context():
        assert db.session.query(LoginFailure).count() == 3  # a blocked try is not even checked
    # another address is not affected (a guesser cannot lock the admin out)
    assert _try(client, ADMIN[0], ADMIN[1], "10.0.0.2").status_code == 303
    # the window passes: the address may try again, and a success clears its failures for that name
    with admin_app.app_context():
        for row in db.session.query(LoginFailure).all():
            row.at = row.at - timedelta(seconds=601)
        db.session.commit()
    client.post("/admin/logout", data={"csrf_token": csrf_token(client, "/admin/")})
    assert _try(client, ADMIN[0], "wrong password!", "10.0.0.1").status_code == 401
    assert _try(client, ADMIN[0], ADMIN[1], "10.0.0.1").status_code == 303
    with admin_app.app_context():
        assert db.session.query(LoginFailure).filter_by(remote_addr="10.0.0.1").count() == 0


def test_spraying_many_user_names_from_one_address_is_throttled(admin_app, client):
    admin_app.config.update(LOGIN_MAX_FAILURES=3, LOGIN_MAX_FAILURES_PER_ADDRESS=5)
    for i in range(5):
        assert _try(client, f"user{i}", "wrong password!", "10.0.0.9").status_code == 401
    assert _try(client, "someone-else", "wrong password!", "10.0.0.9").status_code == 429


# -- the sign-in throttle holds under concurrent attempts -----------------------------------------------
def _concurrent_wrong_passwords(app, attempts: int = 30) -> tuple[int, list[int]]:
    """``attempts`` wrong passwords for the admin from one address at once: (password checks, statuses)."""
    import threading
    import time

    from app.services import accounts

    checks = []

    class CountingHasher:  # the real hasher, counting (and slowing) each password check
        def __init__(self, real):
            self.real = real

        def verify(self, hash_, password):
            checks.append(1)
            time.sleep(0.05)  # widens the window a check-then-record throttle loses
            return self.real.verify(hash_, password)

        def __getattr__(self, name):
            return getattr(self.real, name)

    app.config.update(WTF_CSRF_ENABLED=False, LOGIN_MAX_FAILURES=10, LOGIN_MAX_FAILURES_PER_ADDRESS=30)
    real = accounts._hasher
    accounts._hasher = CountingHasher(real)
    barrier = threading.Barrier(attempts)
    statuses: list[int] = []

    def attempt():
        client = app.test_client()
        barrier.wait()
        response = client.post("/admin/login", data={"username": ADMIN[0], "password": "wrong password!"},
                               environ_base={"REMOTE_ADDR": "10.9.9.9"})
        statuses.append(response.status_code)

    try:
        threads = [threading.Thread(target=attempt) for _ in range(attempts)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        accounts._hasher = real
    return len(checks), statuses


def test_thirty_concurrent_sign_ins_get_at_most_the_limit_of_password_checks(admin_app):
    checks, statuses = _concurrent_wrong_passwords(admin_app)
    assert checks <= 10, checks
    assert sorted(set(statuses)) == [401, 429] and statuses.count(401) == checks


@pytest.mark.integration
def test_the_throttle_is_atomic_on_postgres(tmp_path, pg_url):
    from app import create_app
    from app.core.extensions import db
    from app.core.migrate import upgrade
    from app.services.accounts import create_user

    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": pg_url, "RATELIMIT_ENABLED": False,
                      "CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'b.sqlite3'}"})
    upgrade(app)
    with app.app_context():
        create_user(*ADMIN, is_admin=True)
    try:
        checks, statuses = _concurrent_wrong_passwords(app)
        assert checks <= 10, checks
        assert statuses.count(401) == checks and statuses.count(429) == 30 - checks
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
