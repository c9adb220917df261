"""The experiments in a real headless Chromium, one test per kind (reconstruct and mix together): the form -> a real Celery worker -> the
experiment page follows the jobs and then shows the grid with its labelled axes. One server stack for the
module (gunicorn and a worker on SQLite with the embedded broker, the default set-up): the shipped digits
fixture and the shipped mnist and fashion-text models.

Needs Debian's ``chromium`` at /usr/bin/chromium (skipped without it), driven by Playwright.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.service.conftest import FAST_WORKER, WorkerProcess
from tests.web.conftest import DIGITS_CHECKPOINT
from tests.web.test_browser import CHROMIUM, SHIPPED_MODELS, WebServer, browser_page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (apt-get install chromium)"),
    pytest.mark.skipif(not (SHIPPED_MODELS / "fashion-text" / "card.json").is_file(), reason="models/ absent"),
]

GRID_LOADED = """(n) => {
  const images = [...document.querySelectorAll('#experiment-grid img')];
  return images.length === n && images.every((img) => img.complete && img.naturalWidth > 0);
}"""
SUCCEEDED = '#experiment[data-status="succeeded"]'


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from app import create_app
    from app.core.extensions import db
    from app.core.migrate import upgrade
    from app.services.model_versions import register_model

    root = tmp_path_factory.mktemp("experiments")
    config = {
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{root / 'app.sqlite3'}",
        "CELERY_BROKER_URL": f"sqla+sqlite:///{root / 'broker.sqlite3'}",
        "STORAGE_ROOT": str(root / "images"), "DEVICE": "cpu", "DEFAULT_MODEL": "digits",
        # module scope: the per-test isolation of tests/conftest.py is not set up yet, so every path the web
        # and worker processes would otherwise default to (instance/...) is given here
        "SECRET_KEY_FILE": str(root / "secret_key"), "METRICS_DIR": str(root / "metrics"),
        "CACHE": str(root / "cache"), "MODEL_CACHE_DIR": str(root / "model-cache"),
        "DATASET_ROOT": str(root / "datasets"), "TRAINING_ROOT": str(root / "trainings"), **FAST_WORKER,
    }
    app = create_app({**config, "TESTING": True})
    upgrade(app)
    with app.app_context():
        register_model("digits", DIGITS_CHECKPOINT)
        register_model("mnist", SHIPPED_MODELS / "mnist")
        register_model("fashion-text", SHIPPED_MODELS / "fashion-text")
    worker = WorkerProcess(config, root / "worker.log").start()
    server = WebServer(config, root / "gunicorn.log").start()
    yield app, server
    server.stop()
    worker.stop()
    from app.core.fastpath.doorbell import sweep

    sweep(str(root / "broker.sqlite3"))
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def _grid_text(page, selector: str) -> list[str]:
    return [text.strip() for text in page.locator(selector).all_inner_texts()]


def test_compare_this_request_from_a_job_page(stack, tmp_path):
    """A job page's "Compare this request" link fills the compare form; the result has one row per model, the
    same seeds as columns, and each model's card figures beside its row."""
    _app, server = stack
    request = urllib.request.Request(f"{server.url}/api/v1/jobs?wait=60", method="POST",
                                     data=json.dumps({"model": "digits", "label": "7", "n": 3, "seed": 40}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=90) as response:
        job = json.load(response)
    assert job["status"] == "succeeded", job
    with browser_page(height=900) as (page, errors):
        page.goto(f"{server.url}/jobs/{job['id']}")
        page.get_by_role("link", name="Compare this request").click()
        page.wait_for_url(f"{server.url}/compare?*")
        assert page.get_by_label("Label").input_value() == "7"
        assert page.get_by_label("Seed", exact=True).input_value() == "40"
        page.get_by_role("button", name="Run").click()  # no model ticked: every model with a label "7"
        page.wait_for_url(f"{server.url}/experiments/*")
        page.wait_for_selector(SUCCEEDED, timeout=120_000)
        page.wait_for_function(GRID_LOADED, arg=6, timeout=60_000)
        assert _grid_text(page, "#experiment-grid tbody th") == ["digits v1", "mnist v1"]
        assert _grid_text(page, "#experiment-grid thead th")[1:4] == ["seed 40", "seed 41", "seed 42"]
        figures = page.locator("#experiment-grid td.figures").all_inner_texts()
        assert "99.7%" in figures[1] and "ms/image in this run" in figures[1]  # mnist's card: 99.7% accuracy
        assert "Varied: the model" in page.locator("#experiment-varied").inner_text()
        page.screenshot(path=str(tmp_path / "priorforge-compare.png"), full_page=True)
        assert errors == []


def test_sweep_of_a_prompt_word(stack, tmp_path):
    """The tone word of a fashion-text prompt over its default values: one column per tone, one row per seed,
    and the page says which word was varied."""
    _app, server = stack
    with browser_page() as (page, errors):
        page.goto(f"{server.url}/sweep")
        page.get_by_label("Model", exact=True).select_option("fashion-text")
        page.get_by_label("Prompt (text models)").fill("a dark, wide pullover")
        page.get_by_label("Word to vary (text models)").fill("dark")
        page.get_by_label("Seeds (rows)").fill("2")
        page.get_by_label("Seed", exact=True).fill("5")
        page.get_by_role("button", name="Run").click()
        page.wait_for_url(f"{server.url}/experiments/*")
        page.wait_for_selector(SUCCEEDED, timeout=120_000)
        page.wait_for_function(GRID_LOADED, arg=4, timeout=60_000)
        assert "the word \u201cdark\u201d" in page.locator("#experiment-varied").inner_text()
        assert _grid_text(page, "#experiment-grid thead th")[1:] == ["a dark, wide pullover", "a light, wide pullover"]
        assert _grid_text(page, "#experiment-grid tbody th") == ["seed 5", "seed 6"]
        page.screenshot(path=str(tmp_path / "priorforge-sweep.png"), full_page=True)
        assert errors == []


def test_interpolate_between_two_labels(stack, tmp_path):
    """From a 3 to an 8 with one seed: five steps, t from 0 to 1 along the columns; a bad entry first shows
    the service's message on the form with the values kept."""
    _app, server = stack
    with browser_page() as (page, errors):
        page.goto(f"{server.url}/interpolate")
        page.get_by_label("Model", exact=True).select_option("digits")
        page.get_by_label("From: label, cluster or prompt").fill("3")
        page.get_by_label("From: seed").fill("9")
        page.get_by_label("Steps").fill("5")
        page.get_by_role("button", name="Run").click()  # "to" left empty: the same image at both ends
        assert "the two ends are the same image" in page.locator("#form-error").inner_text()
        assert page.get_by_label("From: seed").input_value() == "9"
        assert all("422" in error for error in errors)  # the browser logs the refused form's status; only that
        errors.clear()
        page.get_by_label("To: label, cluster or prompt").fill("8")
        page.get_by_role("button", name="Run").click()
        page.wait_for_url(f"{server.url}/experiments/*")
        page.wait_for_selector(SUCCEEDED, timeout=120_000)
        page.wait_for_function(GRID_LOADED, arg=5, timeout=60_000)
        assert _grid_text(page, "#experiment-grid thead th")[1:] == [f"t = {t:.2f}" for t in (0, 0.25, 0.5, 0.75, 1)]
        assert _grid_text(page, "#experiment-grid tbody th") == ["label 3, seed 9 \u2192 label 8, seed 9"]
        page.screenshot(path=str(tmp_path / "priorforge-interpolate.png"), full_page=True)
        assert errors == []


def test_reconstruct_a_gallery_image_then_mix_it_with_an_upload(stack, tmp_path):
    """An mnist image's page links to its reconstruction (mnist keeps its encoder); the mix form takes that
    image's id and an uploaded file, and shows the mixes from all A to all B."""
    import io

    from PIL import Image as PILImage

    _app, server = stack
    request = urllib.request.Request(f"{server.url}/api/v1/jobs?wait=60", method="POST",
                                     data=json.dumps({"model": "mnist", "label": "4", "n": 1, "seed": 8}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=90) as response:
        job = json.load(response)
    assert job["status"] == "succeeded", job
    image_id = job["images"][0]["id"]
    upload = io.BytesIO()
    PILImage.new("L", (64, 48), color=30).save(upload, format="PNG")
    with browser_page() as (page, errors):
        page.goto(f"{server.url}/images/{image_id}")
        page.get_by_role("link", name="Reconstruct this image").click()
        page.wait_for_url(f"{server.url}/reconstruct?*")
        assert page.get_by_label("Image: a gallery image's id").input_value() == image_id
        page.get_by_role("button", name="Run").click()
        page.wait_for_url(f"{server.url}/experiments/*")
        page.wait_for_selector(SUCCEEDED, timeout=120_000)
        page.wait_for_function(GRID_LOADED, arg=2, timeout=60_000)
        assert _grid_text(page, "#experiment-grid thead th")[1:] == ["input (as the model sees it)", "reconstruction"]

        page.goto(f"{server.url}/images/{image_id}")
        page.get_by_role("link", name="Mix it with another").click()
        page.wait_for_url(f"{server.url}/mix?*")
        page.get_by_label("Image B: upload a file").set_input_files(
            files=[{"name": "grey.png", "mimeType": "image/png", "buffer": upload.getvalue()}])
        page.get_by_label("Steps").fill("3")
        page.get_by_role("button", name="Run").click()
        page.wait_for_url(f"{server.url}/experiments/*")
        page.wait_for_selector(SUCCEEDED, timeout=120_000)
        page.wait_for_function(GRID_LOADED, arg=3, timeout=60_000)
        assert _grid_text(page, "#experiment-grid thead th")[1:] == ["1.00 A + 0.00 B", "0.50 A + 0.50 B",
                                                                    "0.00 A + 1.00 B"]
        assert "upload grey.png" in page.locator("#experiment-grid tbody th").inner_text()
        page.screenshot(path=str(tmp_path / "priorforge-mix.png"), full_page=True)
        assert errors == []
