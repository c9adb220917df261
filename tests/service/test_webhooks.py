"""Webhooks through a real Celery worker (SQLite and the embedded broker) to a receiver on loopback, which an
operator setting allows: one signed delivery per event, retried after a failure, recorded on the job; and the
request-time checks (SSRF guard, events, a token)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.service.conftest import wait_for
from tests.service.test_metrics import admin_token, make_app
from tests.support.faults import InjectedFaults

pytestmark = pytest.mark.integration


class Receiver:
    def __init__(self, fail_first: int = 0):
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((dict(self.headers), body))
                status = 500 if len(receiver.calls) <= receiver.fail_first else 204
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?x=1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver(fail_first=1)
    yield r
    r.close()


def test_signed_deliveries_through_a_real_worker(tmp_path, checkpoints, start_worker, receiver):
    app, config = make_app(tmp_path, checkpoints, WEBHOOK_ALLOW_NETWORKS=["127.0.0.0/8"], WEBHOOK_INTERVAL=0.2,
                           WEBHOOK_RETRY_BASE=0.2)
    token = admin_token(app, admin=False)
    auth = {"Authorization": f"Bearer {token}"}
    client = app.test_client()
    secret = client.get("/api/v1/webhook-secret", headers=auth).get_json()["secret"]
    assert client.get("/api/v1/webhook-secret", headers=auth).get_json()["secret"] == secret  # stable
    assert client.get("/api/v1/webhook-secret").status_code == 401

    ids = [client.post("/api/v1/jobs", headers=auth, json={"label": "2", "seed": i, "webhook": receiver.url})
           .get_json()["id"] for i in range(2)]
    both = client.post("/api/v1/jobs", headers=auth, json={"label": "5", "webhook": receiver.url,
                                                           "webhook_events_filter": ["start", "completed"]})
    assert both.status_code == 202
    ids.append(both.get_json()["id"])
    start_worker(config)

    def delivered():
        events = {(json.loads(body)["job"]["id"], json.loads(body)["event"]) for _, body in receiver.calls}
        return len(events) == 4 and events
    events = wait_for(delivered, 60, "the four webhook events to be delivered", interval=0.2)
    assert events == {(ids[0], "completed"), (ids[1], "completed"), (ids[2], "start"), (ids[2], "completed")}
    wait_for(lambda: len(receiver.calls) == 5, 10, "the failed first try to be repeated")
    # let a few more dispatcher passes run: nothing is sent twice
    import time
    time.sleep(1.5)
    assert len(receiver.calls) == 5
    ok = receiver.calls[1:]
    assert len({headers["Webhook-Id"] for headers, _ in ok}) == 4
    for headers, body in receiver.calls:
        expected = hmac.new(secret.encode(), f"{headers['Webhook-Timestamp']}.".encode() + body,
                            hashlib.sha256).hexdigest()
        assert headers["Webhook-Signature"] == f"v1={expected}"
        payload = json.loads(body)
        if payload["event"] == "completed":
            assert payload["job"]["status"] == "succeeded" and len(payload["job"]["images"]) == 1
    assert receiver.calls[0][0]["Webhook-Id"] == receiver.calls[1][0]["Webhook-Id"] or \
        receiver.calls[0][0]["Webhook-Id"] in {h["Webhook-Id"] for h, _ in ok}  # the retry repeats its id

    # recorded per job, shown to its token only
    job = client.get(f"/api/v1/jobs/{ids[2]}", headers=auth).get_json()
    assert job["webhook"]["url"] == receiver.url
    assert sorted((d["event"], d["state"]) for d in job["webhook"]["deliveries"]) == [
        ("completed", "delivered"), ("start", "delivered")]
    assert "webhook" not in client.get(f"/api/v1/jobs/{ids[2]}").get_json()


@pytest.mark.parametrize("body, message", [
    ({"webhook": "http://10.1.2.3/hook"}, "private"),
    ({"webhook": "http://169.254.169.254/latest/meta-data"}, "private"),
    ({"webhook": "http://[::1]:8080/"}, "private"),
    ({"webhook": "http://localhost/"}, "localhost"),
    ({"webhook": "ftp://example.com/"}, "http or https"),
    ({"webhook": "https://user:pw@example.com/"}, "credentials"),
    ({"webhook": "https://example.com/", "webhook_events_filter": ["output"]}, "unknown webhook event"),
    ({"webhook": "https://example.com/", "webhook_events_filter": []}, "non-empty list"),
    ({"webhook_events_filter": ["start"]}, "needs a webhook"),
    ({"webhook": 5}, "http or https"),
])
def test_bad_or_refused_webhooks_are_422_and_store_nothing(tmp_path, checkpoints, body, message):
    from tests.service.conftest import row_counts

    app, _ = make_app(tmp_path, checkpoints)
    token = admin_token(app, admin=False)
    client = app.test_client()
    response = client.post("/api/v1/jobs", headers={"Authorization": f"Bearer {token}"}, json={"label": "1", **body})
    assert response.status_code == 422, response.get_json()
    assert message in response.get_json()["error"]
    batch = client.post("/api/v1/batches", headers={"Authorization": f"Bearer {token}"},
                        json=[{"label": "1"}, {"label": "1", **body}])
    assert batch.status_code == 422 and "item 2" in batch.get_json()["error"]
    assert row_counts(app)["jobs"] == 0


def test_a_webhook_needs_a_token(tmp_path, checkpoints):
    app, _ = make_app(tmp_path, checkpoints)
    response = app.test_client().post("/api/v1/jobs", json={"label": "1", "webhook": "https://example.com/h"})
    assert response.status_code == 422 and "API token" in response.get_json()["error"]


def test_a_batch_webhook_is_recorded_once_when_the_whole_batch_has_ended(tmp_path, checkpoints):
    from sqlalchemy import select, update

    from app.core.extensions import db
    from app.core.tables import Batch, Job, WebhookDelivery
    from app.services.webhooks import body_of, record_events
    from tests.service.conftest import row_counts

    app, _ = make_app(tmp_path, checkpoints, WEBHOOK_ALLOW_NETWORKS=["127.0.0.0/8"])
    auth = {"Authorization": f"Bearer {admin_token(app, admin=False)}"}
    client = app.test_client()
    hook = "http://127.0.0.1:9/batch-hook"
    # refused before anything is stored: no token, an unknown field, a bad filter
    for headers, body, message in [({}, {"items": [{"label": "1"}], "webhook": hook}, "API token"),
                                   (auth, {"items": [{"label": "1"}], "webhook": hook, "x": 1}, "unknown batch field"),
                                   (auth, {"items": [{"label": "1"}], "webhook": hook,
                                           "webhook_events_filter": ["output"]}, "unknown webhook event")]:
        refused = client.post("/api/v1/batches", headers=headers, json=body)
        assert refused.status_code == 422 and message in refused.get_json()["error"], refused.get_json()
    assert row_counts(app)["batches"] == 0

    created = client.post("/api/v1/batches", headers=auth, json={
        "items": [{"label": "1"}, {"label": "2", "n": 2}], "webhook": hook, "webhook_events_filter": ["completed"]})
    assert created.status_code == 202, created.get_json()
    batch = created.get_json()
    assert batch["webhook"] == {"url": hook, "events_filter": ["completed"], "deliveries": []}
    assert "webhook" not in client.get(batch["url"]).get_json()  # the URL is the owner's (and admins') only
    upload = client.post("/api/v1/batches", headers=auth, content_type="multipart/form-data", data={
        "file": (__import__("io").BytesIO(b"label\n3\n"), "b.csv"), "webhook": hook,
        "webhook_events_filter": "start, completed"})
    assert upload.get_json()["webhook"]["events_filter"] == ["start", "completed"]

    job_ids = [job["id"] for job in batch["jobs"]]

    def batch_events() -> list[str]:
        with app.app_context():
            record_events()
            return list(db.session.scalars(select(WebhookDelivery.event).where(WebhookDelivery.batch_id == batch["id"])))

    def set_status(job_id: str, status: str) -> None:
        with app.app_context():
            db.session.execute(update(Job).where(Job.id == job_id).values(status=status, started_at=db.func.now()))
            db.session.commit()

    set_status(job_ids[0], "succeeded")
    assert batch_events() == []  # one job still queued: the batch has not ended
    set_status(job_ids[1], "failed")
    assert batch_events() == ["completed"]
    assert batch_events() == ["completed"]  # recorded once
    with app.app_context():
        assert db.session.get(Batch, batch["id"]).webhook_pending is False
        delivery = db.session.scalars(select(WebhookDelivery).where(WebhookDelivery.batch_id == batch["id"])).one()
        payload = body_of(delivery)
    assert payload["type"] == "batch" and payload["batch"]["id"] == batch["id"]
    assert payload["batch"]["counts"]["succeeded"] == 1 and payload["batch"]["counts"]["failed"] == 1


def test_one_signed_delivery_per_finished_job_across_a_worker_kill_and_a_web_restart(
        tmp_path, checkpoints, start_worker):
    """Real processes: gunicorn takes the requests, a worker is SIGKILLed (its whole process group) while a job
    runs, gunicorn is stopped and started again, a second worker finishes: the receiver gets each job's
    ``completed`` and the batch's once, signed."""
    import urllib.request

    from sqlalchemy import select

    from app.core.extensions import db
    from app.core.tables import WebhookDelivery
    from tests.service.test_worker import job_row, wait_status
    from tests.web.test_browser import WebServer

    receiver, web = Receiver(), None
    try:
        app, config = make_app(tmp_path, checkpoints, WEBHOOK_ALLOW_NETWORKS=["127.0.0.0/8"], WEBHOOK_INTERVAL=0.2,
                               SECRET_KEY_FILE=str(tmp_path / "secret_key"))
        token = admin_token(app, admin=False)
        secret = app.test_client().get("/api/v1/webhook-secret",
                                       headers={"Authorization": f"Bearer {token}"}).get_json()["secret"]
        web = WebServer(config, tmp_path / "gunicorn.log").start()

        def post(path: str, body: object) -> dict:
            request = urllib.request.Request(f"{web.url}/api/v1{path}", data=json.dumps(body).encode(), headers={
                "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 202
                return json.loads(response.read())

        first = post("/jobs", {"label": "1", "seed": 1, "webhook": receiver.url})["id"]
        batch = post("/batches", {"items": [{"label": "2", "seed": 2}, {"label": "3", "seed": 3}],
                                  "webhook": receiver.url})
        killed_job = batch["jobs"][0]["id"]
        # FOR TESTS ONLY: every job takes 2 s, so the worker is killed in the middle of one
        doomed = start_worker(config, faults=InjectedFaults(task_delay=2))
        wait_status(app, first, ("succeeded",), timeout=120)

        def first_delivered() -> bool:
            with app.app_context():
                return db.session.scalar(select(WebhookDelivery.state).where(WebhookDelivery.job_id == first)) \
                    == "delivered"
        wait_for(first_delivered, 60, "the first job's delivery to be recorded")  # none is in flight at the kill
        wait_status(app, killed_job, ("running",), timeout=60)
        doomed.kill()
        assert job_row(app, killed_job).status == "running"
        second = start_worker(config, wait=False)  # starts while the web restarts

        web.stop()
        web.start()  # the same port, a new master and workers
        last = post("/jobs", {"label": "4", "seed": 4, "webhook": receiver.url,
                              "webhook_events_filter": ["completed"]})["id"]
        second.wait_ready()
        ids = [first, last, batch["id"]]

        def all_delivered():
            events = {json.loads(body).get("job", json.loads(body).get("batch"))["id"] for _, body in receiver.calls}
            return events == set(ids)
        wait_for(all_delivered, 120, "the two jobs' and the batch's deliveries", interval=0.2)
        for job_id in (first, last, *[job["id"] for job in batch["jobs"]]):
            assert job_row(app, job_id).status == "succeeded"
        assert job_row(app, killed_job).attempts == 2  # killed once, run again by the second worker
        import time
        time.sleep(1)  # a few more dispatcher passes: nothing is sent twice
        assert len(receiver.calls) == 3, [json.loads(body) for _, body in receiver.calls]
        assert len({headers["Webhook-Id"] for headers, _ in receiver.calls}) == 3
        for headers, body in receiver.calls:
            expected = hmac.new(secret.encode(), f"{headers['Webhook-Timestamp']}.".encode() + body,
                                hashlib.sha256).hexdigest()
            assert headers["Webhook-Signature"] == f"v1={expected}" and headers["Webhook-Event"] == "completed"
        bodies = {json.loads(body)["type"]: json.loads(body) for _, body in receiver.calls}
        assert bodies["batch"]["batch"]["counts"]["succeeded"] == 2
    finally:
        if web is not None:
            web.stop()
        receiver.close()
