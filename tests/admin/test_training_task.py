"""The ``train_model`` task run in-process (no worker process): text-to-image training on an uploaded
captioned data set, from the upload to a prompt-conditioned job on the promoted version; and the task's
refusals (a run it does not own, a data set that went missing)."""

from __future__ import annotations

import io
import json
import shutil

import pytest

from app.core.extensions import db
from app.core.tables import Job, ModelVersion, TrainingRun
from tests.admin.conftest import ADMIN, make_zip, png, token_for

TINY = {"base_channels": 4, "hidden_dim": 16, "disc_hidden": 8, "code_disc_hidden": [8], "latent_dim": 8,
        "noise_dim": 4, "text_dim": 8}


@pytest.fixture
def api(admin_app, client):
    headers = {"Authorization": f"Bearer {token_for(admin_app, ADMIN[0])}"}

    def call(method: str, url: str, body=None, **kwargs):
        if body is not None:
            kwargs["json"] = body
        return client.open(url, method=method, headers=headers, **kwargs)

    return call


def upload_captions(api) -> None:
    shades = {"dark": 30, "light": 220}
    members, lines = {}, []
    for i in range(16):
        tone = "dark" if i % 2 else "light"
        members[f"img/{i:02d}.png"] = png(16, shades[tone] + i)
        lines.append({"file": f"img/{i:02d}.png", "captions": [f"a {tone} square", f"something {tone}"]})
    members["captions.jsonl"] = "\n".join(json.dumps(line) for line in lines).encode()
    response = api("POST", "/api/v1/admin/datasets", data={"file": (io.BytesIO(make_zip(members)), "tones.zip")},
                   content_type="multipart/form-data")
    assert response.status_code == 201, response.get_json()
    # the answers have the declared shape (the document's Dataset and DatasetList are generated from it)
    from app.api.responses import DatasetList, DatasetOut

    stored = DatasetOut.model_validate(response.get_json())
    assert (stored.images, stored.captions) == (16, 32)
    assert DatasetOut.model_validate(api("GET", "/api/v1/admin/datasets/tones").get_json()).name == "tones"
    listed = DatasetList.model_validate(api("GET", "/api/v1/admin/datasets").get_json())
    assert [d.name for d in listed.datasets] == ["tones"] and listed.builtin


def run_task(app, run_id: str) -> str:
    from workers.training_tasks import train_model

    with app.app_context():
        return train_model.run(run_id)


def test_text_to_image_training_on_an_uploaded_captioned_set(admin_app, api, client):
    from app.api.responses import TrainingRunOut, VersionComparison, VersionList, VersionOut
    from workers.tasks import generate_images

    upload_captions(api)
    run = api("POST", "/api/v1/admin/trainings", {
        "backend": "aae-cg", "dataset": "tones", "condition": "text", "image_size": 16, "channels": 1,
        "max_steps": 3, "batch_size": 4, "model_options": TINY, "evaluate": True, "eval_samples": 10}).get_json()
    assert run["condition"] == "text"
    assert run_task(admin_app, run["id"]) == "succeeded"
    body = api("GET", run["url"]).get_json()
    assert body["status"] == "succeeded" and body["step"] == 3
    TrainingRunOut.model_validate(body)  # a finished run, with its history and version: the declared shape
    # no labels, so no classifier: evaluated on the held-out split without one, and the run says what is missing
    assert body["evaluation"]["state"] == "evaluated" and "no labels" in body["evaluation"]["notes"][0]
    version = body["model_version"]
    compared = VersionComparison.model_validate(api("GET", f"/api/v1/admin/models/{version['id']}/compare").get_json())
    assert compared.candidate.id == version["id"] and compared.serving is None  # nothing of that name served yet
    promoted = api("POST", f"/api/v1/admin/models/{version['id']}/promote")
    assert promoted.status_code == 200 and VersionOut.model_validate(promoted.get_json()).serving
    listed = VersionList.model_validate(api("GET", "/api/v1/admin/models").get_json())
    assert version["id"] in {v.id for v in listed.versions}

    job = client.post("/api/v1/jobs", json={"model": "tones-aae-cg", "prompt": "a dark square", "n": 2}).get_json()
    assert "id" in job, job
    with admin_app.app_context():
        assert generate_images.run(job["id"]) == "succeeded"
    state = client.get(f"/api/v1/jobs/{job['id']}").get_json()
    assert state["status"] == "succeeded" and state["model_version_id"] == version["id"]
    assert [image["model_version"] for image in state["images"]] == [1, 1]
    with admin_app.app_context():
        assert db.session.get(ModelVersion, version["id"]).condition == "text"


def test_a_second_delivery_of_a_claimed_run_does_nothing(admin_app, api):
    run = api("POST", "/api/v1/admin/trainings", {"backend": "aae-cg", "dataset": "digits", "max_steps": 1,
                                                  "model_options": TINY | {"text_dim": 200}}).get_json()
    with admin_app.app_context():
        row = db.session.get(TrainingRun, run["id"])
        row.status, row.claim_token = "running", "someone-else"
        row.heartbeat_at = __import__("app.core.tables", fromlist=["utcnow"]).utcnow()
        db.session.commit()
    assert run_task(admin_app, run["id"]) == "skipped (running)"
    assert run_task(admin_app, "no-such-run") == "missing"
    with admin_app.app_context():
        row = db.session.get(TrainingRun, run["id"])
        assert (row.attempts, row.claim_token, row.step) == (0, "someone-else", 0)


def test_a_data_set_that_went_missing_fails_the_run_with_a_readable_error(admin_app, api):
    upload_captions(api)
    run = api("POST", "/api/v1/admin/trainings", {"backend": "aae-cg", "dataset": "tones", "condition": "text",
                                                  "max_steps": 2, "batch_size": 4, "model_options": TINY}).get_json()
    with admin_app.app_context():
        shutil.rmtree(db.session.get(TrainingRun, run["id"]).settings["source"]["loader"].removeprefix("captions:"))
    assert run_task(admin_app, run["id"]) == "failed"
    body = api("GET", run["url"]).get_json()
    assert body["status"] == "failed" and body["model_version"] is None
    assert "DatasetError" in body["error"] and "tones" in body["error"]
    with admin_app.app_context():
        assert db.session.query(ModelVersion).count() == 0 and db.session.query(Job).count() == 0


def test_the_time_left_follows_the_step_rate_or_the_cpu_budget_whichever_ends_first():
    from workers.training_tasks import estimate_seconds_left

    start = (10, 5.0, 4.0)  # step, wall seconds, CPU seconds at this attempt's first progress write
    assert estimate_seconds_left(start, (10, 5.0, 4.0), 100, None) is None  # no rate yet
    assert estimate_seconds_left(start, (20, 15.0, 9.0), 100, None) == pytest.approx(80.0)  # 1 s a step
    # CPU budget of 29 s: 20 s of CPU left at 2 wall seconds per CPU second -> 40 s, sooner than 80 s
    assert estimate_seconds_left(start, (20, 15.0, 9.0), 100, 29.0) == pytest.approx(40.0)
    assert estimate_seconds_left(start, (20, 15.0, 9.0), 100, 8.0) == 0.0  # budget spent
