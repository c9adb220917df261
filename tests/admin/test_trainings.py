"""Training runs and promotion without a worker: request validation (each bad request is a 422 naming its
field, with no row and no message left), the form, cancel, the reconciliation of abandoned runs, the loss
history, and compare / promote / roll back. The worker side is in test_training_worker.py."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.core.extensions import db
from app.core.tables import Job, ModelVersion, TrainingRun, utcnow
from tests.admin.conftest import ADMIN, csrf_token, make_zip, png, sign_in, token_for
from tests.service.conftest import broker_messages, broker_payloads, checkpoints, make_checkpoint  # noqa: F401

GOOD = {"backend": "aae-cg", "dataset": "digits", "max_steps": 20, "batch_size": 16,
        "model_options": {"base_channels": 4, "hidden_dim": 16}}


@pytest.fixture
def api(admin_app, client):
    headers = {"Authorization": f"Bearer {token_for(admin_app, ADMIN[0])}"}

    def call(method: str, url: str, body=None):
        return client.open(url, method=method, json=body, headers=headers)

    return call


def run_count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(TrainingRun))


def test_a_valid_request_is_a_queued_row_and_one_message_on_the_train_queue(admin_app, api):
    response = api("POST", "/api/v1/admin/trainings", GOOD)
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert response.headers["Location"] == body["url"]
    assert body["status"] == "queued" and body["condition"] == "class"  # digits has classes
    assert body["model_name"] == "digits-aae-cg" and body["settings"]["max_steps"] == 20
    assert body["settings"]["hparams"] == {} and body["settings"]["model_options"]["base_channels"] == 4
    [message] = broker_payloads(admin_app)
    assert message["headers"]["task"] == "workers.training_tasks.train_model"
    assert message["properties"]["delivery_info"]["routing_key"] == "train"
    assert json.loads(__import__("base64").b64decode(message["body"]))[0] == [body["id"]]
    with admin_app.app_context():
        run = db.session.get(TrainingRun, body["id"])
        assert run.output_dir.endswith(run.id) and run.created_by_id is not None
    listed = api("GET", "/api/v1/admin/trainings").get_json()
    assert [r["id"] for r in listed["trainings"]] == [body["id"]]
    assert api("GET", body["url"]).get_json()["history"] == []
    # the answers have the declared shape (the document's TrainingRun is generated from it)
    from app.api.responses import TrainingRunList, TrainingRunOut

    TrainingRunOut.model_validate(body)
    TrainingRunList.model_validate(listed)
    TrainingRunOut.model_validate(api("GET", body["url"]).get_json())


def test_a_run_and_its_message_are_one_transaction_and_the_message_waits_for_the_broker(admin_app, api,
                                                                                        monkeypatch):
    """Training runs go through the same transactional outbox as jobs: a run is never stored without its message,
    and a broker that is down delays the message, never loses it."""
    from app.core.tables import OutboxMessage
    from app.services import outbox

    def broker_down(*args, **kwargs):
        raise ConnectionRefusedError("the broker is down")

    monkeypatch.setattr("app.services.outbox.publish", broker_down)
    monkeypatch.setattr(outbox.Relay, "kick", lambda self: None)
    response = api("POST", "/api/v1/admin/trainings", GOOD)
    assert response.status_code == 202, response.get_json()
    run_id = response.get_json()["id"]
    with admin_app.app_context():
        assert [(m.task, m.queue, m.ref_id) for m in db.session.scalars(select(OutboxMessage))] == \
            [("workers.training_tasks.train_model", "train", run_id)]
    assert broker_messages(admin_app) == 0
    monkeypatch.undo()
    with admin_app.app_context():  # the broker is back: the relay's pass publishes it
        assert outbox.publish_pending(kick=False) == 1 and outbox.pending_count() == 0
    [message] = broker_payloads(admin_app)
    assert message["properties"]["delivery_info"]["routing_key"] == "train"


@pytest.mark.parametrize("change, field, words", [
    ({"backend": "gan"}, "backend", "backend must be one of"),
    ({"backend": None}, "backend", "backend must be one of"),
    ({"dataset": "nope"}, "dataset", "unknown data set 'nope'"),
    ({"dataset": "mnist"}, "dataset", "not available"),
    ({"condition": "text"}, "condition", "captioned data set"),
    ({"backend": "pga", "condition": "cluster", "model_options": {}}, "condition", "supports the conditions"),
    ({"hparams": {"nope": 1}}, "hparams.nope", "no hyper-parameter 'nope'"),
    ({"hparams": {"beta1": "high"}}, "hparams.beta1", "must be a number"),
    ({"hparams": [1]}, "hparams", "must be an object"),
    ({"model_options": {"image_shape": [1, 8, 8]}}, "model_options.image_shape", "no model option"),
    ({"model_options": {"latent_dim": 2.5}}, "model_options.latent_dim", "must be an integer"),
    ({"model_options": {"code_disc_hidden": "wide"}}, "model_options.code_disc_hidden", "list of positive"),
    ({"max_steps": 0}, "max_steps", "from 1 to"),
    ({"max_steps": True}, "max_steps", "integer"),
    ({"batch_size": 10**6}, "batch_size", "from 1 to"),
    ({"image_size": 30}, "image_size", "must be one of"),
    ({"lr": -1}, "lr", "above 0"),
    ({"evaluate": "yes"}, "evaluate", "true or false"),
    ({"model_name": "a/b"}, "model_name", "without '/'"),
    ({"epochs": 3}, "epochs", "unknown field"),
])
def test_bad_requests_are_422_naming_the_field_and_store_nothing(admin_app, api, change, field, words):
    response = api("POST", "/api/v1/admin/trainings", {**GOOD, **change})
    assert response.status_code == 422, response.get_json()
    body = response.get_json()
    assert body["field"] == field and words in body["error"], body
    assert run_count(admin_app) == 0 and broker_messages(admin_app) == 0


def test_uploaded_data_sets_can_be_trained_on_and_batch_size_is_checked_against_them(admin_app, client, api):
    headers = {"Authorization": f"Bearer {token_for(admin_app, ADMIN[0])}"}
    archive = make_zip({f"{c}/{i}.png": png(12, 40 * i) for c in ("cats", "dogs") for i in range(5)})
    response = client.post("/api/v1/admin/datasets", data={"file": (io.BytesIO(archive), "pets.zip")},
                           headers=headers, content_type="multipart/form-data")
    assert response.status_code == 201
    too_big = api("POST", "/api/v1/admin/trainings", {**GOOD, "dataset": "pets", "batch_size": 11})
    assert too_big.status_code == 422 and too_big.get_json()["field"] == "batch_size"
    ok = api("POST", "/api/v1/admin/trainings", {**GOOD, "dataset": "pets", "batch_size": 4, "image_size": 32})
    assert ok.status_code == 202
    assert ok.get_json()["condition"] == "class"
    assert (ok.get_json()["settings"]["image_size"], ok.get_json()["settings"]["channels"]) == (32, 1)
    # unless told, the size and channels come from the images: 12x12 grey -> 16, 1 channel
    defaults = api("POST", "/api/v1/admin/trainings", {**GOOD, "dataset": "pets", "batch_size": 4}).get_json()
    assert (defaults["settings"]["image_size"], defaults["settings"]["channels"]) == (16, 1)
    with admin_app.app_context():
        source = db.session.get(TrainingRun, ok.get_json()["id"]).settings["source"]
    assert source["loader"] == "imagefolder" and source["data_root"].endswith("pets")


def test_cancel_a_queued_run_then_a_second_cancel_is_409(admin_app, api):
    run = api("POST", "/api/v1/admin/trainings", GOOD).get_json()
    canceled = api("POST", f"{run['url']}/cancel")
    assert canceled.status_code == 200 and canceled.get_json()["status"] == "canceled"
    again = api("POST", f"{run['url']}/cancel")
    assert again.status_code == 409 and again.get_json()["run_status"] == "canceled"
    assert api("GET", "/api/v1/admin/trainings/nope").status_code == 404


def test_cancel_a_running_run_asks_its_worker_to_stop(admin_app, api):
    run = api("POST", "/api/v1/admin/trainings", GOOD).get_json()
    with admin_app.app_context():
        db.session.get(TrainingRun, run["id"]).status = "running"
        db.session.commit()
    body = api("POST", f"{run['url']}/cancel").get_json()
    assert body["status"] == "running" and body["cancel_requested"] is True


def test_the_form_starts_a_run_and_a_bad_form_shows_the_error(admin_app, client):
    sign_in(client, *ADMIN)
    page = client.get("/admin/trainings").get_data(as_text=True)
    assert 'id="training-form"' in page and '<option value="digits"' in page
    token = csrf_token(client, "/admin/trainings")
    bad = client.post("/admin/trainings", data={"backend": "aae-cg", "dataset": "digits", "max_steps": "ten",
                                                "csrf_token": token})
    assert bad.status_code == 422 and "max_steps must be a number" in bad.get_data(as_text=True)
    bad_json = client.post("/admin/trainings", data={"backend": "aae-cg", "dataset": "digits",
                                                     "hparams": "{beta1: 1}", "csrf_token": token})
    assert bad_json.status_code == 422 and "hparams must be a JSON object" in bad_json.get_data(as_text=True)
    assert run_count(admin_app) == 0
    no_csrf = client.post("/admin/trainings", data={"backend": "aae-cg", "dataset": "digits"})
    assert no_csrf.status_code == 400 and run_count(admin_app) == 0
    good = client.post("/admin/trainings", data={
        "backend": "aae-cg", "dataset": "digits", "max_steps": "20", "batch_size": "16", "evaluate": "on",
        "model_options": '{"base_channels": 4}', "csrf_token": token})
    assert good.status_code == 303
    with admin_app.app_context():
        run = db.session.scalars(select(TrainingRun)).one()
        assert run.settings["evaluate"] is True and run.settings["model_options"] == {"base_channels": 4}
    page = client.get(good.headers["Location"]).get_data(as_text=True)
    assert 'id="run-status"' in page and "queued" in page and 'id="loss-plot"' in page
    live = client.get(f"/admin/trainings/{run.id}.json").get_json()
    assert live["id"] == run.id and live["status"] == "queued"
    assert client.get(f"/admin/trainings/{run.id}/sample.png").status_code == 404


def test_reconciliation_requeues_fails_or_cancels_abandoned_runs(admin_app, api):
    from app.services.reconcile import reconcile

    ids = [api("POST", "/api/v1/admin/trainings", GOOD).get_json()["id"] for _ in range(4)]
    stale = utcnow() - timedelta(hours=1)
    with admin_app.app_context():
        for run_id, attempts, cancel in zip(ids[:3], (1, 3, 1), (False, False, True)):
            run = db.session.get(TrainingRun, run_id)
            run.status, run.heartbeat_at, run.attempts, run.cancel_requested = "running", stale, attempts, cancel
        db.session.get(TrainingRun, ids[3]).enqueued_at = stale  # its message may be lost
        db.session.commit()
        before = broker_messages(admin_app)
        counts = reconcile()
        assert (counts["requeued_runs"], counts["failed_runs"], counts["resent_runs"]) == (1, 1, 1)
        assert broker_messages(admin_app) == before + 2
        statuses = [db.session.get(TrainingRun, i).status for i in ids]
        assert statuses == ["queued", "failed", "canceled", "queued"]
        assert "abandoned by its worker 3 times" in db.session.get(TrainingRun, ids[1]).error
        assert not any(v for k, v in reconcile().items() if k.endswith("runs"))


def test_history_counts_a_redone_step_once_and_skips_a_cut_line(admin_app, api, tmp_path):
    from app.services.trainings import read_history

    run_id = api("POST", "/api/v1/admin/trainings", GOOD).get_json()["id"]
    with admin_app.app_context():
        run = db.session.get(TrainingRun, run_id)
        folder = tmp_path / "run"
        folder.mkdir()
        run.output_dir = str(folder)
        lines = [{"step": s, "loss": float(s)} for s in (1, 2, 3)] + [{"step": 3, "loss": 30.0}]
        (folder / "history.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + '\n{"step": 4, "lo')
        assert read_history(run) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}, {"step": 3, "loss": 30.0}]
        (folder / "history.jsonl").write_text("".join(json.dumps({"step": s, "l": 0.0}) + "\n" for s in range(1, 1001)))
        thinned = read_history(run, max_points=100)
        assert len(thinned) <= 101 and thinned[0]["step"] == 1 and thinned[-1]["step"] == 1000


# -- compare, promote, roll back -------------------------------------------------------------------------
@pytest.fixture
def two_versions(admin_app, checkpoints, tmp_path):
    """``tiny`` v1 (serving) and v2 (registered, not serving), with different metrics."""
    from app.services.model_versions import register_model

    second = make_checkpoint(tmp_path / "tiny-v2", "class")
    (checkpoints["class"] / "metrics.json").write_text(json.dumps({"evaluation": {"feature_fid": 9.0,
                                                                                   "label_accuracy": 0.5}}))
    (second / "metrics.json").write_text(json.dumps({"evaluation": {"feature_fid": 4.0, "label_accuracy": 0.9},
                                                     "steps": 100}))
    with admin_app.app_context():
        v1, _ = register_model("tiny", checkpoints["class"])
        v2, _ = register_model("tiny", second, serve_first=False)
        (checkpoints["class"] / "metrics.json").unlink()
        return v1.id, v2.id


def test_compare_shows_both_versions_side_by_side(admin_app, api, two_versions):
    v1, v2 = two_versions
    body = api("GET", f"/api/v1/admin/models/{v2}/compare").get_json()
    assert body["candidate"]["version"] == 2 and body["serving"]["version"] == 1
    rows = {r["metric"]: r for r in body["metrics"]}
    assert rows["evaluation.feature_fid"] == {"metric": "evaluation.feature_fid", "candidate": 4.0,
                                              "serving": 9.0, "better": "candidate"}
    assert rows["evaluation.label_accuracy"]["better"] == "candidate"
    assert rows["steps"]["serving"] is None
    assert api("GET", "/api/v1/admin/models/999/compare").status_code == 404
    versions = api("GET", "/api/v1/admin/models").get_json()["versions"]
    assert [(v["version"], v["serving"]) for v in versions] == [(2, False), (1, True)]


def test_promote_then_roll_back_new_jobs_follow_and_old_jobs_keep_their_version(admin_app, api, client,
                                                                                  two_versions):
    v1, v2 = two_versions
    before = client.post("/api/v1/jobs", json={"model": "tiny", "label": "3"}).get_json()["id"]
    promoted = api("POST", f"/api/v1/admin/models/{v2}/promote")
    assert promoted.status_code == 200 and promoted.get_json()["serving"] is True
    after = client.post("/api/v1/jobs", json={"model": "tiny", "label": "3"}).get_json()["id"]
    listed = client.get("/api/v1/models").get_json()["models"]
    assert [(m["name"], m["version"]) for m in listed] == [("tiny", 2)]
    api("POST", f"/api/v1/admin/models/{v1}/promote")  # roll back
    last = client.post("/api/v1/jobs", json={"model": "tiny", "label": "3"}).get_json()["id"]
    with admin_app.app_context():
        assert [db.session.get(Job, j).model_version_id for j in (before, after, last)] == [v1, v2, v1]
        assert db.session.scalar(select(func.count()).where(ModelVersion.serving.is_(True))) == 1
    assert client.get(f"/api/v1/jobs/{after}").get_json()["model_version"] == 2
    assert api("POST", "/api/v1/admin/models/999/promote").status_code == 404


def test_the_version_pages_compare_and_promote_with_a_form(admin_app, client, two_versions):
    v1, v2 = two_versions
    sign_in(client, *ADMIN)
    listing = client.get("/admin/models").get_data(as_text=True)
    assert f'/admin/models/{v2}"' in listing and "serving" in listing
    page = client.get(f"/admin/models/{v2}").get_data(as_text=True)
    assert 'id="comparison"' in page and "Promote v2" in page and "feature_fid" in page
    token = csrf_token(client, f"/admin/models/{v2}")
    assert client.post(f"/admin/models/{v2}/promote").status_code == 400  # no CSRF token
    assert client.post(f"/admin/models/{v2}/promote", data={"csrf_token": token}).status_code == 303
    page = client.get(f"/admin/models/{v2}").get_data(as_text=True)
    assert 'id="serving-badge"' in page
    assert "Roll back to v1" in client.get(f"/admin/models/{v1}").get_data(as_text=True)


def test_a_null_field_is_the_field_left_out(admin_app, api):
    """An explicit null takes the default, as in a job request."""
    response = api("POST", "/api/v1/admin/trainings", {**GOOD, "max_steps": None, "seed": None, "evaluate": None})
    assert response.status_code == 202, response.get_json()
    settings = response.get_json()["settings"]
    assert (settings["max_steps"], settings["seed"], settings["evaluate"]) == (2000, 0, True)
