"""The admin's queue page (``/admin/queue``) in a real headless Chromium against gunicorn and PostgreSQL: it is
served under the site's Content-Security-Policy and runs its script without a console error or a CSP
violation, and shows each lane's depth and oldest job, a worker with its loaded models and current job, the
last hour's four charts with bars where jobs finished, and a recent failure with its error. The rows are
written straight into the database (no worker runs here: what the page reads is the database alone).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.admin.conftest import ADMIN
from tests.web.conftest import DIGITS_CHECKPOINT
from tests.web.test_browser import CHROMIUM, WebServer, browser_page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (apt-get install chromium)"),
]

SCREENSHOT = "priorforge-queue.png"  # in the test's own temporary folder
WORKER = "gpu-node-7:4242"  # a pool process of another machine (so the page does not check its pid here)


@pytest.fixture
def queue_stack(tmp_path, pg_url, redis_url):
    from app import create_app
    from app.core.extensions import db
    from app.core.migrate import upgrade
    from app.services.accounts import create_user
    from app.services.model_versions import register_model

    broker, prefix = redis_url
    config = {
        "SQLALCHEMY_DATABASE_URI": pg_url, "CELERY_BROKER_URL": broker, "BROKER_KEY_PREFIX": prefix,
        "STORAGE_ROOT": str(tmp_path / "images"), "METRICS_DIR": str(tmp_path / "metrics"), "DEVICE": "cpu",
        "RECONCILE_INTERVAL": 0,  # the queued job below has no message; nothing may resend or fail it
    }
    app = create_app({**config, "TESTING": True})
    upgrade(app)
    with app.app_context():
        create_user(*ADMIN, is_admin=True)
        register_model("digits", DIGITS_CHECKPOINT)
    server = WebServer(config, tmp_path / "gunicorn.log").start()
    yield app, server
    server.stop()
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def _fill(app) -> None:
    """Finished jobs spread over the last hour, one failure, a queued job in each lane, a running job and the
    worker status row of the process running it."""
    from app.core.extensions import db
    from app.core.tables import Job, WorkerStatus, utcnow
    from app.services.model_versions import serving_version

    with app.app_context():
        version = serving_version("digits")
        now = utcnow()

        def job(status: str, n: int, age: float, **extra) -> Job:
            row = Job(status=status, model_version_id=version.id, condition_kind="class", label="7", label_index=7,
                      n=n, seed=1, created_at=now - timedelta(seconds=age), **{"attempts": 1, **extra})
            db.session.add(row)
            return row

        for age, latency in ((50, 0.8), (200, 2.5), (1300, 1.2), (1400, 6.0), (2500, 0.4)):  # finished jobs
            job("succeeded", 2, age + latency, finished_at=now - timedelta(seconds=age), started_at=now -
                timedelta(seconds=age + latency / 2), progress=1.0)
        job("failed", 1, 600, finished_at=now - timedelta(seconds=590),
            error="RuntimeError: the weights' SHA-256 does not match")
        job("queued", 3, 42, attempts=0)
        job("queued", 40, 7, attempts=0)  # more than INTERACTIVE_MAX_IMAGES: the bulk lane
        running = job("running", 4, 5, worker=WORKER, started_at=now - timedelta(seconds=4), progress=0.5)
        db.session.add(WorkerStatus(worker=WORKER, node="gpu@gpu-node-7", models=["digits v1"], tasks=12,
                                    started_at=now - timedelta(hours=1), seen_at=now - timedelta(seconds=3)))
        db.session.commit()
        assert running.id


def test_the_queue_page_renders_under_the_csp_with_lanes_workers_charts_and_failures(queue_stack, tmp_path):
    app, server = queue_stack
    _fill(app)
    with browser_page(height=1200) as (page, errors):
        page.goto(f"{server.url}/admin/queue")
        page.wait_for_url(f"{server.url}/admin/login**")
        page.get_by_label("User name").fill(ADMIN[0])
        page.get_by_label("Password").fill(ADMIN[1])
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{server.url}/admin/queue")

        response = page.reload()  # the page's own answer, with its headers
        assert response is not None and response.status == 200
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src", 1)[1].split(";")[0]
        # queue.js ran (a script of the site's origin, allowed): it shows the auto-refresh note
        page.wait_for_selector("#auto-refresh-note", state="visible")

        lanes = {row.get_attribute("data-lane"): row for row in page.locator("#lanes tbody tr").all()}
        assert set(lanes) == {"interactive", "bulk"}
        assert lanes["interactive"].locator(".depth").inner_text() == "1"
        assert lanes["bulk"].locator(".depth").inner_text() == "1"
        oldest = lanes["interactive"].locator(".oldest").inner_text()
        assert oldest.endswith(" s") and 40 <= float(oldest[:-2]) < 600
        assert lanes["interactive"].locator("td").nth(3).inner_text() == "1"  # the running job

        worker = page.locator("#workers tbody tr", has_text=WORKER)
        assert worker.locator(".state").inner_text() == "busy"
        assert worker.locator(".models").inner_text() == "digits v1"
        assert "(digits, 4 images, 50%)" in worker.inner_text()

        charts = page.locator("figure.chart")
        assert charts.count() == 4
        assert [c.inner_text() for c in page.locator("figure.chart figcaption").all()] == [
            "Jobs succeeded per 5 minutes", "Images per 5 minutes", "Median submit-to-finish latency",
            "95th percentile submit-to-finish latency"]
        for i in range(4):
            svg = charts.nth(i).locator("svg")
            assert svg.is_visible() and svg.bounding_box()["width"] > 100
            heights = [float(h) for h in svg.locator("rect.bar").evaluate_all(
                "bars => bars.map(b => b.getAttribute('height'))")]
            assert len(heights) == 12 and sum(h > 0 for h in heights) >= 3, heights
        assert page.locator("#hour-totals").inner_text().startswith("5 jobs (10 images) succeeded, 1 failed")

        failure = page.locator("#failures tbody tr")
        assert failure.count() == 1 and "the weights' SHA-256 does not match" in failure.locator(".error").inner_text()
        page.screenshot(path=str(tmp_path / SCREENSHOT), full_page=True)

        # it reloads itself every 10 s while visible (a mark set on this document is gone after a reload)
        page.evaluate("() => { window.__sameDocument = true; }")
        page.wait_for_function("() => window.__sameDocument !== true", timeout=20_000)
        page.wait_for_selector("#lanes")
        assert errors == [], errors  # no script error, no CSP violation (Chromium logs those as console errors)
