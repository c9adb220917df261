"""The job request's schema is written once (app/services/schemas.py): the check and the OpenAPI document come
from it, and a bad field is named in a message a person can act on."""
from __future__ import annotations

import pytest

from app.core.errors import ApiError
from app.services.schemas import JOB_FIELDS, MAX_SEED, Limits, check_job_request, job_request_schema

LIMITS = Limits(max_images=8, max_prompt_length=50)


def test_the_document_lists_the_checked_fields_with_the_deployment_limits():
    components = job_request_schema(LIMITS)
    job = components["JobRequest"]
    assert tuple(job["properties"]) == JOB_FIELDS and job["additionalProperties"] is False
    assert job["properties"]["n"] == {"type": "integer", "minimum": 1, "maximum": 8, "default": 1}
    assert job["properties"]["prompt"]["maxLength"] == 50
    assert job["properties"]["seed"]["maximum"] == MAX_SEED
    assert {"type": "integer"} in job["properties"]["label"]["oneOf"]
    assert not any("anyOf" in prop or "title" in prop for prop in job["properties"].values())  # OpenAPI 3.0
    batch = components["BatchRequest"]
    assert batch["required"] == ["items"]
    assert batch["properties"]["items"]["items"] == {"$ref": "#/components/schemas/JobRequest"}


@pytest.mark.parametrize("body, field, message", [
    ({"n": 0}, "n", "n must be an integer from 1 to 8, got 0"),
    ({"n": 9}, "n", "n must be an integer from 1 to 8, got 9"),
    ({"n": "2"}, "n", "got '2'"),  # a JSON number, not text (the form turns its text into numbers first)
    ({"n": True}, "n", "got True"),
    ({"n": 2.0}, "n", "got 2.0"),
    ({"seed": -1}, "seed", f"seed must be an integer from 0 to {MAX_SEED}"),
    ({"seed": MAX_SEED + 1}, "seed", "seed must be an integer"),
    ({"label": False}, "label", "label must be a class name or index"),
    ({"label": [1]}, "label", "label must be a class name or index"),
    ({"cluster": -1}, "cluster", "cluster must be an integer from 0 up"),
    ({"prompt": ""}, "prompt", "prompt must be a non-empty string"),
    ({"model": "x" * 101}, "model", "model must be a model's name, 1 to 100 characters"),
    ({"webhook_events_filter": ["output"]}, "webhook_events_filter", "unknown webhook event(s): output"),
    ({"webhook_events_filter": []}, "webhook_events_filter", "non-empty list of: start, completed"),
    ({"n": 0, "seed": -1}, "n", "n must be"),  # the first bad field in the document's order
])
def test_a_bad_field_is_named(body, field, message):
    with pytest.raises(ApiError) as caught:
        check_job_request(body, LIMITS)
    assert caught.value.status == 422 and caught.value.details == {"field": field}
    assert message in caught.value.message and caught.value.message.startswith(field)


def test_unknown_fields_and_non_objects_are_refused():
    with pytest.raises(ApiError, match="unknown field\\(s\\): colour; valid: model, label"):
        check_job_request({"label": "1", "colour": "red"}, LIMITS)
    with pytest.raises(ApiError, match="a job must be a JSON object"):
        check_job_request([{"label": "1"}], LIMITS)


def test_null_is_the_default():
    request = check_job_request({"label": 3, "n": None, "seed": None, "prompt": None}, LIMITS)
    assert (request.label, request.n, request.seed, request.prompt) == (3, 1, None, None)
