"""The admin pages in a real headless Chromium against gunicorn, a real Celery worker, PostgreSQL and Redis:
sign in, start a training run with the form, watch its progress update live (step, losses, loss plot, sample
grid) until it registers a new version, then promote that version from its page.
"""

from __future__ import annotations

import json

import pytest

from tests.admin.conftest import ADMIN
from tests.web.test_browser import CHROMIUM, WebServer, browser_page
from tests.support.faults import InjectedFaults

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (apt-get install chromium)"),
]

SCREENSHOT = "priorforge-training.png"  # in the test's own temporary folder, never straight into /tmp
TINY = {"base_channels": 4, "hidden_dim": 16, "disc_hidden": 8, "code_disc_hidden": [8], "latent_dim": 8}


@pytest.fixture
def admin_stack(tmp_path, pg_url, redis_url, start_worker):
    from app import create_app
    from app.services.accounts import create_user
    from app.core.extensions import db
    from app.core.migrate import upgrade

    broker, prefix = redis_url
    config = {
        "SQLALCHEMY_DATABASE_URI": pg_url, "CELERY_BROKER_URL": broker, "BROKER_KEY_PREFIX": prefix,
        "STORAGE_ROOT": str(tmp_path / "images"), "TRAINING_ROOT": str(tmp_path / "trainings"),
        "DATASET_ROOT": str(tmp_path / "datasets"), "DEVICE": "cpu", "TRAINING_PROGRESS_INTERVAL": 0.2,
        "CACHE": str(tmp_path / "cache"),
    }
    app = create_app({**config, "TESTING": True})
    upgrade(app)
    with app.app_context():
        create_user(*ADMIN, is_admin=True)
    start_worker(config, faults=InjectedFaults(train_step_delay=0.1))  # each step takes a moment: the page sees the run move
    server = WebServer(config, tmp_path / "gunicorn.log").start()
    yield app, server
    server.stop()
    app.extensions["celery"].pool.force_close_all()
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_admin_starts_a_run_sees_it_progress_and_promotes_the_result(admin_stack, tmp_path):
    app, server = admin_stack
    with browser_page(height=900) as (page, errors):
        page.goto(f"{server.url}/admin/trainings")  # anonymous: sent to the login form first
        page.wait_for_url(f"{server.url}/admin/login**")
        page.get_by_label("User name").fill(ADMIN[0])
        page.get_by_label("Password").fill(ADMIN[1])
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{server.url}/admin/trainings")

        page.get_by_label("Backend").select_option("aae-cg")
        page.get_by_label("Data set").select_option("digits")
        page.get_by_label("Register as model").fill("digits-admin")
        page.get_by_label("Steps", exact=True).fill("40")
        page.get_by_label("Batch size", exact=True).fill("16")
        page.get_by_label("Sample grid every (steps)").fill("10")
        page.get_by_label("Checkpoint every (steps)").fill("10")
        page.get_by_label("Evaluate at the end").uncheck()
        page.get_by_label("Model options (JSON)").fill(json.dumps(TINY))
        page.get_by_role("button", name="Start training").click()
        page.wait_for_url(f"{server.url}/admin/trainings/*")
        page.evaluate("() => { window.__sameDocument = true; }")

        # live progress: the step counter moves while the page stays loaded
        page.wait_for_function("() => Number(document.getElementById('run-step').textContent) >= 5",
                               timeout=300_000)
        seen = int(page.locator("#run-step").inner_text())
        page.wait_for_function(f"() => Number(document.getElementById('run-step').textContent) > {seen}",
                               timeout=120_000)
        assert page.locator("#run-status").inner_text() == "running"
        assert page.locator("#run-losses").inner_text() != ""
        page.wait_for_function("() => document.querySelectorAll('#loss-plot polyline').length >= 2",
                               timeout=60_000)
        page.wait_for_function("() => { const img = document.getElementById('run-sample');"
                               " return !img.hidden && img.complete && img.naturalWidth > 0; }", timeout=120_000)

        page.wait_for_function("() => document.getElementById('training').dataset.status === 'succeeded'",
                               timeout=300_000)
        assert page.evaluate("() => window.__sameDocument === true"), "the page was reloaded"
        assert page.locator("#run-step").inner_text() == "40"
        assert page.locator("#cancel-form").is_hidden()
        page.screenshot(path=str(tmp_path / SCREENSHOT), full_page=True)
        version_link = page.locator("#run-version-link")
        assert version_link.inner_text().strip() == "digits-admin v1"

        version_link.click()
        page.wait_for_url(f"{server.url}/admin/models/*")
        assert page.locator("#serving-badge").count() == 0  # registered, not serving
        page.get_by_role("button", name="Promote v1").click()
        page.wait_for_selector("#serving-badge")
        assert errors == []

    from app.core.extensions import db
    from app.core.tables import ModelVersion, TrainingRun

    with app.app_context():
        run = db.session.query(TrainingRun).one()
        assert (run.status, run.step, run.model_name) == ("succeeded", 40, "digits-admin")
        assert db.session.get(ModelVersion, run.model_version_id).serving is True
