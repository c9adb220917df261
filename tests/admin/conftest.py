"""Fixtures of the admin tests: an app on a fresh SQLite file (migrated with Alembic) with CSRF protection ON,
an admin and a non-admin account, and helpers to sign in and to build zip archives."""

from __future__ import annotations

import io
import re
import zipfile

import pytest

from tests.service.conftest import _clean_env, pg_url  # noqa: F401

ADMIN = ("admin", "correct horse battery")
OTHER = ("viewer", "another long password")


@pytest.fixture
def tmpdir_guard(tmp_path, monkeypatch):
    """Python's temporary files of this test go to a folder of its own, to prove nothing is left there."""
    import tempfile

    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def admin_app(tmp_path, tmpdir_guard):
    from app import create_app
    from app.services.accounts import create_user
    from app.core.extensions import db
    from app.core.migrate import upgrade

    app = create_app({
        "TESTING": True,
        "WTF_CSRF_ENABLED": True,
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'admin.sqlite3'}",
        "CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}",
        "STORAGE_ROOT": str(tmp_path / "images"),
        "DATASET_ROOT": str(tmp_path / "datasets"),
        "DATA_ROOT": str(tmp_path / "data"),
        "TRAINING_ROOT": str(tmp_path / "trainings"),  # the default, instance/trainings, is in the checkout
        "RECONCILE_INTERVAL": 0,
    })
    upgrade(app)
    with app.app_context():
        create_user(*ADMIN, is_admin=True)
        create_user(*OTHER, is_admin=False)
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(admin_app):
    return admin_app.test_client()


def csrf_token(client, url: str = "/admin/login") -> str:
    body = client.get(url).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', body)
    assert match, f"no CSRF field on {url}"
    return match.group(1)


def sign_in(client, username: str, password: str):
    token = csrf_token(client)
    return client.post("/admin/login", data={"username": username, "password": password, "csrf_token": token})


def token_for(app, username: str) -> str:
    from sqlalchemy import select

    from app.services.accounts import issue_token
    from app.core.extensions import db
    from app.core.tables import User

    with app.app_context():
        user = db.session.scalars(select(User).where(User.username == username)).one()
        return issue_token(user, "test").token


def png(size: int = 8, shade: int = 128) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (size, size), color=shade).save(buffer, format="PNG")
    return buffer.getvalue()


def make_zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return buffer.getvalue()
