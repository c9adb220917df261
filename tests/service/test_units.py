"""Service layer pieces without a worker process: storage, model registration, migrations on SQLite,
reconciliation, and the generation task's own logic called in-process (its delivery semantics are tested
with real worker processes in test_worker.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.core.extensions import db
from app.core.tables import Image, Job, ModelVersion, utcnow
from tests.service.conftest import broker_messages



# -- storage -----------------------------------------------------------------------------------------
def test_local_storage_roundtrip(tmp_path):
    from app.core.storage import LocalStorage, StorageError, image_key

    storage = LocalStorage(tmp_path / "root")
    key = image_key("0b0e4b1c-6d1c-4d7e-9d8e-2f5c0d6a7b8c", 3)
    assert key == "jobs/0b0e4b1c-6d1c-4d7e-9d8e-2f5c0d6a7b8c/003.png"
    assert not storage.exists(key)
    storage.put(key, b"one")
    storage.put(key, b"two")  # overwrite: same key, one file
    assert storage.exists(key) and storage.get(key) == b"two"
    assert storage.local_path(key).read_bytes() == b"two"
    assert sorted(p.name for p in storage.local_path(key).parent.iterdir()) == ["003.png"]
    storage.delete(key)
    storage.delete(key)
    assert not storage.exists(key)
    with pytest.raises(KeyError):
        storage.get(key)
    for bad in ("../etc/passwd", "/abs", "a//b", "a/../b", ""):
        with pytest.raises(StorageError):
            storage.put(bad, b"x")


# -- models ------------------------------------------------------------------------------------------
def test_register_model_versions_and_serving(app, checkpoints):
    from app.services.model_versions import register_model, serving_version

    with app.app_context():
        v1 = serving_version("tiny")
        assert v1.version == 1 and v1.condition == "class" and v1.class_names[3] == "3"
        v2, created = register_model("tiny", checkpoints["none"])
        assert created and v2.version == 2 and not v2.serving  # a new version is not served until asked
        assert serving_version("tiny").id == v1.id
        v3, _ = register_model("tiny", checkpoints["cluster"], serve=True)
        assert serving_version("tiny").id == v3.id
        assert db.session.scalar(select(func.count()).where(ModelVersion.name == "tiny",
                                                            ModelVersion.serving.is_(True))) == 1
        again, created = register_model("tiny", checkpoints["cluster"], if_missing=True)
        assert not created and again.id == v3.id
        with pytest.raises(ValueError, match="does not exist"):
            register_model("x", checkpoints["class"].parent / "missing")
        with pytest.raises(ValueError, match="1-100 characters"):
            register_model("a/b", checkpoints["class"])


def test_serving_is_unique_in_the_database(app):
    """The partial unique index refuses a second serving version even if code forgets to unset one."""
    from sqlalchemy.exc import IntegrityError

    with app.app_context():
        v1 = db.session.scalars(select(ModelVersion).where(ModelVersion.name == "tiny")).one()
        db.session.add(ModelVersion(name="tiny", version=2, backend="aae-cg", checkpoint_path="/x",
                                    condition="class", num_classes=10, class_names=[], image_shape=[],
                                    metrics={}, serving=True))
        with pytest.raises(IntegrityError):
            db.session.commit()
        db.session.rollback()
        assert v1.serving


def test_register_model_cli(runner, checkpoints, app):
    from priorforge.cli import main

    # the priorforge command builds its own app from the environment: point it at this test's database
    import os

    os.environ["PRIORFORGE_SQLALCHEMY_DATABASE_URI"] = app.config["SQLALCHEMY_DATABASE_URI"]
    os.environ["PRIORFORGE_CELERY_BROKER_URL"] = app.config["CELERY_BROKER_URL"]
    try:
        assert main(["db", "upgrade"]) == 0
        assert main(["register-model", "--name", "cli", "--checkpoint", str(checkpoints["class"]), "--serve"]) == 0
        assert main(["register-model", "--name", "cli", "--checkpoint", str(checkpoints["class"]),
                     "--if-missing"]) == 0
        assert main(["register-model", "--name", "cli", "--checkpoint", "/nonexistent"]) == 2
    finally:
        del os.environ["PRIORFORGE_SQLALCHEMY_DATABASE_URI"], os.environ["PRIORFORGE_CELERY_BROKER_URL"]
    with app.app_context():
        assert db.session.scalars(select(ModelVersion.version).where(ModelVersion.name == "cli")).all() == [1]


# -- migrations on SQLite ----------------------------------------------------------------------------
def test_sqlite_migrations_up_down_up(tmp_path):
    from sqlalchemy import inspect

    from app import create_app
    from app.core.migrate import current, downgrade, head_revision, upgrade
    from tests.service.conftest import base_config

    HEAD = head_revision()  # the newest migration, read from the alembic script directory
    app = create_app(base_config(tmp_path))
    upgrade(app)
    assert current(app) == HEAD
    with app.app_context():
        tables = set(inspect(db.engine).get_table_names())
        assert {"jobs", "batches", "images", "model_versions", "alembic_version"} <= tables
        db.engine.dispose()
    downgrade(app, "base")
    assert current(app) is None
    with app.app_context():
        assert set(inspect(db.engine).get_table_names()) == {"alembic_version"}
        db.engine.dispose()
    upgrade(app)
    assert current(app) == HEAD


def test_migrations_match_the_models(tmp_path):
    """Autogenerate finds nothing to do after upgrade: the hand-reviewed migration matches the models."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from app import create_app
    from app.core.migrate import upgrade
    from tests.service.conftest import base_config

    app = create_app(base_config(tmp_path))
    upgrade(app)
    with app.app_context(), db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), db.metadata)
    assert diff == []


# -- reconciliation ----------------------------------------------------------------------------------
def _job(app, **values) -> str:
    from app.services.jobs import _job_from_spec, validate_job

    with app.test_request_context():
        job = _job_from_spec(validate_job({"model": "tiny", "label": "1", "n": 2, "seed": 1}))
        for key, value in values.items():
            setattr(job, key, value)
        db.session.add(job)
        db.session.commit()
        return job.id


def test_reconcile_resends_lost_and_abandoned_jobs(app):
    from app.services.reconcile import reconcile

    app.config.update(LEASE_TIMEOUT=30, QUEUED_STALE_AFTER=60, MAX_ATTEMPTS=3)
    now = utcnow()
    fresh = _job(app, enqueued_at=now)
    lost = _job(app, enqueued_at=now - timedelta(seconds=120))
    never_sent = _job(app, enqueued_at=None)
    # each on a worker of its own (another machine: leases only), so each ran alone and is charged its death
    alive = _job(app, status="running", attempts=1, heartbeat_at=now - timedelta(seconds=5), claim_token="a",
                 worker="elsewhere:1")
    dead = _job(app, status="running", attempts=1, heartbeat_at=now - timedelta(seconds=300), claim_token="b",
                worker="elsewhere:2")
    hopeless = _job(app, status="running", attempts=3, deaths=2, heartbeat_at=now - timedelta(seconds=300),
                    claim_token="c", worker="elsewhere:3")
    done = _job(app, status="succeeded", enqueued_at=now - timedelta(seconds=999))
    msgs = broker_messages(app)
    with app.app_context():
        counts = reconcile()
        assert counts == {"requeued_running": 1, "failed_running": 1, "requeued_uncharged": 0, "resent_queued": 2,
                          "requeued_worker_lost": 0, "requeued_runs": 0, "failed_runs": 0, "resent_runs": 0}
        assert broker_messages(app) == msgs + 3
        status = {job_id: db.session.get(Job, job_id) for job_id in (fresh, lost, never_sent, alive, dead,
                                                                     hopeless, done)}
        assert [status[j].status for j in (fresh, lost, never_sent, alive, dead, hopeless, done)] == \
            ["queued", "queued", "queued", "running", "queued", "failed", "succeeded"]
        assert status[dead].claim_token is None
        assert "died 3 times while it ran alone" in status[hopeless].error
        # a second pass right away finds nothing: each job is sent once per threshold
        db.session.expire_all()
        assert not any(reconcile().values())
        assert broker_messages(app) == msgs + 3


# -- the task's logic, in-process ----------------------------------------------------------------------
def _run_task(job_id: str):
    from workers.tasks import generate_images

    return generate_images.run(job_id)


def test_task_generates_once_and_is_idempotent(app):
    from generation.sampling import read_png_params

    job_id = _job(app, n=3, seed=40)
    with app.app_context():
        assert _run_task(job_id) == "succeeded"
        job = db.session.get(Job, job_id)
        assert job.status == "succeeded" and job.progress == 1.0 and job.attempts == 1
        images = list(job.images)
        assert [(im.index, im.seed) for im in images] == [(0, 40), (1, 41), (2, 42)]
        storage = app.extensions["priorforge_storage"]
        params = read_png_params(storage.local_path(images[1].storage_key))
        assert params["seed"] == 41 and params["label"] == "1" and params["job_id"] == job_id
        first_bytes = [storage.get(im.storage_key) for im in images]
        # a second delivery of a finished job does nothing
        assert _run_task(job_id) == "skipped (succeeded)"
        # a retry after the job was reset (as the reconciliation does) replaces, never duplicates
        db.session.execute(Job.__table__.update().where(Job.id == job_id).values(status="queued"))
        db.session.commit()
        assert _run_task(job_id) == "succeeded"
        assert db.session.scalar(select(func.count()).select_from(Image).where(Image.job_id == job_id)) == 3
        db.session.expire_all()
        assert [storage.get(im.storage_key) for im in db.session.get(Job, job_id).images] == first_bytes
        assert len(list((storage.root / "jobs" / job_id).iterdir())) == 3


def test_task_records_a_failing_model(app):
    from app.services.jobs import _job_from_spec, validate_job

    with app.test_request_context():
        job = _job_from_spec(validate_job({"model": "broken", "label": "2"}))
        db.session.add(job)
        db.session.commit()
        job_id = job.id
    with app.app_context():
        assert _run_task(job_id) == "failed"
        job = db.session.get(Job, job_id)
        assert job.status == "failed" and job.images == []
        assert job.error.startswith("could not load model 'broken' version 1")


def test_task_skips_canceled_and_unknown_jobs(app):
    job_id = _job(app, status="canceled")
    with app.app_context():
        assert _run_task(job_id) == "skipped (canceled)"
        assert _run_task("00000000-0000-0000-0000-000000000000") == "missing"


def test_broker_transport_options_per_broker(app):
    """The embedded broker's poll backs up its rings; Redis gets a visibility timeout above the hard time limit."""
    from app.core.queue import celery_config

    from app.core.fastpath.embedded_broker import RING_FALLBACK_POLL, Transport as EmbeddedTransport

    embedded = celery_config(app)
    assert app.config["CELERY_BROKER_URL"].startswith("sqla+")
    assert embedded["broker_transport_options"] == {}  # all of them would go to create_engine()
    # a SQLite file with rings on (tests/service/test_doorbell.py checks the other cases)
    assert EmbeddedTransport.polling_interval == RING_FALLBACK_POLL
    app.config["CELERY_BROKER_URL"] = "redis://127.0.0.1:6379/0"
    options = celery_config(app)["broker_transport_options"]
    assert "polling_interval" not in options
    assert options["visibility_timeout"] > app.config["TASK_TIME_LIMIT"]


def test_no_setting_turns_a_fault_on(app):
    """Faults reach a worker only through tests/support (workers/faults.py): no setting of the service makes a
    production job slow or kill its process, and a process that installs none has the no-op faults."""
    from app.core.config import default_config
    from workers import faults

    assert not [key for key in default_config("instance") if key.startswith("TEST_")]
    assert type(faults.active()) is faults.Faults
