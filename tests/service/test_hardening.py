"""The service's hardening rules, each tried the way an attacker or a careless client would: quotas and
fairness, ownership of jobs and batches, security headers, input that must never give a 500, and an OpenAPI
document that agrees with the server. The secret key, sessions, the sign-in throttle and logout are tested in
tests/admin/test_access.py, the anonymous health answer in tests/service/test_api.py; the fuzzing is tests/fuzz/."""

from __future__ import annotations

import io
import re
import threading
import time
from pathlib import Path

import pytest

from tests.service.conftest import base_config, register_test_models

TEMPLATES = Path(__file__).resolve().parents[2] / "app" / "templates"


def make_app(tmp_path, checkpoints, **config):
    from app import create_app
    from app.core.migrate import upgrade

    app = create_app(base_config(tmp_path, **config))
    upgrade(app)
    with app.app_context():
        register_test_models(checkpoints)
    return app


def token_of(app, name: str = "script-user", admin: bool = False) -> dict[str, str]:
    from app.services.accounts import create_user, issue_token

    with app.app_context():
        return {"Authorization": f"Bearer {issue_token(create_user(name, 'a long enough password', is_admin=admin)).token}"}


def sent_queues(monkeypatch) -> list[tuple[str, str]]:
    """(queue, job id) of each generate message the services publish from now on (through the outbox)."""
    from app.services import outbox

    sent: list[tuple[str, str]] = []
    monkeypatch.setattr(outbox, "publish", lambda task, ref_id, q: sent.append((q, ref_id)))
    return sent


# -- quotas and fairness --------------------------------------------------------------------------------
def test_a_client_over_its_image_quota_gets_429_with_retry_after(tmp_path, checkpoints):
    app = make_app(tmp_path, checkpoints, MAX_IMAGES_IN_FLIGHT_PER_CLIENT=100)
    client = app.test_client()
    # 500 items x 64 images can never fit the quota: refused whole with a final 422 (no "retry later")
    resp = client.post("/api/v1/batches", json=[{"model": "tiny", "label": "1", "n": 64}] * 500)
    assert resp.status_code == 422 and "Retry-After" not in resp.headers and "100" in resp.get_json()["error"]
    assert client.post("/api/v1/jobs", json={"label": "1", "n": 64}).status_code == 202
    resp = client.post("/api/v1/jobs", json={"label": "1", "n": 64})  # 128 > 100
    assert resp.status_code == 429 and resp.headers["Retry-After"]
    # another client (address) has its own quota
    other = client.post("/api/v1/jobs", json={"label": "1", "n": 64}, environ_base={"REMOTE_ADDR": "10.1.1.1"})
    assert other.status_code == 202


def test_requests_per_minute_are_limited_per_client_with_a_json_429(tmp_path, checkpoints):
    app = make_app(tmp_path, checkpoints, RATELIMIT_DEFAULT="5 per minute", RATELIMIT_CREATE="2 per minute")
    client = app.test_client()
    statuses = [client.get("/api/v1/models").status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    resp = client.get("/api/v1/models")
    assert int(resp.headers["Retry-After"]) > 0 and "too many requests" in resp.get_json()["error"]
    assert client.get("/api/v1/models", environ_base={"REMOTE_ADDR": "10.2.2.2"}).status_code == 200
    creates = [client.post("/api/v1/jobs", json={"label": "1"}, environ_base={"REMOTE_ADDR": "10.3.3.3"}).status_code
               for _ in range(3)]
    assert creates == [202, 202, 429]


def test_a_token_is_its_own_client(tmp_path, checkpoints):
    app = make_app(tmp_path, checkpoints, RATELIMIT_DEFAULT="3 per minute")
    client, headers = app.test_client(), token_of(app)
    for _ in range(3):
        client.get("/api/v1/models")
    assert client.get("/api/v1/models").status_code == 429
    assert client.get("/api/v1/models", headers=headers).status_code == 200  # same address, other client


def test_batches_and_large_jobs_go_to_the_bulk_lane(tmp_path, checkpoints, monkeypatch):
    """A large batch queues on ``bulk``; a 1-image job on ``generate``, which the worker reads in turn with
    ``bulk`` (Procfile: -Q generate,bulk), so it no longer waits behind the whole batch."""
    app = make_app(tmp_path, checkpoints)
    sent = sent_queues(monkeypatch)
    client = app.test_client()
    batch = client.post("/api/v1/batches", json=[{"label": "1", "n": 4}] * 20).get_json()
    job = client.post("/api/v1/jobs", json={"label": "2"}).get_json()
    big = client.post("/api/v1/jobs", json={"label": "2", "n": 64}).get_json()
    lanes = dict((job_id, queue) for queue, job_id in sent)
    assert {lanes[j["id"]] for j in batch["jobs"]} == {"bulk"}
    assert lanes[job["id"]] == "generate" and lanes[big["id"]] == "bulk"
    from app.core.queue import QUEUES

    assert "bulk" in QUEUES
    procfile = (Path(__file__).resolve().parents[2] / "Procfile").read_text()
    assert "-Q generate,bulk " in procfile


def test_waiting_requests_are_bounded_per_process(tmp_path, checkpoints):
    """About 32 ?wait= requests held every web thread; beyond JOB_WAIT_MAX_CONCURRENT they answer at once."""
    app = make_app(tmp_path, checkpoints, JOB_WAIT_MAX_CONCURRENT=1)
    client = app.test_client()
    job_id = client.post("/api/v1/jobs", json={"label": "1"}).get_json()["id"]
    holder = threading.Thread(target=lambda: app.test_client().get(f"/api/v1/jobs/{job_id}?wait=3"))
    holder.start()
    time.sleep(0.5)  # the holder waits (the job never ends: no worker)
    t0 = time.monotonic()
    resp = client.get(f"/api/v1/jobs/{job_id}?wait=3")
    assert resp.status_code == 200 and resp.get_json()["status"] == "queued"
    assert time.monotonic() - t0 < 1.5
    holder.join(10)


# -- ownership ------------------------------------------------------------------------------------------
def test_only_the_creator_can_cancel(tmp_path, checkpoints):
    app = make_app(tmp_path, checkpoints)
    client = app.test_client()
    anon = client.post("/api/v1/jobs", json={"label": "1"}).get_json()
    assert anon["cancel_secret"]
    assert client.post(f"/api/v1/jobs/{anon['id']}/cancel").status_code == 403  # found on a page: not enough
    assert client.post(f"/api/v1/jobs/{anon['id']}/cancel", headers={"X-Cancel-Secret": "guess"}).status_code == 403
    ok = client.post(f"/api/v1/jobs/{anon['id']}/cancel", headers={"X-Cancel-Secret": anon["cancel_secret"]})
    assert ok.status_code == 200 and ok.get_json()["status"] == "canceled"

    owner, stranger = token_of(app, "owner"), token_of(app, "stranger")
    mine = client.post("/api/v1/jobs", json={"label": "1"}, headers=owner).get_json()
    assert "cancel_secret" not in mine  # a token owns what it creates
    assert client.post(f"/api/v1/jobs/{mine['id']}/cancel", headers=stranger).status_code == 403
    assert client.post(f"/api/v1/jobs/{mine['id']}/cancel", headers=owner).status_code == 200

    batch = client.post("/api/v1/batches", json=[{"label": "1"}, {"label": "2"}]).get_json()
    first = batch["jobs"][0]["id"]
    assert client.post(f"/api/v1/jobs/{first}/cancel").status_code == 403
    assert client.post(f"/api/v1/jobs/{first}/cancel", headers={"X-Cancel-Secret": batch["cancel_secret"]}
                       ).status_code == 200
    admin = token_of(app, "ops", admin=True)
    assert client.post(f"/api/v1/jobs/{batch['jobs'][1]['id']}/cancel", headers=admin).status_code == 200


def test_only_the_stored_hash_of_a_capability(tmp_path, checkpoints):
    from app.core.extensions import db
    from app.core.tables import Job

    app = make_app(tmp_path, checkpoints)
    created = app.test_client().post("/api/v1/jobs", json={"label": "1"}).get_json()
    with app.app_context():
        job = db.session.get(Job, created["id"])
        assert job.cancel_hash and created["cancel_secret"] not in job.cancel_hash


def test_the_web_form_keeps_the_capability_in_its_session(tmp_path, checkpoints):
    app = make_app(tmp_path, checkpoints)
    creator, stranger = app.test_client(), app.test_client()
    resp = creator.post("/", data={"model": "tiny", "label": "3", "n": "1"})
    assert resp.status_code == 303
    job_url = resp.headers["Location"]
    assert 'id="cancel-form"' not in stranger.get(job_url).get_data(as_text=True)
    assert stranger.post(f"{job_url}/cancel").status_code == 403
    assert 'id="cancel-form"' in creator.get(job_url).get_data(as_text=True)
    assert creator.post(f"{job_url}/cancel").status_code == 303
    assert 'data-status="canceled"' in creator.get(job_url).get_data(as_text=True)


def test_switches_anonymous_generation_and_public_gallery(tmp_path, checkpoints):
    app = make_app(tmp_path, checkpoints, ANONYMOUS_GENERATION=False, PUBLIC_GALLERY=False)
    client = app.test_client()
    assert client.post("/api/v1/jobs", json={"label": "1"}).status_code == 401
    assert client.post("/api/v1/batches", json=[{"label": "1"}]).status_code == 401
    assert client.post("/", data={"model": "tiny", "label": "3"}).status_code == 403
    assert client.post("/api/v1/jobs", json={"label": "1"}, headers=token_of(app)).status_code == 202
    assert client.get("/gallery").status_code == 404


# -- headers --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["/", "/gallery", "/models", "/api/v1/models", "/api/v1/jobs/nope", "/nope",
                                 "/admin/login", "/static/style.css"])
def test_security_headers_on_every_response(tmp_path, checkpoints, url):
    app = make_app(tmp_path, checkpoints)
    response = app.test_client().get(url)
    headers = response.headers
    response.close()
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"]


def test_no_inline_script_in_the_templates():
    """The CSP allows no inline script: every script is a file under /static."""
    for path in TEMPLATES.rglob("*.html"):
        text = path.read_text()
        for tag in re.findall(r"<script\b[^>]*>", text):
            assert "src=" in tag, (path, tag)
        assert not re.search(r"\son[a-z]+\s*=", text), path
        assert "javascript:" not in text, path


# -- input that must never give a 500 -------------------------------------------------------------------
def deep(depth: int = 5000) -> str:
    return "[" * depth + "]" * depth


def test_deeply_nested_json_is_a_400(tmp_path, checkpoints):
    app = make_app(tmp_path, checkpoints)
    client = app.test_client()
    for url in ("/api/v1/jobs", "/api/v1/batches"):
        resp = client.post(url, data='{"label": ' + deep() + "}", content_type="application/json")
        assert resp.status_code == 400 and "nested" in resp.get_json()["error"], url
    line = ('{"label": ' + deep() + "}\n").encode()
    resp = client.post("/api/v1/batches", data={"file": (io.BytesIO(line), "deep.jsonl")},
                       content_type="multipart/form-data")
    assert resp.status_code == 422


@pytest.mark.parametrize("label", ["³", "٣", "1" * 5000, "-" + "9" * 4400, "１"])
def test_labels_are_ascii_digits_of_bounded_length(tmp_path, checkpoints, label):
    app = make_app(tmp_path, checkpoints)
    client = app.test_client()
    assert client.post("/api/v1/jobs", json={"model": "tiny", "label": label}).status_code == 422
    assert client.post("/api/v1/batches", json=[{"model": "tiny", "label": label}]).status_code == 422
    csv = f"model,label\ntiny,{label}\n".encode()
    resp = client.post("/api/v1/batches", data={"file": (io.BytesIO(csv), "b.csv")},
                       content_type="multipart/form-data")
    assert resp.status_code == 422
    assert client.post("/", data={"model": "tiny", "label": label}).status_code == 422


def test_integers_in_forms_and_csv_are_ascii(tmp_path, checkpoints):
    app = make_app(tmp_path, checkpoints)
    client = app.test_client()
    assert client.post("/", data={"model": "tiny", "label": "1", "n": "٣"}).status_code == 422
    csv = "model,label,n\ntiny,1,٣\n".encode()
    resp = client.post("/api/v1/batches", data={"file": (io.BytesIO(csv), "b.csv")},
                       content_type="multipart/form-data")
    assert resp.status_code == 422
    csv = f"model,label,seed\ntiny,1,{'7' * 5000}\n".encode()
    resp = client.post("/api/v1/batches", data={"file": (io.BytesIO(csv), "b.csv")},
                       content_type="multipart/form-data")
    assert resp.status_code == 422


NUL_URLS = ["/api/v1/jobs/a%00b", "/api/v1/jobs/a%00b/cancel", "/api/v1/batches/a%00b", "/api/v1/images/a%00b",
            "/api/v1/images/a%00b.png", "/jobs/a%00b", "/batches/a%00b", "/images/a%00b", "/images/a%00b/download",
            "/models/a%00b/samples.png", "/gallery?model=a%00b", "/gallery?prompt=%00", "/?model=%00"]


def _nul_requests(client) -> None:
    for url in NUL_URLS:
        method = "POST" if url.endswith("/cancel") else "GET"
        assert client.open(url, method=method).status_code in (400, 404), url
    for body in ({"model": "ti\x00ny", "label": "1"}, {"model": "captions", "prompt": "a\x00b"}):
        assert client.post("/api/v1/jobs", json=body).status_code == 422, body
    assert client.post("/", data={"model": "ti\x00ny", "label": "1"}).status_code == 422
    assert client.post("/", data={"model": "captions", "prompt": "a\x00b"}).status_code == 422
    resp = client.post("/api/v1/batches", data={"file": (io.BytesIO(b"model,label\ntiny,1\n"), "a\x00.csv")},
                       content_type="multipart/form-data")
    assert resp.status_code in (202, 415, 422)


def test_nul_bytes_are_refused_on_sqlite(tmp_path, checkpoints):
    _nul_requests(make_app(tmp_path, checkpoints).test_client())


@pytest.mark.integration
def test_nul_bytes_are_refused_on_postgres(tmp_path, checkpoints, pg_url):
    """On PostgreSQL every lookup with a NUL byte raised psycopg.DataError (500)."""
    app = make_app(tmp_path, checkpoints, SQLALCHEMY_DATABASE_URI=pg_url)
    try:
        _nul_requests(app.test_client())
    finally:
        from app.core.extensions import db

        with app.app_context():
            db.session.remove()
            db.engine.dispose()


# -- the OpenAPI document agrees with the server --------------------------------------------------------
def test_the_openapi_document_states_the_limits(tmp_path, checkpoints):
    app = make_app(tmp_path, checkpoints)
    doc = app.test_client().get("/api/v1/openapi.json").get_json()
    wait = next(p for p in doc["paths"]["/jobs"]["post"]["parameters"] if p["name"] == "wait")
    assert wait["schema"]["maximum"] == 60
    job_request = doc["components"]["schemas"]["JobRequest"]["properties"]
    assert job_request["model"]["minLength"] == 1
    created = doc["paths"]["/jobs"]["post"]["responses"]["202"]["content"]["application/json"]["schema"]
    assert "oneOf" not in created
    upload = doc["paths"]["/batches"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert "text/csv" in upload["encoding"]["file"]["contentType"]
    options = doc["components"]["schemas"]["TrainingRequest"]["properties"]["model_options"]
    assert options["properties"]["hidden_dim"]["maximum"] <= 4096 and options["additionalProperties"] is False
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            assert "429" in operation["responses"], (method, path)


def test_admin_model_options_are_bounded(tmp_path, checkpoints):
    app = make_app(tmp_path, checkpoints)
    headers = token_of(app, "ops", admin=True)
    client = app.test_client()
    for options in ({"hidden_dim": 10**9}, {"base_channels": -1}, {"code_disc_hidden": [10**9]},
                    {"hidden_dim": 2**70}, {"upsample": "x" * 10_000}):
        resp = client.post("/api/v1/admin/trainings", headers=headers,  # digits: built in, always there
                           json={"backend": "aae-cg", "dataset": "digits", "model_options": options})
        assert resp.status_code == 422 and resp.get_json()["field"].startswith("model_options."), options
    resp = client.post("/api/v1/admin/trainings", headers=headers,
                       json={"backend": "aae-cg", "dataset": "digits", "model_options": {"hidden_dim": 64}})
    assert resp.status_code == 202


@pytest.mark.integration
def test_a_nul_in_a_sign_in_is_a_wrong_password_on_postgres(tmp_path, checkpoints, pg_url):
    app = make_app(tmp_path, checkpoints, SQLALCHEMY_DATABASE_URI=pg_url)
    try:
        resp = app.test_client().post("/admin/login", data={"username": "ad\x00min", "password": "x\x00y"})
        assert resp.status_code == 401
    finally:
        from app.core.extensions import db

        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def test_nesting_limit_does_not_depend_on_the_recursion_limit(tmp_path, checkpoints):
    # torch and other libraries raise sys.getrecursionlimit(); the depth check must not rely on it
    import sys

    from app.core.errors import MAX_JSON_DEPTH, json_depth

    before = sys.getrecursionlimit()
    sys.setrecursionlimit(max(before, 20000))
    try:
        client = make_app(tmp_path, checkpoints).test_client()
        resp = client.post("/api/v1/jobs", data='{"label": ' + deep(MAX_JSON_DEPTH + 1) + "}",
                           content_type="application/json")
        assert resp.status_code == 400 and "nested" in resp.get_json()["error"]
    finally:
        sys.setrecursionlimit(before)
    assert json_depth('{"a": "[[[{{", "b": [["\\"]"]]}') == 3  # brackets inside strings do not count
    assert json_depth(b"[]") == 1 and json_depth("7") == 0


def test_an_idempotency_key_is_scoped_by_client_and_a_retry_gets_the_same_cancel_secret(tmp_path, checkpoints):
    app = make_app(tmp_path, checkpoints)
    first, other = app.test_client(), app.test_client()
    key = {"Idempotency-Key": "4f1c2a9e-b7d3-retry"}
    body = {"label": "3", "n": 1}
    made = first.post("/api/v1/jobs", json=body, headers=key, environ_base={"REMOTE_ADDR": "10.0.0.1"}).get_json()
    again = first.post("/api/v1/jobs", json=body, headers=key, environ_base={"REMOTE_ADDR": "10.0.0.1"}).get_json()
    assert again["id"] == made["id"] and again["cancel_secret"] == made["cancel_secret"]
    theirs = other.post("/api/v1/jobs", json=body, headers=key, environ_base={"REMOTE_ADDR": "10.0.0.2"}).get_json()
    assert theirs["id"] != made["id"] and theirs["cancel_secret"] != made["cancel_secret"]
    # the other client's secret does not cancel the first client's job; the first one's does
    cancel = f"/api/v1/jobs/{made['id']}/cancel"
    assert other.post(cancel, headers={"X-Cancel-Secret": theirs["cancel_secret"]}).status_code == 403
    assert first.post(cancel, headers={"X-Cancel-Secret": made["cancel_secret"]}).status_code == 200
