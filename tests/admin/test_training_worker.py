"""Training runs with real worker processes against PostgreSQL and Redis, end to end:

* upload a small data set made here, train a tiny model on it through the API, see it registered (not serving)
  with its evaluation, compare it with the serving version, promote it, generate with it, and find the new
  version recorded on the image;
* SIGKILL the worker mid-run: a new worker resumes from the last checkpoint and finishes;
* cancel a running run: its worker saves a checkpoint, stops, and registers nothing.

Timeouts only guard against hanging; no test asserts a duration.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from app.core.extensions import db
from app.core.tables import ModelVersion, TrainingRun
from tests.admin.conftest import ADMIN, make_zip
from tests.service.conftest import FAST_WORKER, checkpoints, redis_url, start_worker, wait_for  # noqa: F401
from tests.support.faults import InjectedFaults

pytestmark = pytest.mark.integration

TINY = {"base_channels": 4, "hidden_dim": 16, "disc_hidden": 8, "code_disc_hidden": [8], "latent_dim": 8}


def pattern_png(kind: int, i: int) -> bytes:
    """28x28 grey: class 0 is a dark square on light, class 1 a light bar on dark (shifted by i)."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (28, 28), 220 if kind == 0 else 30)
    draw = ImageDraw.Draw(img)
    if kind == 0:
        draw.rectangle([6 + i % 4, 6, 18 + i % 4, 18], fill=20)
    else:
        draw.rectangle([4, 10 + i % 5, 24, 14 + i % 5], fill=235)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def service(tmp_path, pg_url, redis_url):
    """(app, admin API caller, worker config) on PostgreSQL + Redis, with an admin and a token."""
    from app import create_app
    from app.services.accounts import create_user, issue_token
    from app.core.migrate import upgrade

    broker, prefix = redis_url
    config: dict[str, Any] = {
        "SQLALCHEMY_DATABASE_URI": pg_url, "CELERY_BROKER_URL": broker, "BROKER_KEY_PREFIX": prefix,
        "STORAGE_ROOT": str(tmp_path / "images"), "DATASET_ROOT": str(tmp_path / "datasets"),
        "TRAINING_ROOT": str(tmp_path / "trainings"), "TRAINING_PROGRESS_INTERVAL": 0.2, "DEVICE": "cpu",
        "CACHE": str(tmp_path / "cache"), **FAST_WORKER}
    app = create_app({"TESTING": True, **config})
    upgrade(app)
    with app.app_context():
        token = issue_token(create_user(*ADMIN, is_admin=True), "test").token
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}

    def api(method: str, url: str, body: Any = None, **kwargs: Any):
        if body is not None:
            kwargs["json"] = body
        return client.open(url, method=method, headers=headers, **kwargs)

    archive = make_zip({f"{name}/{i:02d}.png": pattern_png(k, i)
                        for k, name in enumerate(("squares", "bars")) for i in range(12)})
    uploaded = api("POST", "/api/v1/admin/datasets", data={"file": (io.BytesIO(archive), "shapes.zip")},
                   content_type="multipart/form-data")
    assert uploaded.status_code == 201, uploaded.get_json()
    assert uploaded.get_json()["classes"] == 2 and uploaded.get_json()["images"] == 24
    yield app, api, config
    app.extensions["celery"].pool.force_close_all()
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def run_row(app, run_id: str) -> TrainingRun:
    with app.app_context():
        db.session.expire_all()
        run = db.session.get(TrainingRun, run_id)
        db.session.expunge(run)
        return run


def wait_run(app, run_id: str, statuses: tuple[str, ...], timeout: float = 300) -> TrainingRun:
    return wait_for(lambda: (lambda r: r if r.status in statuses else None)(run_row(app, run_id)), timeout,
                    f"training run {run_id} to reach {statuses}")


def request(**overrides: Any) -> dict[str, Any]:
    return {"backend": "aae-cg", "dataset": "shapes", "model_name": "shapes", "image_size": 28, "channels": 1,
            "max_steps": 12, "batch_size": 8, "checkpoint_every": 4, "sample_every": 4, "eval_samples": 24,
            "model_options": TINY, **overrides}


def test_upload_train_promote_generate_records_the_new_version(service, start_worker, checkpoints):
    from app.services.model_versions import register_model

    app, api, config = service
    with app.app_context():  # a version already serving under the same name, to compare against
        serving, _ = register_model("shapes", checkpoints["class"])
        serving_id = serving.id
    start_worker(config)
    created = api("POST", "/api/v1/admin/trainings", request())
    assert created.status_code == 202, created.get_json()
    run_id = created.get_json()["id"]
    done = wait_run(app, run_id, ("succeeded", "failed", "canceled"))
    assert done.status == "succeeded", done.error
    assert done.step == 12 and done.attempts == 1 and done.model_version_id is not None

    body = api("GET", f"/api/v1/admin/trainings/{run_id}").get_json()
    assert [row["step"] for row in body["history"]] == list(range(1, 13))
    assert body["losses"] and body["metrics"]["evaluation"]["n_real"] > 0
    assert "label_accuracy" in body["metrics"]["evaluation"]
    version = body["model_version"]
    assert version["name"] == "shapes" and version["version"] == 2 and version["serving"] is False
    folder = Path(done.output_dir)
    assert {"config.json", "model.safetensors", "metrics.json", "samples.png", "history.jsonl"} <= \
        {p.name for p in folder.iterdir()}
    assert sorted(p.name for p in (folder / "samples").iterdir()) == [f"step-{s:07d}.png" for s in (4, 8, 12)]

    comparison = api("GET", version["compare_url"]).get_json()
    assert comparison["candidate"]["version"] == 2 and comparison["serving"]["id"] == serving_id
    assert any(r["metric"] == "evaluation.label_accuracy" for r in comparison["metrics"])

    # nothing changes for clients until the version is promoted
    models = {m["name"]: m for m in api("GET", "/api/v1/models").get_json()["models"]}
    assert models["shapes"]["version"] == 1
    assert api("POST", f"/api/v1/admin/models/{version['id']}/promote").status_code == 200
    models = {m["name"]: m for m in api("GET", "/api/v1/models").get_json()["models"]}
    assert models["shapes"]["version"] == 2 and models["shapes"]["class_names"] == ["bars", "squares"]

    job = api("POST", "/api/v1/jobs", {"model": "shapes", "label": "squares", "n": 2, "seed": 5}).get_json()

    def finished():
        state = api("GET", f"/api/v1/jobs/{job['id']}").get_json()
        return state if state["status"] in ("succeeded", "failed") else None

    state = wait_for(finished, 180, "the generation job")
    assert state["status"] == "succeeded", state["error"]
    assert state["model_version"] == 2 and state["model_version_id"] == version["id"]
    for image in state["images"]:
        assert image["model_version"] == 2 and image["model_version_id"] == version["id"]
        params = api("GET", image["url"]).get_json()["parameters"]
        assert params["model"] == "shapes" and params["model_version"] == 2
    with app.app_context():
        assert db.session.get(ModelVersion, serving_id).serving is False


def test_sigkill_mid_run_then_a_new_worker_resumes_from_the_last_checkpoint(service, start_worker):
    app, api, config = service
    first = start_worker(config, name="first", faults=InjectedFaults(train_step_delay=0.15))
    run_id = api("POST", "/api/v1/admin/trainings",
                 request(max_steps=40, checkpoint_every=5, evaluate=False)).get_json()["id"]
    wait_for(lambda: run_row(app, run_id).step >= 13, 240, "the run to pass step 13")
    first.kill()  # SIGKILL the worker and its pool process mid-run
    folder = Path(run_row(app, run_id).output_dir)
    checkpoint_step = json.loads((folder / "training_state.json").read_text())["progress"]["step"]
    assert checkpoint_step >= 10 and checkpoint_step % 5 == 0

    start_worker(config, name="second")
    done = wait_run(app, run_id, ("succeeded", "failed", "canceled"))
    assert done.status == "succeeded", done.error
    assert done.attempts == 2 and done.step == 40
    assert done.metrics["resumed_from_step"] >= checkpoint_step  # not from scratch
    history = api("GET", f"/api/v1/admin/trainings/{run_id}").get_json()["history"]
    assert [row["step"] for row in history] == list(range(1, 41))  # redone steps count once
    with app.app_context():
        assert db.session.query(ModelVersion).filter_by(name="shapes").count() == 1


def test_cancel_a_running_run_keeps_its_checkpoint_and_registers_nothing(service, start_worker):
    app, api, config = service
    start_worker(config, faults=InjectedFaults(train_step_delay=0.15))
    run_id = api("POST", "/api/v1/admin/trainings", request(max_steps=200, evaluate=False)).get_json()["id"]
    wait_for(lambda: run_row(app, run_id).step >= 3, 240, "the run to start training")
    assert api("POST", f"/api/v1/admin/trainings/{run_id}/cancel").status_code == 200
    done = wait_run(app, run_id, ("succeeded", "failed", "canceled"))
    assert done.status == "canceled" and done.step < 200 and done.model_version_id is None
    assert (Path(done.output_dir) / "training_state.json").is_file()
    with app.app_context():
        assert db.session.query(ModelVersion).count() == 0


def test_a_job_running_during_a_promotion_finishes_on_its_version(service, start_worker, checkpoints, tmp_path):
    from app.services.model_versions import register_model
    from tests.service.conftest import make_checkpoint

    app, api, config = service
    with app.app_context():
        v1, _ = register_model("tiny", checkpoints["class"])
        v2, _ = register_model("tiny", make_checkpoint(tmp_path / "tiny-v2", "class"), serve_first=False)
        v1_id, v2_id = v1.id, v2.id
    start_worker(config, faults=InjectedFaults(task_delay=3))  # every job takes a few seconds: promote while one runs

    def state(job_id: str) -> dict:
        return api("GET", f"/api/v1/jobs/{job_id}").get_json()

    first = api("POST", "/api/v1/jobs", {"model": "tiny", "label": "1", "n": 2, "seed": 3}).get_json()["id"]
    wait_for(lambda: state(first)["status"] == "running", 120, "the first job to run")
    assert api("POST", f"/api/v1/admin/models/{v2_id}/promote").status_code == 200
    second = api("POST", "/api/v1/jobs", {"model": "tiny", "label": "1", "n": 2, "seed": 3}).get_json()["id"]
    done = {j: wait_for(lambda j=j: (lambda s: s if s["status"] in ("succeeded", "failed") else None)(state(j)),
                        180, f"job {j}") for j in (first, second)}
    assert [done[j]["status"] for j in (first, second)] == ["succeeded", "succeeded"]
    assert {i["model_version_id"] for i in done[first]["images"]} == {v1_id}  # started on v1, finished on v1
    assert {i["model_version_id"] for i in done[second]["images"]} == {v2_id}
