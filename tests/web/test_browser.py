"""End to end in a real headless Chromium: the form -> a real Celery worker on Redis + PostgreSQL -> the job
page shows the generated images live, and the job and its images are in the database.

Needs Debian's ``chromium`` (``apt-get install chromium``) at /usr/bin/chromium, driven by Playwright for
Python; Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.service.conftest import REPO, WorkerProcess, free_port, wait_for
from tests.web.conftest import DIGITS_CHECKPOINT
from tests.support.faults import InjectedFaults

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


@contextmanager
def browser_page(height: int = 800):
    """A page of headless Debian chromium, 1000 px wide, and the list its script errors and console errors
    are appended to (a test asserts it stays empty); the browser is closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": height})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            yield page, errors
        finally:
            browser.close()
# screenshots go to the test's own folder under pytest's base temporary folder (kept for the last runs), never
# straight into /tmp, where nothing would remove them
SCREENSHOT = "priorforge-job.png"
TEXT_SCREENSHOT = "priorforge-text-job.png"
SHIPPED_MODELS = REPO / "models"
N_IMAGES = 4

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (apt-get install chromium)"),
]


class WebServer:
    """gunicorn serving ``app.wsgi:app`` on a free port, configured through PRIORFORGE_* like the worker."""

    def __init__(self, config: dict, log_path: Path):
        self.port = free_port()
        self.env = WorkerProcess(config, log_path).env()
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "WebServer":
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}", "--workers", "1",
             "--threads", "4", "--access-logfile", "-", "app.wsgi:app"],
            cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._ready, 120, f"gunicorn to answer (log: {self.log_path})", interval=0.5)
        return self

    def _ready(self) -> bool:
        import urllib.error
        import urllib.request

        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"gunicorn exited with {self.proc.returncode}:\n"
                                 f"{self.log_path.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/models", timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(30)
        if getattr(self, "log", None):
            self.log.close()


@pytest.fixture
def stack(tmp_path, pg_url, redis_url, start_worker):
    """PostgreSQL (migrated, shipped digits model registered) + Redis + a Celery worker + gunicorn."""
    from app import create_app
    from app.core.extensions import db
    from app.core.migrate import upgrade
    from app.services.model_versions import register_model, register_shipped

    broker, prefix = redis_url
    config = {
        "SQLALCHEMY_DATABASE_URI": pg_url, "CELERY_BROKER_URL": broker, "BROKER_KEY_PREFIX": prefix,
        "STORAGE_ROOT": str(tmp_path / "images"), "DEVICE": "cpu", "DEFAULT_MODEL": "digits",
    }
    app = create_app({**config, "TESTING": True})
    upgrade(app)
    with app.app_context():
        register_model("digits", DIGITS_CHECKPOINT)
        register_shipped(SHIPPED_MODELS)  # as scripts/run.sh does
    # each job takes a moment, so the page is loaded before it ends and must update live
    start_worker(config, faults=InjectedFaults(task_delay=1.5))
    server = WebServer(config, tmp_path / "gunicorn.log").start()
    yield app, server
    server.stop()
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


ALL_IMAGES_LOADED = """(n) => {
  const images = [...document.querySelectorAll('#job-images img')];
  return images.length === n && images.every((img) => img.complete && img.naturalWidth > 0);
}"""


def test_generate_digits_in_the_browser(stack, tmp_path):
    app, server = stack
    with browser_page(height=800) as (page, errors):
        page.goto(f"{server.url}/")
        page.get_by_label("Model").select_option("digits")
        page.locator('fieldset[data-model="digits"]').get_by_label("Label").select_option("7")
        page.get_by_label("Number of images").fill(str(N_IMAGES))
        page.get_by_label("Seed").fill("2024")
        page.get_by_role("button", name="Generate").click()
        page.wait_for_url(f"{server.url}/jobs/*")
        job_id = page.url.rsplit("/", 1)[1]
        # a mark on this document: it must survive until the images show (no reload, no meta refresh)
        page.evaluate("() => { window.__sameDocument = true; }")

        page.wait_for_function(ALL_IMAGES_LOADED, arg=N_IMAGES, timeout=300_000)
        assert page.evaluate("() => window.__sameDocument === true"), "the page was reloaded"
        assert page.locator("#job-status").inner_text() == "succeeded"
        assert page.locator("#job-progress").get_attribute("value") == "100"
        assert page.locator("#job-images img").first.get_attribute("alt").endswith("label 7, seed 2024")
        assert page.locator("#cancel-form").is_hidden()
        page.screenshot(path=str(tmp_path / SCREENSHOT), full_page=True)
        assert errors == []

        # the image page and its download link, in the same browser
        page.locator("#job-images a").first.click()
        page.wait_for_url(f"{server.url}/images/*")
        assert "label 7" in page.locator("#image-meta").inner_text()
        with page.expect_download() as download_info:
            page.get_by_role("link", name="Download PNG").click()
        download = download_info.value
        assert download.suggested_filename == "priorforge-digits-2024.png"
        assert Path(download.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # a batch upload: the batch page follows its jobs live to the combined status
        page.goto(f"{server.url}/batches/new")
        page.get_by_label("Prompts or labels file (.csv or .jsonl)").set_input_files(files=[{
            "name": "labels.csv", "mimeType": "text/csv",
            "buffer": b"model,label,n,seed\ndigits,1,1,5\ndigits,9,2,6\n"}])
        page.get_by_role("button", name="Upload and start").click()
        page.wait_for_url(f"{server.url}/batches/*")
        batch_id = page.url.rsplit("/", 1)[1]
        page.wait_for_function(
            "() => document.getElementById('batch').dataset.status === 'succeeded'", timeout=300_000)
        assert page.locator("#batch-status").inner_text() == "succeeded"
        assert page.locator("tr[data-job-id] .status").all_inner_texts() == ["succeeded", "succeeded"]
        assert page.locator("#batch-counts").inner_text() == "2 succeeded"
        assert errors == []

        # without JavaScript, the finished job page shows the same images
        nojs = page.context.browser.new_context(java_script_enabled=False).new_page()
        nojs.goto(f"{server.url}/jobs/{job_id}")
        assert nojs.locator("#job-images img").count() == N_IMAGES
        assert nojs.evaluate(ALL_IMAGES_LOADED, N_IMAGES)

    from app.core.extensions import db
    from app.core.tables import Batch, Job

    storage = app.extensions["priorforge_storage"]
    with app.app_context():
        job = db.session.get(Job, job_id)
        assert (job.status, job.label, job.label_index, job.n, job.seed) == ("succeeded", "7", 7, N_IMAGES, 2024)
        assert job.model_version.name == "digits"
        assert [(image.index, image.seed, image.width, image.height) for image in job.images] == \
            [(i, 2024 + i, 28, 28) for i in range(N_IMAGES)]
        assert all(storage.exists(image.storage_key) for image in job.images)
        batch = db.session.get(Batch, batch_id)
        assert [(j.label, j.n, j.seed, j.status, len(j.images)) for j in batch.jobs] == \
            [("1", 1, 5, "succeeded", 1), ("9", 2, 6, "succeeded", 2)]


@pytest.mark.skipif(not (SHIPPED_MODELS / "fashion-text" / "card.json").is_file(), reason="models/fashion-text absent")
def test_a_typed_prompt_for_the_shipped_text_model(stack, tmp_path):
    """The shipped fashion-text model: its example prompts fill the box, a typed prompt gives images, and the
    job page and the gallery show the prompt."""
    app, server = stack
    prompt = "a light, narrow dress"
    with browser_page(height=900) as (page, errors):
        page.goto(f"{server.url}/")
        page.get_by_label("Model").select_option("fashion-text")
        fieldset = page.locator('fieldset[data-model="fashion-text"]')
        box = fieldset.get_by_label("Prompt")
        examples = fieldset.locator("a.example-prompt")
        assert 4 <= examples.count() <= 6
        examples.first.click()  # fills the box, no navigation
        assert box.input_value() == examples.first.get_attribute("data-prompt")
        assert page.url == f"{server.url}/"
        box.fill(prompt)
        page.get_by_label("Number of images").fill(str(N_IMAGES))
        page.get_by_label("Seed").fill("7")
        page.get_by_role("button", name="Generate").click()
        page.wait_for_url(f"{server.url}/jobs/*")
        job_id = page.url.rsplit("/", 1)[1]
        page.wait_for_function(ALL_IMAGES_LOADED, arg=N_IMAGES, timeout=300_000)
        assert page.locator("#job-status").inner_text() == "succeeded"
        assert prompt in page.locator("main").inner_text()
        page.screenshot(path=str(tmp_path / TEXT_SCREENSHOT), full_page=True)

        page.goto(f"{server.url}/gallery?prompt=narrow+dress")
        assert page.locator("#gallery img").count() == N_IMAGES
        assert prompt in page.locator("#gallery").inner_text()
        page.goto(f"{server.url}/models")
        grid = page.locator("#model-fashion-text img.model-samples")
        grid.scroll_into_view_if_needed()  # the grids load lazily, as they come into view
        grid.evaluate("img => img.complete ? null : new Promise(done => img.addEventListener('load', done))")
        assert grid.evaluate("img => img.naturalWidth") > 0
        assert errors == []

    from app.core.extensions import db
    from app.core.tables import Job

    with app.app_context():
        job = db.session.get(Job, job_id)
        assert (job.status, job.prompt, job.condition_kind, job.model_version.name) == \
            ("succeeded", prompt, "text", "fashion-text")


def test_the_menu_at_390_px_wraps_between_items_and_links_the_admin(client):
    """On a phone-sized screen the menu wrapped inside "Batch upload" and had no Admin link. The pages come
    from the app's test client through Playwright's request routing (no server needed)."""

    def answer(route):
        url = route.request.url.removeprefix("http://priorforge.test")
        response = client.get(url)
        body = response.get_data()
        response.close()  # a static file's handle
        route.fulfill(status=response.status_code, body=body,
                      headers={"Content-Type": response.headers.get("Content-Type", "text/html")})

    with browser_page() as (page, errors):
        page.set_viewport_size({"width": 390, "height": 800})
        page.route("http://priorforge.test/**", answer)
        page.goto("http://priorforge.test/")
        links = page.eval_on_selector_all(".site-header nav a", """(links) => links.map((a) => ({
            text: a.textContent, lines: a.getClientRects().length, right: a.getBoundingClientRect().right}))""")
        assert [link["text"] for link in links][-1] == "Admin"
        assert all(link["lines"] == 1 for link in links), links  # no item broken over two lines
        assert all(link["right"] <= 390 for link in links), links  # and none off the screen
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        assert errors == []
