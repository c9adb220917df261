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
