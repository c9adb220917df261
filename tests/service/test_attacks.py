"""What an attacker from outside tried and what it must get now, through HTTP against the app: a lone
surrogate in JSON, the per-client image quota under concurrent requests, cross-site form posts, the
Retry-After and Cache-Control headers, and the scope of anonymous idempotency keys (docs/security.md)."""

from __future__ import annotations

import io

import pytest

from tests.service.conftest import row_counts
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
