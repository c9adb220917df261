"""Micro-batching in the generation task: a job batched with others gets exactly the pixels it gets alone.

CPU kernels pick their blocking by batch size (a pass of 1 row and one of 64 rows can round a pixel
differently), so the worker decodes in passes of a fixed size (padded): these tests check the merged and the
solo runs give identical uint8 pixels, on the shipped checkpoint and through a real worker process."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image as PILImage

from app.core.extensions import db
from app.core.tables import Job
from generation.base import Condition
from generation.sampling import image_grid
from tests.service.conftest import sqlite_app_for_worker, wait_for

REPO = Path(__file__).resolve().parents[2]
FAST = {"HEARTBEAT_INTERVAL": 0.5, "LEASE_TIMEOUT": 4, "RECONCILE_INTERVAL": 1, "QUEUED_STALE_AFTER": 5}


def png_pixels(images: torch.Tensor) -> list[bytes]:
    """Each image as the worker saves it (PNG), decoded back to its uint8 pixels."""
    out = []
    for i in range(images.shape[0]):
        buffer = io.BytesIO()
        image_grid(images[i:i + 1]).save(buffer, format="PNG")
        with PILImage.open(io.BytesIO(buffer.getvalue())) as picture:
            out.append(picture.tobytes())
    return out


@pytest.fixture(scope="module")
def digits():
    from generation.checkpoint import load_checkpoint

    model, _info = load_checkpoint(REPO / "tests" / "fixtures" / "digits-aae-cg", device="cpu")
    return model.eval()  # BatchNorm in eval mode: a row's output does not depend on the other rows' values


@pytest.mark.parametrize("pass_size", [8, 16, 64])
def test_merged_decode_gives_each_job_its_solo_pixels(digits, pass_size):
    from workers.batching import JobRequest, decode_jobs

    requests = [JobRequest(Condition("class", index=label), n, seed)
                for label, n, seed in [(3, 1, 7), (0, 5, 123), (9, 17, 2), (3, 1, 8), (5, 2, 40), (1, 30, 99)]]
    merged = decode_jobs(digits, requests, pass_size)
    for request, images in zip(requests, merged):
        alone = decode_jobs(digits, [request], pass_size)[0]
        assert images.shape == (request.n, 1, 28, 28)
        assert png_pixels(images) == png_pixels(alone)
    # image i of a job depends on seed + i only: a 1-image job with seed 124 is image 1 of the (0, 5, 123) job
    single = decode_jobs(digits, [JobRequest(Condition("class", index=0), 1, 124)], pass_size)[0]
    assert png_pixels(single) == png_pixels(merged[1][1:2])


@pytest.mark.parametrize("bad", [0, -8, "8", 8.0, True])
def test_the_app_refuses_a_bad_generate_chunk_naming_it(tmp_path, bad):
    from app import create_app
    from tests.service.conftest import base_config

    with pytest.raises(ValueError, match="GENERATE_CHUNK"):
        create_app(base_config(tmp_path, GENERATE_CHUNK=bad))


@pytest.mark.parametrize("bad", ["eight", "0", "2.5"])
def test_a_bad_generate_chunk_from_the_environment_is_refused_naming_it(tmp_path, monkeypatch, bad):
    from app import create_app
    from tests.service.conftest import base_config

    monkeypatch.setenv("PRIORFORGE_GENERATE_CHUNK", bad)
    with pytest.raises(ValueError, match="GENERATE_CHUNK"):
        create_app(base_config(tmp_path))


def _queued_job(app, **values) -> str:
    from app.services.jobs import _job_from_spec, validate_job

    with app.test_request_context():
        job = _job_from_spec(validate_job({"model": "tiny", **values}))
        db.session.add(job)
        db.session.commit()
        return job.id


def _stored_pixels(app, job_id: str) -> list[bytes]:
    storage = app.extensions["priorforge_storage"]
    with app.app_context():
        db.session.expire_all()
        job = db.session.get(Job, job_id)
        assert job.status == "succeeded", (job.status, job.error)
        out = []
        for image in job.images:
            with PILImage.open(io.BytesIO(storage.get(image.storage_key))) as picture:
                out.append(picture.tobytes())
        return out


SPECS = [{"label": "3", "n": 1, "seed": 7}, {"label": "0", "n": 5, "seed": 11}, {"label": "9", "n": 3, "seed": 2},
         {"label": "3", "n": 1, "seed": 8}]


def test_task_batches_queued_jobs_and_each_matches_its_solo_run(app):
    from workers.tasks import generate_images

    app.config.update(BATCH_WAIT_MS=0)
    jobs = [_queued_job(app, **spec) for spec in SPECS]
    with app.app_context():
        assert generate_images.run(jobs[0]) == "succeeded"
        # the others were claimed and finished by that one task: their own messages are no-ops
        for job_id in jobs[1:]:
            assert generate_images.run(job_id) == "skipped (succeeded)"
            assert db.session.get(Job, job_id).attempts == 1
    batched = [_stored_pixels(app, job_id) for job_id in jobs]

    app.config.update(BATCH_MAX_IMAGES=0)  # batching off: one job per task
    solo_jobs = [_queued_job(app, **spec) for spec in SPECS]
    with app.app_context():
        for job_id in solo_jobs:
            assert generate_images.run(job_id) == "succeeded"
    assert [_stored_pixels(app, job_id) for job_id in solo_jobs] == batched
    assert [len(p) for p in batched] == [spec["n"] for spec in SPECS]


@pytest.mark.integration
def test_real_worker_batches_jobs_submitted_at_once(tmp_path, checkpoints, start_worker):
    """Jobs queued before the worker starts are decoded together; each has its solo pixels."""
    app, config = sqlite_app_for_worker(tmp_path, checkpoints)
    client = app.test_client()
    jobs = []
    for spec in SPECS * 2:
        resp = client.post("/api/v1/jobs", json={"model": "tiny", **spec})
        assert resp.status_code == 202, resp.get_json()
        jobs.append(resp.get_json()["id"])
    worker = start_worker(config)

    def done() -> bool:
        with app.app_context():
            db.session.expire_all()
            return all(db.session.get(Job, j).status in ("succeeded", "failed") for j in jobs)

    wait_for(done, 180, "the jobs")
    batched = [_stored_pixels(app, job_id) for job_id in jobs]
    assert "batched with" in worker.log_text()
    assert batched[:len(SPECS)] == batched[len(SPECS):]  # same request, same pixels, batched or not
    worker.stop()

    from workers.tasks import generate_images

    app.config.update(BATCH_MAX_IMAGES=0)
    solo_jobs = [_queued_job(app, **spec) for spec in SPECS]
    with app.app_context():
        for job_id in solo_jobs:
            assert generate_images.run(job_id) == "succeeded"
    assert [_stored_pixels(app, job_id) for job_id in solo_jobs] == batched[:len(SPECS)]
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_each_job_is_handed_on_as_soon_as_its_last_row_is_decoded(digits):
    """``on_ready`` gets each request's images (the same tensors decode_jobs returns) right after the pass
    that decodes its last row, before the next pass: the worker encodes them while the next pass runs."""
    from workers.batching import JobRequest, decode_jobs

    passes = []
    decode = digits.decode

    def counting_decode(codes, condition=None):
        passes.append(codes.shape[0])
        return decode(codes, condition)

    requests = [JobRequest(Condition("class", index=label), n, seed)
                for label, n, seed in [(3, 5, 1), (0, 12, 2), (9, 1, 3), (1, 20, 4)]]  # rows end at 5, 17, 18, 38
    ready: list[tuple[int, int, torch.Tensor]] = []
    digits.decode = counting_decode
    try:
        images = decode_jobs(digits, requests, 8,
                             on_ready=lambda i, x, final: ready.append((i, len(passes), x, final)))
    finally:
        del digits.decode  # back to the class's method
    assert passes == [8] * 5  # 38 rows in passes of 8, the last one padded
    assert [(i, seen, final) for i, seen, _, final in ready] == \
        [(0, 1, False), (1, 3, False), (2, 3, False), (3, 5, True)]  # only the last one has no pass after it
    for i, _seen, handed, _final in ready:
        assert torch.equal(handed, images[i]) and handed.shape[0] == requests[i].n


@pytest.mark.parametrize("threads", [0, 1, 2])
def test_stored_pngs_are_byte_identical_whatever_png_threads(app, monkeypatch, threads):
    """Encoding on writer threads (PNG_THREADS > 0) stores the very bytes the inline path (0) stores. Passes
    of 4 rows: the jobs end in different passes, so all but the last pass's are stored on the threads."""
    import workers.job_images as job_images
    from workers.tasks import generate_images

    encoded_on: list[int] = []
    encode = job_images.encode_pngs

    def recording_encode(*args):
        encoded_on.append(threading.get_ident())
        return encode(*args)

    monkeypatch.setattr(job_images, "encode_pngs", recording_encode)

    def run(png_threads: int) -> list[list[bytes]]:
        app.config.update(PNG_THREADS=png_threads, GENERATE_CHUNK=4)
        encoded_on.clear()
        jobs = [_queued_job(app, **spec) for spec in SPECS]
        with app.app_context():
            assert generate_images.run(jobs[0]) == "succeeded"
            assert [generate_images.run(job_id) for job_id in jobs[1:]] == ["skipped (succeeded)"] * 3
            storage = app.extensions["priorforge_storage"]
            out = []
            for job_id in jobs:
                job = db.session.get(Job, job_id)
                assert job.status == "succeeded" and len(job.images) == job.n
                # the job id is in the PNG's text chunks: compare the pixels and the parameters but the id
                out.append([_without_job_id(storage.get(image.storage_key)) for image in job.images])
        off_the_task = sum(ident != threading.get_ident() for ident in encoded_on)
        # rows end at 1, 6, 9, 10 of passes of 4: the first three jobs are handed to a thread, the last is not
        assert (len(encoded_on), off_the_task) == (4, 3 if png_threads else 0)
        return out

    assert run(threads) == run(0)


def _without_job_id(png: bytes) -> tuple[bytes, dict]:
    with PILImage.open(io.BytesIO(png)) as picture:
        params = dict(picture.text)  # type: ignore[attr-defined]
        pixels = picture.tobytes()
    params.pop("job_id")
    params.pop("priorforge")
    return pixels, params


def test_a_failing_encode_on_a_writer_thread_fails_the_jobs_readably_and_stores_nothing(app, monkeypatch):
    import workers.job_images as job_images
    import workers.tasks as tasks

    app.config.update(PNG_THREADS=1, GENERATE_CHUNK=4)  # the failing job (rows 2-6) is stored on the thread
    jobs = [_queued_job(app, **spec) for spec in SPECS]
    encode = job_images.encode_pngs

    def failing_encode(version, job, request, images):
        if job.id == jobs[1]:
            raise OSError("disk full (simulated)")
        return encode(version, job, request, images)

    monkeypatch.setattr(job_images, "encode_pngs", failing_encode)
    with app.app_context():
        assert tasks.generate_images.run(jobs[0]) == "failed"
        for job_id in jobs:
            job = db.session.get(Job, job_id)
            assert job.status == "failed" and "disk full (simulated)" in job.error, (job.status, job.error)
            assert job.images == []  # no row points at a file: the finish never ran


def test_a_flood_from_several_clients_takes_turns_with_another_clients_job(app):
    """Fair share in a lane: six addresses queue four 16-image jobs each, then another address one 1-image job.
    Tasks run in the messages' order (first in, first out): that job is claimed with the second task's
    micro-batch, not after the whole flood (as it was, first in first out)."""
    from workers.tasks import generate_images

    client = app.test_client()
    flood = []
    for address in [f"10.0.0.{i}" for i in range(1, 7)]:
        for seed in range(4):
            response = client.post("/api/v1/jobs", json={"model": "tiny", "label": "1", "n": 16, "seed": seed},
                                   environ_base={"REMOTE_ADDR": address})
            assert response.status_code == 202, response.get_json()
            flood.append(response.get_json()["id"])
    other = client.post("/api/v1/jobs", json={"model": "tiny", "label": "2", "n": 1},
                        environ_base={"REMOTE_ADDR": "10.0.1.1"}).get_json()["id"]
    task_of: dict[str, int] = {}
    with app.app_context():
        for task, message in enumerate([*flood, other]):
            if generate_images.run(message).startswith("skipped"):
                continue
            db.session.expire_all()
            for job_id in [*flood, other]:
                if job_id not in task_of and db.session.get(Job, job_id).status == "succeeded":
                    task_of[job_id] = task
    assert set(task_of) == {*flood, other}  # every job ran, each once
    before = [job_id for job_id in flood if task_of[job_id] < task_of[other]]
    assert len(before) < len(flood) // 4, (len(before), len(flood))


def test_a_seeds_code_is_the_same_whatever_the_job_around_it(digits):
    """Codes are computed in passes of a fixed size: the code of seed 104 has the same floats as image 0 of a
    1-image job, image 4 of a 5-image job, image 12 of a 13-image job (second pass), and so on; and it is the
    code that drawing it alone gives, up to the rounding of a bigger batch."""
    from generation.sampling import per_image_latents

    three = Condition("class", index=3)
    reference = per_image_latents(digits, 1, three, 104)[0]
    for n, first in [(5, 100), (8, 97), (13, 92), (30, 80), (64, 104)]:
        assert torch.equal(per_image_latents(digits, n, three, first)[104 - first], reference)
    with torch.no_grad():
        alone = digits.sample_latents(1, three, torch.Generator().manual_seed(104))[0]
    assert torch.allclose(alone, reference, atol=1e-5)
