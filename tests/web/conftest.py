"""Fixtures for the web page tests: an app on a fresh SQLite database (migrated with Alembic) with the shipped
digits model registered, and helpers that store finished jobs with real PNG files."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

# reused from the service tests: a clean PRIORFORGE_* environment for every test, a fresh PostgreSQL
# database, a Redis key prefix of the test's own, and real Celery worker processes
from tests.service.conftest import _clean_env, pg_url, redis_url, start_worker  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
DIGITS_CHECKPOINT = ROOT / "tests" / "fixtures" / "digits-aae-cg"


@pytest.fixture
def web_app(tmp_path):
    from app import create_app
    from app.core.extensions import db
    from app.core.migrate import upgrade
    from app.services.model_versions import register_model

    app = create_app({
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'web.sqlite3'}",
        # the embedded broker on its own file: messages are stored, no worker consumes them here
        "CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}",
        "STORAGE_ROOT": str(tmp_path / "images"),
        "RECONCILE_INTERVAL": 0,
    })
    upgrade(app)
    with app.app_context():
        register_model("digits", DIGITS_CHECKPOINT)
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(web_app):
    return web_app.test_client()


def add_model(app, name: str, condition: str, *, num_classes: int = 0, class_names=()):
    """A serving model version row (for pages and validation only: no worker loads it in these tests)."""
    from app.core.extensions import db
    from app.core.tables import ModelVersion

    with app.app_context():
        version = ModelVersion(name=name, version=1, backend="aae-cg", checkpoint_path=f"/nonexistent/{name}",
                               condition=condition, num_classes=num_classes, class_names=list(class_names),
                               image_shape=[1, 28, 28], dataset="test", metrics={}, serving=True)
        db.session.add(version)
        db.session.commit()
        return version.id


def png_bytes(shade: int, size: int = 28) -> bytes:
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.new("L", (size, size), color=shade).save(buffer, format="PNG")
    return buffer.getvalue()


def add_finished_job(app, *, model: str = "digits", label: str | None = None, prompt: str | None = None,
                     n: int = 2, seed: int = 100, age_s: float = 0.0) -> tuple[str, list[str]]:
    """A succeeded job with ``n`` stored images (real PNG files), created ``age_s`` seconds ago.

    Returns (job id, image ids in index order)."""
    from app.core.extensions import db
    from app.core.tables import Image, Job, image_id
    from app.services.model_versions import serving_version
    from app.core.storage import image_key

    storage = app.extensions["priorforge_storage"]
    when = datetime.now(timezone.utc) - timedelta(seconds=age_s)
    with app.app_context():
        version = serving_version(model)
        kind = "class" if label is not None else "text" if prompt is not None else "none"
        label_index = version.class_names.index(label) if label is not None else None
        job = Job(status="succeeded", model_version_id=version.id, condition_kind=kind, label=label,
                  label_index=label_index, prompt=prompt, n=n, seed=seed, progress=1.0, attempts=1,
                  created_at=when, finished_at=when)
        db.session.add(job)
        db.session.flush()
        ids = []
        for i in range(n):
            key = image_key(job.id, i)
            storage.put(key, png_bytes((seed + i) % 256))
            ids.append(image_id(job.id, i))
            db.session.add(Image(id=ids[-1], job_id=job.id, index=i, storage_key=key, width=28, height=28,
                                 seed=seed + i, created_at=when))
        db.session.commit()
        return job.id, ids
