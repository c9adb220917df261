"""The whole admin flow in a real headless Chromium against gunicorn, a real Celery worker, PostgreSQL and Redis:
upload a small captioned zip of grey images with the admin page's form, train a text model on it for a few
steps with the training form, see the run evaluated and the evaluation figures in the comparison, write the
model's card and promote it, then prompt from the public form (an example of the card, one click) and get grey
images.
"""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from tests.admin.conftest import ADMIN, make_zip, png
from tests.web.test_browser import CHROMIUM, WebServer, browser_page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (apt-get install chromium)"),
]

# tiny settings, as tests/admin/test_upload_retraining.py trains them
TINY = {"base_channels": 4, "hidden_dim": 16, "disc_hidden": 8, "code_disc_hidden": [8], "latent_dim": 8,
        "noise_dim": 4, "text_dim": 8}
SCREENSHOT = "priorforge-admin-flow.png"  # in the test's own temporary folder


@pytest.fixture
def flow_stack(tmp_path, pg_url, redis_url, start_worker):
    from app import create_app
    from app.core.extensions import db
    from app.core.migrate import upgrade
    from app.services.accounts import create_user

    broker, prefix = redis_url
    config = {
        "SQLALCHEMY_DATABASE_URI": pg_url, "CELERY_BROKER_URL": broker, "BROKER_KEY_PREFIX": prefix,
        "STORAGE_ROOT": str(tmp_path / "images"), "TRAINING_ROOT": str(tmp_path / "trainings"),
        "DATASET_ROOT": str(tmp_path / "datasets"), "DEVICE": "cpu", "TRAINING_PROGRESS_INTERVAL": 0.2,
        "CACHE": str(tmp_path / "cache"),
        "TRAINING_EVAL_CLASSIFIER_STEPS": 5,  # a tiny evaluation classifier on the upload
    }
    app = create_app({**config, "TESTING": True})
    upgrade(app)
    with app.app_context():
        create_user(*ADMIN, is_admin=True)
    start_worker(config)  # serves the train and the generate queues
    server = WebServer(config, tmp_path / "gunicorn.log").start()
    yield app, server
    server.stop()
    app.extensions["celery"].pool.force_close_all()
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def grey_captioned_zip(path) -> None:
    """30 grey 16x16 squares, dark or light in runs of 10, each with two captions and its tone as a label."""
    members, lines = {}, []
    for i in range(30):
        tone = "dark" if (i // 10) % 2 else "light"
        members[f"img/{i:02d}.png"] = png(16, 30 + i if tone == "dark" else 220 - i)
        lines.append({"file": f"img/{i:02d}.png", "captions": [f"a {tone} square", f"something {tone}"],
                      "label": tone})
    members["captions.jsonl"] = "\n".join(json.dumps(line) for line in lines).encode()
    path.write_bytes(make_zip(members))


def test_upload_train_compare_write_the_card_promote_and_prompt_a_grey_image(flow_stack, tmp_path):
    app, server = flow_stack
    archive = tmp_path / "squares.zip"
    grey_captioned_zip(archive)
    with browser_page(height=900) as (page, errors):
        page.goto(f"{server.url}/admin/")
        page.wait_for_url(f"{server.url}/admin/login**")
        page.get_by_label("User name").fill(ADMIN[0])
        page.get_by_label("Password").fill(ADMIN[1])
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{server.url}/admin/")

        # 1. the upload form
        page.get_by_label("Name", exact=True).fill("squares")
        page.get_by_label("Zip archive").set_input_files(str(archive))
        page.get_by_role("button", name="Upload").click()
        page.wait_for_url(f"{server.url}/admin/?created=squares**")

        # 2. a text model trained for a few steps, evaluated at the end
        page.goto(f"{server.url}/admin/trainings")
        page.get_by_label("Backend").select_option("aae-cg")
        page.get_by_label("Data set").select_option("squares")
        page.get_by_label("Condition").select_option("text")
        page.get_by_label("Register as model").fill("squares-text")
        page.get_by_label("Steps", exact=True).fill("3")
        page.get_by_label("Batch size", exact=True).fill("4")
        page.get_by_label("Sample grid every (steps)").fill("3")
        page.get_by_label("Checkpoint every (steps)").fill("3")
        page.get_by_label("Evaluation samples").fill("10")
        assert page.get_by_label("Evaluate at the end").is_checked()
        page.get_by_label("Model options (JSON)").fill(json.dumps(TINY))
        page.get_by_role("button", name="Start training").click()
        page.wait_for_url(f"{server.url}/admin/trainings/*")
        page.wait_for_function("() => document.getElementById('training').dataset.status === 'succeeded'",
                               timeout=420_000)
        page.reload()  # the evaluation as the page states it once the run has ended
        assert page.locator("#run-evaluation").get_attribute("data-state") == "evaluated"
        assert "held-out split of 'squares'" in page.locator("#run-evaluation").inner_text()

        # 3. the comparison shows the evaluation figures; the card is written and the version promoted
        page.locator("#run-version-link").click()
        page.wait_for_url(f"{server.url}/admin/models/*")
        assert page.locator("#evaluation-candidate").get_attribute("data-state") == "evaluated"
        metrics = page.locator("#comparison tbody").inner_text()
        for key in ("evaluation.caption_class_accuracy", "evaluation.caption_match_rate", "evaluation.feature_fid"):
            assert key in metrics
        assert page.locator("#serving-badge").count() == 0  # the first version of a trained model waits
        page.get_by_label("Title", exact=True).fill("Grey squares from a sentence")
        page.get_by_label("Description", exact=True).fill("Ask for a dark or a light square.")
        page.get_by_label("Example prompts (one per line)").fill("a dark square\na light square")
        page.get_by_role("button", name="Promote v1").click()
        page.wait_for_selector("#serving-badge")
        assert page.get_by_label("Description", exact=True).input_value() == "Ask for a dark or a light square."

        # 4. the public form shows the card; an example fills the prompt; the job gives grey PNGs
        page.goto(f"{server.url}/?model=squares-text")
        assert page.locator("#model").input_value() == "squares-text"
        assert page.get_by_text("Ask for a dark or a light square.").is_visible()
        page.get_by_role("link", name="a dark square", exact=True).click()
        assert page.get_by_label("Prompt").input_value() == "a dark square"
        assert page.url.startswith(f"{server.url}/?model=squares-text")  # filled in place, no navigation
        page.get_by_label("Number of images").fill("2")
        page.get_by_label("Seed").fill("3")
        page.get_by_role("button", name="Generate").click()
        page.wait_for_url(f"{server.url}/jobs/*")
        page.wait_for_function("() => document.querySelectorAll('#job-images img').length === 2"
                               " && [...document.querySelectorAll('#job-images img')].every(i => i.complete"
                               " && i.naturalWidth > 0)", timeout=180_000)
        page.screenshot(path=str(tmp_path / SCREENSHOT), full_page=True)
        sources = page.eval_on_selector_all("#job-images img", "els => els.map(e => e.getAttribute('src'))")
        for src in sources:
            response = page.request.get(f"{server.url}{src}")
            assert response.status == 200
            with Image.open(io.BytesIO(response.body())) as image:
                assert image.mode == "L" and image.size == (16, 16)

        page.goto(f"{server.url}/models")
        section = page.locator("#model-squares-text")
        assert "Grey squares from a sentence" in section.inner_text()
        assert section.get_by_role("link", name="a light square").count() == 1
        assert errors == []

    from app.core.extensions import db
    from app.core.tables import Job, ModelVersion

    with app.app_context():
        version = db.session.query(ModelVersion).filter_by(name="squares-text").one()
        assert version.serving and version.image_shape == [1, 16, 16]
        assert version.card == {"title": "Grey squares from a sentence",
                                "description": "Ask for a dark or a light square.",
                                "examples": ["a dark square", "a light square"]}
        job = db.session.query(Job).one()
        assert (job.status, job.prompt, job.model_version_id) == ("succeeded", "a dark square", version.id)
