"""The JSON API on the Flask test client (SQLite, embedded broker, no worker)."""

from __future__ import annotations

import io
import json

import pytest

from tests.service.conftest import broker_messages, broker_payloads, row_counts


def post_job(client, body, **kwargs):
    return client.post("/api/v1/jobs", json=body, **kwargs)


def test_create_job_stores_row_and_sends_one_message(app, client):
    before, msgs = row_counts(app), broker_messages(app)
    resp = post_job(client, {"model": "tiny", "label": "7", "n": 3, "seed": 11})
    assert resp.status_code == 202
    body = resp.get_json()
    assert body["status"] == "queued" and body["url"] == f"/api/v1/jobs/{body['id']}"
    assert resp.headers["Location"] == body["url"]
    assert row_counts(app)["jobs"] == before["jobs"] + 1
    assert broker_messages(app) == msgs + 1
    message = broker_payloads(app)[-1]
    assert message["headers"]["task"] == "workers.tasks.generate_images"
    assert message["headers"]["argsrepr"] == repr([body["id"]])  # the id only, never a row
    assert message["headers"]["timelimit"] == [None, None]  # the worker's own limits apply
    job = client.get(body["url"]).get_json()
    assert (job["model"], job["label"], job["n"], job["seed"], job["status"]) == ("tiny", "7", 3, 11, "queued")
    assert job["images"] == [] and job["error"] is None and job["progress"] == 0


def test_seed_is_random_when_absent_and_stored(client):
    seeds = {client.get(post_job(client, {"model": "tiny", "label": 1}).get_json()["url"]).get_json()["seed"]
             for _ in range(3)}
    assert all(isinstance(s, int) and s >= 0 for s in seeds)
    assert len(seeds) > 1


def test_other_conditions_are_accepted(client):
    assert post_job(client, {"model": "clusters", "cluster": 4}).status_code == 202
    assert post_job(client, {"model": "clusters"}).status_code == 202  # a random cluster
    assert post_job(client, {"model": "uncond", "n": 64}).status_code == 202
    resp = post_job(client, {"model": "captions", "prompt": "  a bold three "})
    assert resp.status_code == 202
    assert client.get(resp.get_json()["url"]).get_json()["prompt"] == "a bold three"
    assert post_job(client, {"label": "0"}).status_code == 202  # the DEFAULT_MODEL


BAD_JOBS = [
    ({"model": "nope", "label": "1"}, 422, "unknown model"),
    ({"model": "tiny", "label": "11"}, 422, "unknown label"),
    ({"model": "tiny", "label": "cat"}, 422, "unknown label"),
    ({"model": "tiny"}, 422, "needs a label"),
    ({"model": "tiny", "cluster": 1}, 422, "does not take a cluster"),
    ({"model": "tiny", "prompt": "a two"}, 422, "does not take a prompt"),
    ({"model": "tiny", "label": "1", "cluster": 2}, 422, "only one of"),
    ({"model": "uncond", "label": "1"}, 422, "does not take a label"),
    ({"model": "clusters", "cluster": 10}, 422, "cluster must be"),
    ({"model": "clusters", "cluster": "3"}, 422, "cluster must be"),
    ({"model": "tiny", "label": "1", "n": 0}, 422, "n must be"),
    ({"model": "tiny", "label": "1", "n": 65}, 422, "n must be"),
    ({"model": "tiny", "label": "1", "n": 2.5}, 422, "n must be"),
    ({"model": "tiny", "label": "1", "n": True}, 422, "n must be"),
    ({"model": "tiny", "label": "1", "seed": "12"}, 422, "seed must be"),
    ({"model": "tiny", "label": "1", "seed": 1.5}, 422, "seed must be"),
    ({"model": "tiny", "label": "1", "seed": -1}, 422, "seed must be"),
    ({"model": "tiny", "label": "1", "seed": 2**60}, 422, "seed must be"),
    ({"model": "captions", "prompt": ""}, 422, "non-empty"),
    ({"model": "captions", "prompt": "   \n\t"}, 422, "non-empty"),
    ({"model": "captions", "prompt": "x" * 501}, 422, "limit is 500"),
    ({"model": "captions"}, 422, "needs a prompt"),
    ({"model": "tiny", "label": "1", "colour": "red"}, 422, "unknown field"),
    (["model", "tiny"], 422, "JSON object"),
]


@pytest.mark.parametrize("body,status,message", BAD_JOBS)
def test_bad_job_is_rejected_and_stores_nothing(app, client, body, status, message):
    before, msgs = row_counts(app), broker_messages(app)
    resp = post_job(client, body)
    assert resp.status_code == status, resp.get_json()
    assert message in resp.get_json()["error"]
    assert row_counts(app) == before and broker_messages(app) == msgs


def test_malformed_json_wrong_type_and_oversized(app, client):
    before, msgs = row_counts(app), broker_messages(app)
    resp = client.post("/api/v1/jobs", data="{not json", content_type="application/json")
    assert resp.status_code == 400 and "malformed JSON" in resp.get_json()["error"]
    resp = client.post("/api/v1/jobs", data="model=tiny", content_type="application/x-www-form-urlencoded")
    assert resp.status_code == 415 and "application/json" in resp.get_json()["error"]
    resp = client.post("/api/v1/jobs", data=json.dumps({"model": "tiny", "label": "1", "pad": "x" * 2_000_000}),
                       content_type="application/json")
    assert resp.status_code == 413 and "too large" in resp.get_json()["error"]
    assert row_counts(app) == before and broker_messages(app) == msgs


def test_json_errors_for_unknown_routes_and_methods(client):
    resp = client.get("/api/v1/jobs/does-not-exist")
    assert resp.status_code == 404 and "no job" in resp.get_json()["error"]
    resp = client.get("/api/v1/nowhere")
    assert resp.status_code == 404 and resp.is_json
    resp = client.delete("/api/v1/jobs")
    assert resp.status_code == 405 and resp.is_json and "POST" in resp.headers["Allow"]
    assert client.get("/api/v1/images/nope").status_code == 404
    assert client.get("/api/v1/images/nope.png").status_code == 404
    assert client.get("/api/v1/batches/nope").get_json()["error"].startswith("no batch")
    # outside /api the HTML error pages stay
    resp = client.get("/no-such-page")
    assert resp.status_code == 404 and not resp.is_json


def test_internal_errors_are_json_under_api(app, client, monkeypatch):
    from app.api import service

    def boom():
        raise RuntimeError("database on fire")

    monkeypatch.setattr(service, "serving_models", boom)
    resp = client.get("/api/v1/models")
    assert resp.status_code == 500 and resp.get_json() == {"error": "internal server error"}


def test_cancel(app, client):
    job = post_job(client, {"model": "tiny", "label": "2"}).get_json()
    assert client.post(f"{job['url']}/cancel").status_code == 403  # only its creator may cancel it
    mine = {"X-Cancel-Secret": job["cancel_secret"]}
    resp = client.post(f"{job['url']}/cancel", headers=mine)
    assert resp.status_code == 200 and resp.get_json()["status"] == "canceled"
    resp = client.post(f"{job['url']}/cancel", headers=mine)
    assert resp.status_code == 409 and "already canceled" in resp.get_json()["error"]
    assert client.post("/api/v1/jobs/nope/cancel").status_code == 404


def test_models(client):
    models = {m["name"]: m for m in client.get("/api/v1/models").get_json()["models"]}
    assert set(models) == {"tiny", "clusters", "captions", "uncond", "broken"}
    tiny = models["tiny"]
    assert tiny["backend"] == "aae-cg" and tiny["version"] == 1 and tiny["serving"] is True
    assert tiny["supported_conditions"] == ["class"] and tiny["class_names"] == [str(i) for i in range(10)]
    assert models["clusters"]["supported_conditions"] == ["cluster", "none"]
    assert models["clusters"]["num_clusters"] == 10
    assert models["captions"]["supported_conditions"] == ["text"]


def admin_headers(app) -> dict[str, str]:
    """A bearer token of a new admin of ``app``."""
    from app.services.accounts import create_user, issue_token

    with app.app_context():
        return {"Authorization": f"Bearer {issue_token(create_user('ops', 'a long enough password')).token}"}


def test_health(app, client):
    resp = client.get("/api/v1/health")
    assert resp.status_code == 200 and resp.get_json() == {"status": "ok"}  # anonymous: no details about the database or broker
    body = client.get("/api/v1/health", headers=admin_headers(app)).get_json()
    assert body["status"] == "ok" and body["database"]["ok"] and body["broker"]["ok"]


def test_health_reports_an_unreachable_broker(tmp_path, checkpoints, caplog):
    from app import create_app
    from app.core.migrate import upgrade
    from tests.service.conftest import base_config, free_port

    app = create_app(base_config(tmp_path, CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0"))
    upgrade(app)
    resp = app.test_client().get("/api/v1/health")
    # anonymous callers learn that something is down, not what or why (the exception text names hosts)
    assert resp.status_code == 503 and resp.get_json() == {"status": "degraded"}
    assert "broker" in caplog.text  # the details go to the log
    resp = app.test_client().get("/api/v1/health", headers=admin_headers(app))
    body = resp.get_json()
    assert resp.status_code == 503 and body["database"]["ok"] and not body["broker"]["ok"]
    assert body["status"] == "degraded" and body["broker"]["error"]


# -- batches -----------------------------------------------------------------------------------------
def test_batch_json_list(app, client):
    msgs = broker_messages(app)
    items = [{"model": "tiny", "label": str(i % 10), "n": 2, "seed": i} for i in range(5)]
    resp = client.post("/api/v1/batches", json=items)
    assert resp.status_code == 202
    batch = resp.get_json()
    assert batch["total"] == 5 and batch["status"] == "queued" and batch["counts"]["queued"] == 5
    assert broker_messages(app) == msgs + 5
    again = client.get(batch["url"]).get_json()
    assert [j["id"] for j in again["jobs"]] == [j["id"] for j in batch["jobs"]]
    assert client.get(batch["jobs"][3]["url"]).get_json()["label"] == "3"
    assert client.post("/api/v1/batches", json={"items": items[:2]}).status_code == 202


def test_batch_csv_and_jsonl_uploads(app, client):
    csv_text = "model,label,n,seed\ntiny,3,2,5\ntiny,seven,1,\n".replace("seven", "7")
    resp = client.post("/api/v1/batches", data={"file": (io.BytesIO(csv_text.encode()), "jobs.csv")},
                       content_type="multipart/form-data")
    assert resp.status_code == 202, resp.get_json()
    assert resp.get_json()["total"] == 2 and resp.get_json()["source"] == "jobs.csv"
    jsonl = '{"model": "tiny", "label": 1}\n\n{"model": "clusters", "cluster": 2, "n": 4}\n'
    resp = client.post("/api/v1/batches", data={"file": (io.BytesIO(jsonl.encode()), "jobs.jsonl")},
                       content_type="multipart/form-data")
    assert resp.status_code == 202 and resp.get_json()["total"] == 2


@pytest.mark.parametrize("filename,content,status,message", [
    ("jobs.csv", "model,label,n\ntiny,1,2\ntiny,1,99\ntiny,2,1\n", 422, "line 3: n must be"),
    ("jobs.csv", "model,label,n\ntiny,1,2\ntiny,banana,1\n", 422, "line 3: unknown label"),
    ("jobs.csv", "model,label,n\ntiny,1,two\n", 422, "line 2: n must be an integer"),
    ("jobs.csv", "model,label,n\ntiny,1,2,extra\n", 422, "line 2: more cells"),
    ("jobs.csv", "", 422, "empty CSV"),
    ("jobs.jsonl", '{"model": "tiny", "label": 1}\n{"model": "tiny", "label": 1\n', 422, "line 2: invalid JSON"),
    ("jobs.jsonl", '{"model": "tiny", "label": 1}\n{"model": "tiny", "prompt": "x"}\n', 422, "line 2:"),
    ("jobs.txt", "model\ntiny\n", 415, "must be .csv or .jsonl"),
    ("jobs.csv", b"\xff\xfe\x00bad", 422, "not UTF-8"),
])
def test_bad_batch_file_stores_nothing(app, client, filename, content, status, message):
    before, msgs = row_counts(app), broker_messages(app)
    data = content if isinstance(content, bytes) else content.encode()
    resp = client.post("/api/v1/batches", data={"file": (io.BytesIO(data), filename)},
                       content_type="multipart/form-data")
    assert resp.status_code == status, resp.get_json()
    assert message in resp.get_json()["error"]
    assert row_counts(app) == before and broker_messages(app) == msgs


def test_bad_json_batches_store_nothing(app, client):
    before, msgs = row_counts(app), broker_messages(app)
    items = [{"model": "tiny", "label": "1"}] * 3 + [{"model": "tiny", "label": "1", "n": -4}]
    resp = client.post("/api/v1/batches", json=items)
    assert resp.status_code == 422 and resp.get_json()["error"].startswith("item 4:")
    assert resp.get_json()["item"] == 4
    assert client.post("/api/v1/batches", json=[]).status_code == 422
    assert client.post("/api/v1/batches", json={"model": "tiny"}).status_code == 422
    assert client.post("/api/v1/batches", data="[{", content_type="application/json").status_code == 400
    assert client.post("/api/v1/batches", data="x", content_type="text/plain").status_code == 415
    resp = client.post("/api/v1/batches", data={"nofile": "1"}, content_type="multipart/form-data")
    assert resp.status_code == 422
    big = b"model,label\n" + b"tiny,1\n" * 200_000
    # the multipart body is built by hand: the test client would spool it to a temporary file that the
    # 413 (answered before the body is read) leaves for the garbage collector to close
    body = (b"--xx\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.csv\"\r\n"
            b"Content-Type: text/csv\r\n\r\n" + big + b"\r\n--xx--\r\n")
    resp = client.post("/api/v1/batches", data=body, content_type="multipart/form-data; boundary=xx")
    assert resp.status_code == 413 and resp.is_json
    app.config["MAX_BATCH_ITEMS"] = 3
    assert "limit is 3" in client.post("/api/v1/batches", json=items[:4]).get_json()["error"]
    assert row_counts(app) == before and broker_messages(app) == msgs


def test_batch_status_combines_job_states():
    from app.core.status import overall_status as batch_status

    assert batch_status(["queued", "queued"]) == "queued"
    assert batch_status(["queued", "succeeded"]) == "running"
    assert batch_status(["running", "failed"]) == "running"
    assert batch_status(["succeeded", "succeeded"]) == "succeeded"
    assert batch_status(["succeeded", "failed", "canceled"]) == "failed"
    assert batch_status(["succeeded", "canceled"]) == "canceled"


# -- OpenAPI -----------------------------------------------------------------------------------------
def test_openapi_documents_exactly_the_api_routes(app, client):
    import re

    doc = client.get("/api/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.") and doc["servers"] == [{"url": "/api/v1"}]
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    routed = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/"):
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule.removeprefix("/api/v1"))
        routed |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == routed
    # every $ref resolves and every path parameter is declared
    refs = set(re.findall(r'"#/components/schemas/([A-Za-z]+)"', json.dumps(doc)))
    assert refs <= set(doc["components"]["schemas"])
    for path, ops in doc["paths"].items():
        names = set(re.findall(r"{([^}]+)}", path))
        for op in ops.values():
            assert {p["name"] for p in op.get("parameters", []) if p["in"] == "path"} == names
            assert op["responses"]
