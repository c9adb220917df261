"""A training run's page while it runs and after: the time left from the recent step rate, the evaluation's
stage and how far it is, an elapsed time that keeps moving through the evaluation, and the metrics as a
readable table (the page used to estimate from the whole attempt, stand still for the evaluation's minutes, and
show the metrics as raw JSON with ``\\u00e9`` escapes)."""

from __future__ import annotations

import threading

import pytest

from app.core.extensions import db
from app.core.tables import TrainingRun
from tests.admin.conftest import ADMIN, sign_in, token_for

TINY = {"base_channels": 4, "hidden_dim": 16, "disc_hidden": 8, "code_disc_hidden": [8], "latent_dim": 8}


def test_the_estimate_follows_the_recent_step_rate_not_the_attempts_average():
    from workers.training_progress import StepRate

    rate = StepRate(window=60.0)
    for second in range(0, 121):  # 4 steps a second for two minutes...
        rate.add(4 * second, float(second), float(second))
    for second in range(121, 241):  # ...then 1 a second
        rate.add(480 + second - 120, float(second), float(second))
    assert rate.steps_per_second() == pytest.approx(1.0)  # the last minute's rate, not the average (2.5)
    assert rate.seconds_left(1000, None) == pytest.approx(1000 - 600)
    assert rate.describe() == {"steps_per_second": 1.0, "over_steps": 60, "over_seconds": 60.0}
    # a CPU budget that ends sooner wins: 30 CPU seconds left at 1 wall second per CPU second
    assert rate.seconds_left(1000, 270.0) == pytest.approx(30.0)
    assert StepRate().seconds_left(10, None) is None  # no rate before two points


def test_the_evaluation_reports_its_stage_the_time_left_in_it_and_the_stages_done():
    from workers.training_progress import EvaluationProgress

    now = [100.0]
    tracker = EvaluationProgress(clock=lambda: now[0])
    assert tracker.update("evaluation classifier", 0, 1, "classifiers")
    now[0] += 0.5
    assert tracker.update("sampling", 0, 1000, "images")
    now[0] += 10.0
    assert not tracker.update("sampling", 250, 1000, "images")
    state = tracker.as_dict()
    assert state["stage"] == "sampling" and state["fraction"] == 0.25 and state["unit"] == "images"
    assert state["stage_seconds_left"] == pytest.approx(30.0)  # 750 images at 25 a second
    assert state["finished_stages"] == [{"stage": "evaluation classifier", "seconds": 0.5}]
    now[0] += 30.0
    assert tracker.finish() == {"seconds": 40.5, "stages": [{"stage": "evaluation classifier", "seconds": 0.5},
                                                            {"stage": "sampling", "seconds": 40.0}]}


def test_metrics_read_as_a_table_with_names_formatted_values_and_text_as_it_is():
    from app.services.metrics_table import metrics_rows

    rows = {r["key"]: r for r in metrics_rows({
        "feature_fid": 12.345678, "label_accuracy": 0.997, "label_accuracy_per_class": {"0": 1.0, "1": 0.95},
        "feature_fid_note": "Fréchet distance in the classifier's feature space", "n_real": 1000,
        "classifier": {"test_accuracy": 0.9934, "classes": ["0", "1"]},
        "stage_seconds": {"seconds": 130.0, "stages": [{"stage": "sampling", "seconds": 125.0}]}})}
    assert list(rows)[:2] == ["label_accuracy", "feature_fid"]  # what is compared first
    assert rows["label_accuracy"]["value"] == "99.7%" and rows["feature_fid"]["value"] == "12.35"
    assert rows["label_accuracy_per_class"]["value"] == "0: 100.0%, 1: 95.0%"
    assert rows["feature_fid_note"]["value"].startswith("Fréchet") and rows["n_real"]["value"] == "1,000"
    assert rows["classifier.test_accuracy"]["name"] == "Evaluation classifier › test accuracy"
    assert rows["stage_seconds"]["value"] == "2 min 10 s (sampling 2 min 5 s)"


def test_the_run_page_shows_the_rate_the_evaluation_stage_and_then_the_metrics_table(admin_app, client):
    from app.services.trainings import LIVE_KEY

    sign_in(client, *ADMIN)
    token = {"Authorization": f"Bearer {token_for(admin_app, ADMIN[0])}"}
    run = client.post("/api/v1/admin/trainings", headers=token, json={
        "backend": "aae-cg", "dataset": "digits", "max_steps": 300, "model_options": TINY}).get_json()
    evaluation = {"stage": "sampling", "unit": "images", "done": 400, "total": 1000, "fraction": 0.4,
                  "stage_seconds": 8.0, "stage_seconds_left": 12.0, "seconds": 9.0,
                  "finished_stages": [{"stage": "evaluation classifier", "seconds": 0.4}]}
    with admin_app.app_context():
        row = db.session.get(TrainingRun, run["id"])
        row.status, row.phase, row.step, row.elapsed_seconds, row.eta_seconds = "running", "training", 150, 130.0, 150.0
        row.metrics = {LIVE_KEY: {"rate": {"steps_per_second": 2.0, "over_steps": 120, "over_seconds": 60.0}}}
        db.session.commit()
    page = client.get(f"/admin/trainings/{run['id']}").get_data(as_text=True)
    assert "2 min 10 s" in page and "2 min 30 s" in page and "at 2 steps/s over the last 60.0 s (120 steps)" in page
    assert 'id="run-eval-progress" hidden' in page

    with admin_app.app_context():
        row = db.session.get(TrainingRun, run["id"])
        row.phase, row.eta_seconds = "evaluating: sampling", None
        row.metrics = {LIVE_KEY: {"rate": row.metrics[LIVE_KEY]["rate"], "evaluation": evaluation}}
        db.session.commit()
    live = client.get(f"/admin/trainings/{run['id']}.json").get_json()
    assert live["progress"]["evaluation"] == evaluation and LIVE_KEY not in live["metrics"]
    page = client.get(f"/admin/trainings/{run['id']}").get_data(as_text=True)
    assert "sampling: 400 of 1,000 images" in page and 'value="0.4"' in page
    assert "about 12.0 s left in this stage" in page and "Done: evaluation classifier (0.4 s)." in page

    with admin_app.app_context():
        row = db.session.get(TrainingRun, run["id"])
        row.status, row.phase = "succeeded", "done"
        row.metrics = {"steps": 300, "evaluation": {"label_accuracy": 0.5, "feature_fid_note": "Fréchet distance"}}
        db.session.commit()
    done = client.get(f"/admin/trainings/{run['id']}.json").get_json()
    assert done["progress"] is None
    assert [r["value"] for r in done["evaluation_table"]] == ["50.0%", "Fréchet distance"]
    page = client.get(f"/admin/trainings/{run['id']}").get_data(as_text=True)
    assert "<td>Fréchet distance</td>" in page and "<td>50.0%</td>" in page and "\\u00e9" not in page


def test_a_run_reports_the_evaluation_as_it_goes_and_its_elapsed_time_keeps_moving(admin_app, client, monkeypatch):
    """In-process run of the task on digits: every write of the evaluation names its stage, sampling reports
    a fraction, the elapsed time is written throughout and never goes back, and the stages' durations are kept
    with the metrics."""
    from workers import training_tasks
    from workers.training_tasks import RunLease, train_model

    writes = []
    original = RunLease.store

    def recording(self, values):
        original(self, values)
        writes.append((threading.current_thread() is threading.main_thread(), dict(values)))

    monkeypatch.setattr(RunLease, "store", recording)
    token = {"Authorization": f"Bearer {token_for(admin_app, ADMIN[0])}"}
    run = client.post("/api/v1/admin/trainings", headers=token, json={
        "backend": "aae-cg", "dataset": "digits", "max_steps": 2, "batch_size": 8, "model_options": TINY,
        "eval_samples": 20}).get_json()
    with admin_app.app_context():
        assert train_model.run(run["id"]) == "succeeded"
    assert all("elapsed_seconds" in w for _, w in writes)  # the heartbeats' too
    task = [w for main, w in writes if main]  # the task's own writes, in order
    evaluating = [w for w in task if str(w.get("phase", "")).startswith("evaluating")]
    stages = [w["metrics"][training_tasks.LIVE_KEY]["evaluation"] for w in evaluating]
    assert {"evaluation classifier", "sampling"} <= {s["stage"] for s in stages}
    assert any(s["stage"] == "sampling" and s["fraction"] == 1.0 and s["unit"] == "images" for s in stages)
    elapsed = [w["elapsed_seconds"] for w in task]
    assert elapsed == sorted(elapsed)  # never goes back, and moves on through the evaluation:
    assert evaluating[-1]["elapsed_seconds"] > [w for w in task if "step" in w][-1]["elapsed_seconds"]
    body = client.get(run["url"], headers=token).get_json()
    timing = body["metrics"]["evaluation"]["stage_seconds"]
    assert "sampling" in [s["stage"] for s in timing["stages"]]
    assert any(r["key"] == "label_accuracy" for r in body["evaluation_table"])
