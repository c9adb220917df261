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


# -- the answers ---------------------------------------------------------------------------------------------
def test_the_answers_status_names_are_the_job_states():
    from typing import get_args

    from app.api.responses import Status
    from app.core.status import JobStatus

    assert list(get_args(Status)) == [status.value for status in JobStatus]


def test_every_job_answer_has_the_declared_shape(app, client):
    """Created, queued, succeeded with images, one image, with a webhook: each answer is what the models say
    (no undeclared field, no missing one), so the document generated from them is the truth."""
    from app.api.responses import ImageOut, JobCreated, JobOut
    from app.services.accounts import create_user, issue_token
    from workers.tasks import generate_images

    created = client.post("/api/v1/jobs", json={"label": "3", "n": 2})
    JobCreated.model_validate(created.get_json())  # an anonymous creator: with its cancel_secret
    job_id = created.get_json()["id"]
    JobOut.model_validate(client.get(f"/api/v1/jobs/{job_id}").get_json())  # queued: no images yet
    with app.app_context():
        assert generate_images.run(job_id) == "succeeded"
    done = JobOut.model_validate(client.get(f"/api/v1/jobs/{job_id}?wait=5").get_json())
    assert done.status == "succeeded" and len(done.images) == 2
    image = ImageOut.model_validate(client.get(done.images[0].url).get_json())
    assert image.parameters is not None  # read back from the PNG
    with app.app_context():
        token = issue_token(create_user("owner", "a long enough password")).token
    hooked = client.post("/api/v1/jobs?wait=0", headers={"Authorization": f"Bearer {token}"},
                         json={"label": "1", "webhook": "https://example.com/hook"})
    answer = JobOut.model_validate(hooked.get_json())  # the owner sees the webhook and its deliveries
    assert answer.webhook is not None and answer.webhook.url == "https://example.com/hook"


def test_batch_experiment_model_health_and_error_answers_have_the_declared_shape(app, client, checkpoints):
    """The other answers of the job API, each held to its model (no undeclared field, no missing one)."""
    from app.api.responses import BatchOut, ErrorOut, ExperimentOut, HealthOut, ModelList
    from app.services.model_versions import register_model
    from workers.tasks import generate_images

    created = client.post("/api/v1/batches", json=[{"label": "1"}, {"label": "2", "n": 2}])
    batch = BatchOut.model_validate(created.get_json())
    assert batch.cancel_secret and len(batch.jobs) == 2  # an anonymous creator
    with app.app_context():
        for job in batch.jobs:  # the first task claims every queued job of its model version
            generate_images.run(job.id)
    assert BatchOut.model_validate(client.get(batch.url).get_json()).status == "succeeded"

    sweep = client.post("/api/v1/experiments", json={"kind": "sweep", "model": "tiny", "labels": ["1", "4"],
                                                     "seed": 3, "n": 2})
    experiment = ExperimentOut.model_validate(sweep.get_json())  # queued: every cell null
    assert all(cell is None for row in experiment.rows for cell in row.cells)
    with app.app_context():
        for job in experiment.jobs:
            generate_images.run(job.id)
    done = ExperimentOut.model_validate(client.get(experiment.url).get_json())
    assert all(cell is not None for row in done.rows for cell in row.cells)
    with app.app_context():
        register_model("tiny-two", checkpoints["class"])
    compare = client.post("/api/v1/experiments", json={"kind": "compare", "models": ["tiny", "tiny-two"],
                                                       "label": "1", "n": 2}).get_json()
    rows = ExperimentOut.model_validate(compare).rows
    assert [row.label for row in rows] == ["tiny v1", "tiny-two v1"] and all(row.figures is not None for row in rows)
    refused = client.post("/api/v1/experiments", json={"kind": "compare", "models": ["tiny", "uncond"], "label": "1"})
    assert refused.status_code == 422 and "uncond" in ErrorOut.model_validate(refused.get_json()).error

    models = ModelList.model_validate(client.get("/api/v1/models").get_json())
    assert {"tiny", "captions"} <= {model.name for model in models.models}
    HealthOut.model_validate(client.get("/api/v1/health").get_json())
    error = ErrorOut.model_validate(client.get("/api/v1/jobs/nope").get_json())
    assert error.error


def test_the_generated_document_is_valid_openapi_3_0(app):
    """The components generated from the models are OpenAPI 3.0 (no JSON Schema 2020-12 null types left)."""
    from openapi_spec_validator import OpenAPIV30SpecValidator

    from app.api.openapi import spec

    with app.test_request_context():
        document = spec()
    errors = [error.message for error in OpenAPIV30SpecValidator(document).iter_errors()]
    assert errors == []
