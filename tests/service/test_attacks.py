"""What an attacker from outside tried and what it must get now, through HTTP against the app: a lone
surrogate in JSON, the per-client image quota under concurrent requests, cross-site form posts, the
Retry-After and Cache-Control headers, and the scope of anonymous idempotency keys (docs/security.md)."""

from __future__ import annotations

import io

import pytest

from tests.service.conftest import pg_url, row_counts  # noqa: F401
from tests.service.test_hardening import make_app

SURROGATE = '"a \\udfff dress"'  # the JSON text of a string with a lone low surrogate


# -- a lone surrogate in JSON ---------------------------------------------------------------------------
@pytest.mark.parametrize("url, body", [
    ("/api/v1/jobs", '{"model": "captions", "prompt": %s}' % SURROGATE),
    ("/api/v1/jobs", '{"model": %s}' % SURROGATE),
    ("/api/v1/jobs", '{"model": "captions", %s: 1}' % SURROGATE),
    ("/api/v1/batches", '[{"model": "captions", "prompt": %s}]' % SURROGATE),
    ("/api/v1/batches", '{"items": [{"model": %s, "label": "1"}]}' % SURROGATE),
])
def test_a_lone_surrogate_in_json_is_a_400_not_a_500(tmp_path, checkpoints, url, body):
    app = make_app(tmp_path, checkpoints)
    client = app.test_client()
    response = client.post(url, data=body, content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)
    assert "lone UTF-16 surrogate" in response.get_json()["error"]
    assert row_counts(app) == {"jobs": 0, "batches": 0, "images": 0}


def test_a_lone_surrogate_in_an_uploaded_jsonl_batch_is_a_422_naming_its_line(tmp_path, checkpoints):
    app = make_app(tmp_path, checkpoints)
    client = app.test_client()
    lines = '{"model": "captions", "prompt": "a dress"}\n{"model": "captions", "prompt": %s}\n' % SURROGATE
    response = client.post("/api/v1/batches", data={"file": (io.BytesIO(lines.encode()), "b.jsonl")},
                           content_type="multipart/form-data")
    assert response.status_code == 422
    body = response.get_json()
    assert body["line"] == 2 and "lone UTF-16 surrogate" in body["error"]
    assert row_counts(app) == {"jobs": 0, "batches": 0, "images": 0}


def test_a_surrogate_pair_is_a_character_and_passes(tmp_path, checkpoints):
    app = make_app(tmp_path, checkpoints)
    response = app.test_client().post("/api/v1/jobs", data='{"model": "captions", "prompt": "a \\ud83d\\ude00 dress"}',
                                      content_type="application/json")
    assert response.status_code == 202, response.get_json()


# -- the image quota under concurrent requests -----------------------------------------------------------
def send_at_once(app, count: int, body: dict, **kwargs) -> list:
    """``count`` POST /api/v1/jobs from one client, released together from as many threads."""
    import threading

    barrier, responses = threading.Barrier(count), [None] * count

    def send(i: int) -> None:
        client = app.test_client()
        barrier.wait()
        responses[i] = client.post("/api/v1/jobs", json=body, **kwargs)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return responses


def images_in_flight(app) -> int:
    from sqlalchemy import func, select

    from app.core.extensions import db
    from app.core.tables import Job

    with app.app_context():
        return db.session.scalar(select(func.coalesce(func.sum(Job.n), 0)).where(Job.status == "queued"))


def assert_quota_holds(app) -> None:
    """40 simultaneous 64-image jobs against a quota of 1,024 images: 16 accepted, 24 told to wait."""
    responses = send_at_once(app, 40, {"label": "1", "n": 64})
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [202] * 16 + [429] * 24, statuses
    assert images_in_flight(app) == 1024
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["Retry-After"] == str(refused.get_json()["retry_after"])


def test_the_image_quota_holds_under_concurrent_requests_on_sqlite(tmp_path, checkpoints):
    assert_quota_holds(make_app(tmp_path, checkpoints))


@pytest.mark.integration
def test_the_image_quota_holds_under_concurrent_requests_on_postgresql(tmp_path, checkpoints, pg_url):
    app = make_app(tmp_path, checkpoints, SQLALCHEMY_DATABASE_URI=pg_url)
    try:
        assert_quota_holds(app)
    finally:
        with app.app_context():
            from app.core.extensions import db
            from app.services.outbox import sweeper_for

            sweeper_for(app).flush()  # before the database is dropped
            db.session.remove()
            db.engine.dispose()


# -- Retry-After only where it belongs --------------------------------------------------------------------
def test_retry_after_only_on_answers_that_ask_to_retry(tmp_path, checkpoints):
    app = make_app(tmp_path, checkpoints, MAX_IMAGES_IN_FLIGHT_PER_CLIENT=64, RATELIMIT_DEFAULT="4 per minute")
    client = app.test_client()
    ok = client.get("/api/v1/models")
    assert ok.status_code == 200 and "Retry-After" not in ok.headers and "X-RateLimit-Limit" in ok.headers
    created = client.post("/api/v1/jobs", json={"label": "1", "n": 64})
    assert created.status_code == 202 and "Retry-After" not in created.headers
    # over the image quota: the header says what the body says
    over = client.post("/api/v1/jobs", json={"label": "1", "n": 1})
    assert over.status_code == 429
    assert over.headers["Retry-After"] == str(over.get_json()["retry_after"]) == "30"
    assert "retry after 30 s" in over.get_json()["error"]
    # a request that can never fit: a final 422, nothing to retry
    never = client.post("/api/v1/batches", json=[{"label": "1", "n": 64}] * 500)
    assert never.status_code == 422 and "Retry-After" not in never.headers
    assert "can never be accepted" in never.get_json()["error"]
    # the rate limit's own 429 keeps its Retry-After
    limited = [client.get("/api/v1/models") for _ in range(4)][-1]
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    assert client.get("/", environ_base={"REMOTE_ADDR": "10.9.9.9"}).headers.get("Retry-After") is None


# -- cross-site form posts ---------------------------------------------------------------------------------
CSV = b"model,label,n\ntiny,1,2\n"


@pytest.mark.parametrize("headers", [
    {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
    {"Sec-Fetch-Site": "same-site"},
    {"Origin": "https://evil.example"},  # a browser without Fetch Metadata
    {"Origin": "null"},  # a sandboxed frame or a data: page
])
def test_another_sites_form_cannot_post_to_the_api(tmp_path, checkpoints, headers):
    app = make_app(tmp_path, checkpoints)
    client = app.test_client()
    response = client.post("/api/v1/batches", data={"file": (io.BytesIO(CSV), "b.csv")},
                           content_type="multipart/form-data", headers=headers)
    assert response.status_code == 403 and "cross-site" in response.get_json()["error"]
    response = client.post("/api/v1/jobs", data='{"label": "1"}', content_type="text/plain", headers=headers)
    assert response.status_code == 403
    assert row_counts(app) == {"jobs": 0, "batches": 0, "images": 0}


@pytest.mark.parametrize("headers", [
    {},  # curl, scripts
    {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"},  # this site's own pages
    {"Origin": "http://localhost"},
    {"Sec-Fetch-Site": "none"},  # typed by the user
])
def test_scripts_and_this_sites_pages_still_post(tmp_path, checkpoints, headers):
    app = make_app(tmp_path, checkpoints)
    client = app.test_client()
    response = client.post("/api/v1/batches", data={"file": (io.BytesIO(CSV), "b.csv")},
                           content_type="multipart/form-data", headers=headers)
    assert response.status_code == 202, response.get_json()
    # reading stays open to every site (the answers are public)
    assert client.get("/api/v1/models", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200


# -- anonymous idempotency keys ------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["retry-1", "0000000000000001", "aaaaaaaabbbbbbbbcccc"])
def test_an_anonymous_client_must_send_an_unguessable_idempotency_key(tmp_path, checkpoints, key):
    """Clients behind one NAT share an address, so an anonymous key is a secret: a replay answers with the job
    and its cancel secret. A guessable key (a counter, a word) is refused before anything is stored."""
    app = make_app(tmp_path, checkpoints)
    client = app.test_client()
    response = client.post("/api/v1/jobs", json={"label": "1"}, headers={"Idempotency-Key": key})
    assert response.status_code == 422 and "at least 16 characters" in response.get_json()["error"]
    assert row_counts(app) == {"jobs": 0, "batches": 0, "images": 0}


def test_a_token_may_use_any_idempotency_key(tmp_path, checkpoints):
    from tests.service.test_hardening import token_of

    app = make_app(tmp_path, checkpoints)
    client, headers = app.test_client(), {**token_of(app), "Idempotency-Key": "retry-1"}
    first = client.post("/api/v1/jobs", json={"label": "1"}, headers=headers)
    again = client.post("/api/v1/jobs", json={"label": "1"}, headers=headers)
    assert first.status_code == again.status_code == 202 and first.get_json()["id"] == again.get_json()["id"]
