"""Retraining on an uploaded captioned data set, through the admin API and pages with the ``train_model`` task run
in-process: grey images stay 1-channel (model, sample grid, generated PNGs), the run is evaluated on the upload's
held-out split (a classifier trained on the upload where it has labels; the caption match rate where it has
none), the run page and the comparison say so (or why not), a labelled upload trains class-conditional by
default, and no server path reaches the public API."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from app.core.extensions import db
from app.core.tables import TrainingRun
from tests.admin.conftest import ADMIN, make_zip, png, sign_in, token_for

TINY = {"base_channels": 4, "hidden_dim": 16, "disc_hidden": 8, "code_disc_hidden": [8], "latent_dim": 8,
        "noise_dim": 4, "text_dim": 8}


@pytest.fixture
def api(admin_app, client):
    admin_app.config["TRAINING_EVAL_CLASSIFIER_STEPS"] = 5  # a tiny evaluation classifier
    headers = {"Authorization": f"Bearer {token_for(admin_app, ADMIN[0])}"}

    def call(method: str, url: str, body=None, **kwargs):
        if body is not None:
            kwargs["json"] = body
        return client.open(url, method=method, headers=headers, **kwargs)

    return call


def upload(api, name: str, *, labels: bool = True, split: str | None = None, count: int = 30) -> None:
    """``count`` grey 16x16 squares, dark or light in runs of 10 (so that every 10th image, the held-out split,
    has both), each with two captions (and its tone as a label)."""
    members, lines = {}, []
    for i in range(count):
        tone = "dark" if (i // 10) % 2 else "light"
        members[f"img/{i:02d}.png"] = png(16, 30 + i if tone == "dark" else 220 - i)
        line = {"file": f"img/{i:02d}.png", "captions": [f"a {tone} square", f"something {tone}"]}
        if labels:
            line["label"] = tone
        if split:
            line["split"] = split
        lines.append(line)
    members["captions.jsonl"] = "\n".join(json.dumps(line) for line in lines).encode()
    response = api("POST", "/api/v1/admin/datasets", data={"file": (io.BytesIO(make_zip(members)), f"{name}.zip")},
                   content_type="multipart/form-data")
    assert response.status_code == 201, response.get_json()


def train(admin_app, api, **request) -> dict:
    from workers.training_tasks import train_model

    body = {"backend": "aae-cg", "max_steps": 3, "batch_size": 4, "model_options": TINY, "eval_samples": 10,
            "sample_every": 3, **request}
    response = api("POST", "/api/v1/admin/trainings", body)
    assert response.status_code == 202, response.get_json()
    with admin_app.app_context():
        assert train_model.run(response.get_json()["id"]) == "succeeded"
    return api("GET", response.get_json()["url"]).get_json()


def png_mode(client, url: str) -> str:
    response = client.get(url)
    data = response.data
    response.close()
    with Image.open(io.BytesIO(data)) as img:
        return img.mode


def test_a_grey_captioned_upload_trains_evaluates_compares_and_generates_in_one_channel(admin_app, api, client,
                                                                                        tmp_path):
    from workers.tasks import generate_images

    upload(api, "squares")
    first = train(admin_app, api, dataset="squares", condition="text")
    assert first["settings"]["channels"] == 1  # grey images: 1 channel unless told
    evaluation = first["metrics"]["evaluation"]
    assert first["evaluation"]["state"] == "evaluated" and "held-out split of 'squares' (3 images)" in \
        first["evaluation"]["evaluated_on"]
    for key in ("caption_class_accuracy", "caption_match_rate", "feature_fid", "reconstruction_mse"):
        assert isinstance(evaluation[key], float), (key, evaluation)
    assert evaluation["classifier"]["classes"] == ["dark", "light"] and "skipped" not in evaluation
    assert "text_alignment_note" not in evaluation

    # the checkpoint, the version and the live grid are 1-channel
    version = api("GET", "/api/v1/admin/models").get_json()["versions"][0]
    assert version["image_shape"] == [1, 16, 16] and version["evaluation"]["state"] == "evaluated"
    sign_in(client, *ADMIN)
    assert png_mode(client, f"/admin/trainings/{first['id']}/sample.png") == "L"
    page = client.get(f"/admin/trainings/{first['id']}").get_data(as_text=True)
    assert 'id="run-evaluation" data-state="evaluated"' in page and "held-out split of &#39;squares&#39;" in page
    assert "caption_class_accuracy" in page
    # the live grid's rows are prompted with captions of both classes (the upload is sorted by tone), labelled
    assert first["sample_prompts"][:2] == ["a dark square", "a light square"] and len(first["sample_prompts"]) == 8
    assert '<ol id="sample-prompts"><li>a dark square</li><li>a light square</li>' in page

    # a second run: the comparison has the evaluation figures of both and says which is better
    api("POST", f"/api/v1/admin/models/{first['model_version']['id']}/promote")
    second = train(admin_app, api, dataset="squares", condition="text", max_steps=4)
    comparison = api("GET", f"/api/v1/admin/models/{second['model_version']['id']}/compare").get_json()
    rows = {r["metric"]: r for r in comparison["metrics"]}
    for key in ("evaluation.caption_class_accuracy", "evaluation.caption_match_rate", "evaluation.feature_fid"):
        assert rows[key]["candidate"] is not None and rows[key]["serving"] is not None
        assert rows[key]["better"] in ("candidate", "serving", "same"), rows[key]
    assert comparison["candidate"]["evaluation"]["state"] == comparison["serving"]["evaluation"]["state"] == \
        "evaluated"
    version_page = client.get(second["model_version"]["page_url"]).get_data(as_text=True)
    assert 'id="evaluation-candidate" data-state="evaluated"' in version_page
    assert 'id="evaluation-serving" data-state="evaluated"' in version_page

    # a prompt on the promoted version gives grey PNGs
    job = client.post("/api/v1/jobs", json={"model": "squares-aae-cg", "prompt": "a dark square", "n": 2}).get_json()
    with admin_app.app_context():
        assert generate_images.run(job["id"]) == "succeeded"
    images = client.get(f"/api/v1/jobs/{job['id']}").get_json()["images"]
    assert [png_mode(client, i["png_url"]) for i in images] == ["L", "L"]

    # nothing of the server's folders in the public list of models
    public = client.get("/api/v1/models").get_data(as_text=True)
    assert str(tmp_path) not in public and '"path"' not in public


def test_a_labelled_captioned_upload_trains_class_conditional_by_default(admin_app, api):
    upload(api, "labelled")
    run = train(admin_app, api, dataset="labelled")
    assert run["condition"] == "class" and run["settings"]["channels"] == 1
    assert isinstance(run["metrics"]["evaluation"]["label_accuracy"], float)
    unlabelled = api("POST", "/api/v1/admin/trainings", {"backend": "aae-cg", "dataset": "labelled",
                                                          "condition": "none", "max_steps": 1, "batch_size": 4}).get_json()
    assert unlabelled["condition"] == "none"  # still the admin's choice


def test_an_unlabelled_upload_is_evaluated_without_a_classifier_and_says_what_is_missing(admin_app, api, client):
    upload(api, "plain", labels=False)
    run = train(admin_app, api, dataset="plain", condition="text")
    evaluation = run["metrics"]["evaluation"]
    assert run["evaluation"]["state"] == "evaluated"
    assert isinstance(evaluation["caption_match_rate"], float) and "feature_fid" not in evaluation
    assert "no labels" in run["evaluation"]["notes"][0]
    sign_in(client, *ADMIN)
    page = client.get(f"/admin/trainings/{run['id']}").get_data(as_text=True)
    assert 'id="run-evaluation-notes"' in page and "no labels" in page


def test_a_run_that_cannot_be_evaluated_says_why_on_its_page_and_in_the_api_without_server_paths(
        admin_app, api, client, tmp_path):
    upload(api, "alltrain", split="train")  # no held-out images at all
    run = train(admin_app, api, dataset="alltrain", condition="text")
    assert run["status"] == "succeeded" and run["evaluation"]["state"] == "skipped"
    reason = run["evaluation"]["reason"]
    assert "no images in the 'test' split" in reason and str(tmp_path) not in json.dumps(run["metrics"])
    sign_in(client, *ADMIN)
    page = client.get(f"/admin/trainings/{run['id']}").get_data(as_text=True)
    assert 'data-state="skipped"' in page and "Not evaluated:" in page
    version_page = client.get(run["model_version"]["page_url"]).get_data(as_text=True)
    assert 'id="evaluation-candidate" data-state="skipped"' in version_page and "no images in the" in version_page
    api("POST", f"/api/v1/admin/models/{run['model_version']['id']}/promote")
    public = client.get("/api/v1/models").get_data(as_text=True)
    assert str(tmp_path) not in public and "alltrain" in public


def test_the_stored_settings_keep_the_upload_folder_for_the_worker_only(admin_app, api):
    upload(api, "kept")
    body = api("POST", "/api/v1/admin/trainings", {"backend": "aae-cg", "dataset": "kept", "max_steps": 1,
                                                   "batch_size": 4}).get_json()
    assert "source" not in body["settings"]
    with admin_app.app_context():
        assert db.session.get(TrainingRun, body["id"]).settings["source"]["loader"].startswith("captions:")
