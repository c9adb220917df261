"""Model options and hyper-parameters are checked against what their backend accepts before a run is queued: a
422 naming the field and the allowed values, no row and no message; the choice lists are the classes' own and
the edges of every range build; a failed run's page shows the settings it ran with. Also: the captioned
built-in sets are offered wherever the built-in sets are, and a canceled run has no time left."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select

from app.core.extensions import db
from app.core.tables import TrainingRun
from tests.admin.conftest import ADMIN, csrf_token, sign_in, token_for
from tests.service.conftest import broker_messages
from tests.support.faults import InjectedFaults
from workers.faults import install

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


@pytest.mark.parametrize("change, field, allowed", [
    ({"model_options": {"base_channels": 0}}, "model_options.base_channels", "an integer from 1 to 4096"),
    ({"model_options": {"latent_dim": 0}}, "model_options.latent_dim", "an integer from 1 to 4096"),
    ({"model_options": {"upsample": "cubic"}}, "model_options.upsample", "one of 'transpose', 'nearest'"),
    ({"model_options": {"text_dim": 500}}, "model_options.text_dim", "an integer from 1 to 384"),
    ({"hparams": {"beta1": 2.0}}, "hparams.beta1", "a number from 0 and below 1"),
    ({"hparams": {"code_adv_weight": -1}}, "hparams.code_adv_weight", "a number from 0 and at most 10000"),
    ({"backend": "glf", "model_options": {"latent_dim": 1}}, "model_options.latent_dim", "from 2 to 4096"),
    ({"backend": "glf", "model_options": {}, "hparams": {"flow_betas": [0.9, 1.5]}}, "hparams.flow_betas",
     "a list of 2 numbers"),
    ({"backend": "glf", "model_options": {}, "hparams": {"flow_lr": 0}}, "hparams.flow_lr", "above 0"),
    ({"backend": "lde", "model_options": {"variant": "vae"}}, "model_options.variant", "one of 'ae', 'iae'"),
    ({"backend": "pga", "model_options": {"variant": "iae"}}, "model_options.variant", "one of 'lpga', 'vpga'"),
    ({"backend": "pga", "model_options": {}, "hparams": {"optimizer": "rmsprop"}}, "hparams.optimizer",
     "one of 'adam', 'sgd'"),
    ({"backend": "lde", "model_options": {}, "hparams": {"lde_fraction": 1.0}}, "hparams.lde_fraction", "below 1"),
    ({"backend": "vae", "model_options": {"class_prior": "mixture"}}, "model_options.class_prior",
     "one of 'gaussian', 'flow', 'standard'"),
])
def test_out_of_range_options_are_422_naming_field_and_allowed_values_and_store_nothing(admin_app, api, change,
                                                                                        field, allowed):
    response = api("POST", "/api/v1/admin/trainings", {**GOOD, **change})
    assert response.status_code == 422, response.get_json()
    body = response.get_json()
    assert body["field"] == field and allowed in body["error"], body
    assert run_count(admin_app) == 0 and broker_messages(admin_app) == 0


def test_the_form_shows_the_same_422(admin_app, client):
    sign_in(client, *ADMIN)
    token = csrf_token(client, "/admin/trainings")
    page = client.post("/admin/trainings", data={"backend": "aae-cg", "dataset": "digits", "csrf_token": token,
                                                 "model_options": '{"upsample": "cubic"}'})
    assert page.status_code == 422 and "one of &#39;transpose&#39;, &#39;nearest&#39;" in page.get_data(as_text=True)
    assert run_count(admin_app) == 0


def test_the_choice_lists_are_the_classes_own_and_every_range_edge_builds():
    from typing import get_args

    from generation.base import ClassPriorKind
    from generation.layers import UPSAMPLING
    from generation.pga import PGAVariant
    from priorforge_spec.backends import OPTION_RULES, value_rule
    from training.pga import OPTIMIZERS
    from priorforge_spec.backends import HPARAM_RULES
    from tests.conftest import build_tiny

    assert OPTION_RULES["upsample"][1] == tuple(UPSAMPLING)
    assert OPTION_RULES["class_prior"][1] == get_args(ClassPriorKind)
    assert OPTION_RULES[("pga", "variant")][1] == get_args(PGAVariant)
    assert set(HPARAM_RULES["optimizer"][1]) == set(OPTIMIZERS)
    assert value_rule("lde", "variant")[1] == ("ae", "iae")
    # the lowest accepted widths build and run a forward pass (0 used to fail inside a layer)
    model = build_tiny("aae-cg", base_channels=1, latent_dim=1, noise_dim=1, hidden_dim=1, disc_hidden=1)
    assert model.sample(2).shape[0] == 2
    glf = build_tiny("glf", latent_dim=2, base_channels=1, hidden_dim=1, flow_blocks=1)
    assert glf.sample(2).shape[0] == 2


def test_a_failed_runs_page_shows_the_settings_it_ran_with(admin_app, api, client):
    from workers.training_tasks import train_model

    run = api("POST", "/api/v1/admin/trainings", GOOD).get_json()
    with admin_app.app_context():
        row = db.session.get(TrainingRun, run["id"])
        row.settings = {**row.settings, "hparams": {"beta1": 0.5, "no_such": 1}}  # an old row, before the checks
        db.session.commit()
        assert train_model.run(run["id"]) == "failed"
    sign_in(client, *ADMIN)
    page = client.get(f"/admin/trainings/{run['id']}").get_data(as_text=True)
    assert 'id="run-settings"' in page and "no_such" in page and "base_channels" in page
    assert 'id="run-error"' in page and api("GET", run["url"]).get_json()["status"] == "failed"


def test_the_captioned_built_in_sets_are_offered_where_the_built_in_sets_are(admin_app, api, client, tmp_path):
    (tmp_path / "data" / "fashion-mnist").mkdir(parents=True)  # what DATA_ROOT holds decides what is available
    listed = {d["name"]: d for d in api("GET", "/api/v1/admin/datasets").get_json()["builtin"]}
    assert listed["fashion-mnist-captions"] == {"name": "fashion-mnist-captions", "builtin": True,
                                                "available": True, "captions": True}
    assert listed["cifar10-captions"]["available"] is False
    sign_in(client, *ADMIN)
    assert '<option value="fashion-mnist-captions"' in client.get("/admin/trainings").get_data(as_text=True)
    assert "fashion-mnist-captions</td><td>built-in (captioned)" in client.get("/admin/").get_data(as_text=True)
    unknown = api("POST", "/api/v1/admin/trainings", {**GOOD, "dataset": "nope"}).get_json()
    assert "captioned built-in: cifar10-captions, fashion-mnist-captions, oxford102-flowers" in unknown["error"]
    missing = api("POST", "/api/v1/admin/trainings", {**GOOD, "dataset": "cifar10-captions"})
    assert missing.status_code == 422 and "not available" in missing.get_json()["error"]
    ok = api("POST", "/api/v1/admin/trainings", {**GOOD, "dataset": "fashion-mnist-captions", "condition": "text"})
    assert ok.status_code == 202 and ok.get_json()["condition"] == "text"


@pytest.fixture
def slow_training_steps():
    """Training steps in this process take 20 ms more (the run trains in a thread of the test)."""
    previous = install(InjectedFaults(train_step_delay=0.02))
    yield
    install(previous)


def test_a_canceled_run_has_no_time_left(admin_app, api, slow_training_steps):
    from workers.training_tasks import train_model

    admin_app.config.update(HEARTBEAT_INTERVAL=0.1, TRAINING_PROGRESS_INTERVAL=0.0)
    run = api("POST", "/api/v1/admin/trainings", {**GOOD, "max_steps": 100_000, "evaluate": False}).get_json()
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(_run_in_app(admin_app, train_model, run["id"])))
    worker.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and api("GET", run["url"]).get_json()["eta_seconds"] is None:
        time.sleep(0.1)
    assert api("GET", run["url"]).get_json()["eta_seconds"] > 0  # a live estimate while it trains
    assert api("POST", f"{run['url']}/cancel").status_code == 200
    worker.join(timeout=60)
    assert outcome == ["canceled"]
    body = api("GET", run["url"]).get_json()
    assert body["status"] == "canceled" and body["eta_seconds"] is None
    with admin_app.app_context():
        assert db.session.get(TrainingRun, run["id"]).eta_seconds is None


def _run_in_app(app, task, run_id):
    with app.app_context():
        return task.run(run_id)
