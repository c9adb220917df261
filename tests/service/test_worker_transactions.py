"""The generation task's transactions: a task claims its jobs in one transaction and finishes them
in one, whatever the number of jobs batched; a job canceled meanwhile drops out alone (no rows, no files);
a lone job never waits for companions; on PostgreSQL, rows another worker is claiming are skipped."""

from __future__ import annotations

import pytest
from sqlalchemy import event, func, select, update

from app.core.extensions import db
from app.core.tables import Image, Job

SPECS = [{"label": "3", "n": 1, "seed": 7}, {"label": "0", "n": 5, "seed": 11}, {"label": "9", "n": 3, "seed": 2},
         {"label": "3", "n": 2, "seed": 8}]


def queued_job(app, **values) -> str:
    from app.services.jobs import _job_from_spec, validate_job

    with app.test_request_context():
        job = _job_from_spec(validate_job({"model": "tiny", **values}))
        db.session.add(job)
        db.session.commit()
        return job.id


def job_state(app, job_id: str) -> tuple[str, int, list[str]]:
    """(status, image rows, stored files) of a job."""
    from app.core.storage import image_key

    storage = app.extensions["priorforge_storage"]
    with app.app_context():
        db.session.expire_all()
        job = db.session.get(Job, job_id)
        rows = db.session.scalar(select(func.count()).select_from(Image).where(Image.job_id == job_id))
        files = [image_key(job_id, i) for i in range(job.n) if storage.exists(image_key(job_id, i))]
        return job.status, rows, files


def warm_up(app) -> None:
    """One job run alone: the tiny model is in this process's cache afterwards."""
    from workers.tasks import generate_images

    job_id = queued_job(app, label="1", n=1, seed=1)
    with app.app_context():
        assert generate_images.run(job_id) == "succeeded"


class Commits:
    def __init__(self, engine):
        self.engine, self.count = engine, 0
        event.listen(engine, "commit", self._on_commit)

    def _on_commit(self, *args) -> None:
        self.count += 1

    def close(self) -> None:
        event.remove(self.engine, "commit", self._on_commit)


def test_a_batched_task_claims_in_one_commit_and_finishes_in_one(app):
    from workers.tasks import generate_images

    warm_up(app)
    jobs = [queued_job(app, **spec) for spec in SPECS]
    with app.app_context():
        commits = Commits(db.engine)
        try:
            assert generate_images.run(jobs[0]) == "succeeded"
        finally:
            commits.close()
        assert commits.count == 2  # the claims (primary + companions), then every job's success and rows
        tokens = {db.session.get(Job, job_id).claim_token for job_id in jobs}
        assert len(tokens) == len(jobs) and None not in tokens  # each job keeps its own claim token
    for job_id, spec in zip(jobs, SPECS):
        status, rows, files = job_state(app, job_id)
        assert (status, rows, len(files)) == ("succeeded", spec["n"], spec["n"])


@pytest.mark.parametrize("model_cached", [True, False], ids=["model-cached", "model-loaded-by-the-task"])
def test_a_job_canceled_while_its_batch_is_stored_drops_out_alone(app, monkeypatch, model_cached):
    import workers.model_cache as model_cache
    import workers.job_images as job_images
    import workers.tasks as tasks

    if model_cached:
        warm_up(app)
    else:
        monkeypatch.setattr(model_cache, "_MODELS", type(model_cache._MODELS)())  # companions are claimed after the load
    jobs = [queued_job(app, **spec) for spec in SPECS]
    victim = jobs[2]
    encode = job_images.encode_pngs

    def encode_and_cancel(version, job, request, images):
        if job.id == jobs[0]:  # the victim is canceled (by the API, say) after the decode, before the finish
            with db.engine.begin() as conn:
                conn.execute(update(Job).where(Job.id == victim).values(status="canceled"))
        return encode(version, job, request, images)

    monkeypatch.setattr(job_images, "encode_pngs", encode_and_cancel)
    with app.app_context():
        assert tasks.generate_images.run(jobs[0]) == "succeeded"
        # the others were batched with it; their own messages are no-ops
        assert [tasks.generate_images.run(job_id) for job_id in jobs[1:]] == \
            ["skipped (succeeded)", "skipped (canceled)", "skipped (succeeded)"]
    for job_id, spec in zip(jobs, SPECS):
        status, rows, files = job_state(app, job_id)
        if job_id == victim:
            assert (status, rows, files) == ("canceled", 0, [])  # its files were removed, no rows point at them
        else:
            assert (status, rows, len(files)) == ("succeeded", spec["n"], spec["n"])


    import workers.decoding as decoding
    import workers.tasks as tasks
    import workers.decoding as decoding

    warm_up(app)
    sleeps: list[float] = []
    monkeypatch.setattr(decoding.time, "sleep", sleeps.append)
    assert app.config["BATCH_WAIT_MS"] == 0  # the default
    with app.app_context():
        assert tasks.generate_images.run(queued_job(app, label="2", n=1, seed=3)) == "succeeded"
    assert sleeps == []  # an empty queue is not waited on

    app.config["BATCH_WAIT_MS"] = 5
    with app.app_context():
        assert tasks.generate_images.run(queued_job(app, label="2", n=1, seed=4)) == "succeeded"
    assert sleeps == [0.005]  # an empty queue, a configured wait

    sleeps.clear()
    jobs = [queued_job(app, **spec) for spec in SPECS]  # a backlog: claimed at once, no wait
    with app.app_context():
        assert tasks.generate_images.run(jobs[0]) == "succeeded"
    assert sleeps == []
    assert all(job_state(app, job_id)[0] == "succeeded" for job_id in jobs)


@pytest.mark.integration
def test_postgres_batches_in_two_commits_and_skips_rows_another_worker_is_claiming(tmp_path, pg_url, checkpoints):
    from app import create_app
    from app.core.migrate import upgrade
    from tests.service.conftest import register_test_models
    from workers.batching import JobSnapshot, companion_candidates
    from workers.tasks import generate_images

    app = create_app({"SQLALCHEMY_DATABASE_URI": pg_url, "STORAGE_ROOT": str(tmp_path / "images"),
                      "CELERY_BROKER_URL": "memory://", "TESTING": True, "DEFAULT_MODEL": "tiny"})
    upgrade(app)
    try:
        with app.app_context():
            register_test_models(checkpoints)
        warm_up(app)
        jobs = [queued_job(app, **spec) for spec in SPECS]
        with app.app_context():
            primary = JobSnapshot.of(db.session.get(Job, jobs[0]))
            db.session.rollback()
            with db.engine.connect() as other:  # another worker holds jobs[1] (claiming it)
                other.execute(select(Job.id).where(Job.id == jobs[1]).with_for_update())
                assert [c.id for c in companion_candidates(primary, 64)] == jobs[2:]
                db.session.rollback()
                other.rollback()
            assert [c.id for c in companion_candidates(primary, 64)] == jobs[1:]
            db.session.rollback()

            commits = Commits(db.engine)
            try:
                assert generate_images.run(jobs[0]) == "succeeded"
            finally:
                commits.close()
            assert commits.count == 2
            tokens = {db.session.get(Job, job_id).claim_token for job_id in jobs}
            assert len(tokens) == len(jobs) and None not in tokens
        for job_id, spec in zip(jobs, SPECS):
            status, rows, files = job_state(app, job_id)
            assert (status, rows, len(files)) == ("succeeded", spec["n"], spec["n"])
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def test_local_storage_put_many_writes_every_file_whole(tmp_path):
    from app.core.storage import LocalStorage, StorageError

    storage = LocalStorage(tmp_path / "root")
    items = [(f"jobs/a/{i:03d}.png", bytes([i]) * (i + 1)) for i in range(3)] + [("jobs/b/000.png", b"b")]
    storage.put_many(items)
    storage.put_many([("jobs/a/001.png", b"again")])  # overwrite: same key, one file
    assert [storage.get(key) for key, _ in items] == [b"\x00", b"again", b"\x02\x02\x02", b"b"]
    assert sorted(p.name for p in (tmp_path / "root" / "jobs" / "a").iterdir()) == ["000.png", "001.png", "002.png"]
    with pytest.raises(StorageError):
        storage.put_many([("jobs/../x.png", b"x")])


def _pixels(app, job_id: str):
    import numpy as np
    from PIL import Image as PILImage

    from app.core.storage import image_key

    storage = app.extensions["priorforge_storage"]
    with app.app_context():
        return np.asarray(PILImage.open(storage.local_path(image_key(job_id, 0)))).astype(int)


def test_inference_precision_applies_in_the_worker_and_a_bad_one_fails_the_job_readably(app):
    """INFERENCE_PRECISION: bf16 autocast (CPU here) stays within a few grey levels of fp32; fp16 is refused
    on a CPU with a message naming it; the default (auto) is fp32 on a CPU: the same pixels as fp32."""
    from workers.tasks import generate_images

    outcomes = {}
    for precision in ("fp32", "auto", "bf16", "fp16"):
        app.config["INFERENCE_PRECISION"] = precision
        job_id = queued_job(app, label="4", n=1, seed=21)
        with app.app_context():
            outcomes[precision] = (generate_images.run(job_id), job_id)
    assert [outcomes[p][0] for p in ("fp32", "auto", "bf16", "fp16")] == ["succeeded"] * 3 + ["failed"]
    fp32, auto, bf16 = (_pixels(app, outcomes[p][1]) for p in ("fp32", "auto", "bf16"))
    assert (fp32 == auto).all()
    assert 0 < abs(fp32 - bf16).max() <= 8  # bf16 really ran, within the documented tolerance
    with app.app_context():
        assert "fp16 needs a CUDA device" in db.session.get(Job, outcomes["fp16"][1]).error
