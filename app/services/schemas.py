"""The shape of a job request, written once: :class:`JobRequest` checks a request's fields (types, ranges,
unknown names) for the JSON API, the form and batch files alike, and the OpenAPI document's ``JobRequest``
and ``BatchRequest`` are generated from it (:func:`job_request_schema`). What depends on the serving models
(which model, whether it takes a label or a prompt, which labels exist) is checked by
:func:`app.services.jobs.validate_job` after it.

A failed check is one ``ApiError(422)`` whose message starts with the field's name (the form marks that field).
Limits that a deployment sets (MAX_IMAGES_PER_JOB, MAX_PROMPT_LENGTH) come in through :class:`Limits`, both
for the check and for the document.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from app.core.errors import ApiError
from app.services.webhooks import EVENTS as WEBHOOK_EVENTS, MAX_URL_LENGTH as MAX_WEBHOOK_URL

MAX_SEED = 2**53  # seeds are JSON-safe integers (exact in every client); image i uses seed + i
MAX_MODEL_NAME = 100
MAX_LABEL_TEXT = 200
WEBHOOK_DESCRIPTION = ("http(s) URL POSTed when the job starts or ends (webhook_events_filter), signed with the "
                       "token's secret (GET /webhook-secret); needs an API token; private, loopback and "
                       "link-local targets are refused")


@dataclass(frozen=True)
class Limits:
    """The deployment's limits on a job request (from its settings)."""

    max_images: int
    max_prompt_length: int


class JobRequest(BaseModel):
    """Give at most one of label (class models), cluster (cluster models), prompt (text models)."""

    model_config = ConfigDict(extra="forbid", strict=True, title="JobRequest")

    model: str | None = Field(None, min_length=1, max_length=MAX_MODEL_NAME,
                              description="model name (default: the configured DEFAULT_MODEL)")
    label: str | int | None = Field(None, description="class name, or index (an integer, or a string of ASCII "
                                                       "digits)", json_schema_extra={"maxLength": MAX_LABEL_TEXT})
    cluster: int | None = Field(None, ge=0)
    prompt: str | None = Field(None, min_length=1)
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=0, le=MAX_SEED,
                             description="random when absent (and stored); image i uses seed + i")
    webhook: str | None = Field(None, min_length=1, max_length=MAX_WEBHOOK_URL, description=WEBHOOK_DESCRIPTION)
    webhook_events_filter: list[Literal[WEBHOOK_EVENTS]] | None = Field(  # type: ignore[valid-type]
        None, min_length=1, description='default ["completed"]')

    @field_validator("n")
    @classmethod
    def _n_within_the_limit(cls, n: int, info: ValidationInfo) -> int:
        limits = _limits(info)
        if limits is not None and n > limits.max_images:
            raise ValueError("above the limit")
        return n


class BatchRequest(BaseModel):
    """A batch's items with the batch's own webhook: its events are POSTed once for the whole batch (completed:
    when every job has ended, however), with the body {"event", "type": "batch", "batch": {id, url, total,
    counts, created_at, jobs}}; an item may still name a webhook of its own."""

    model_config = ConfigDict(extra="forbid", strict=True, title="BatchRequest")

    items: list[JobRequest]
    webhook: str | None = Field(None, min_length=1, max_length=MAX_WEBHOOK_URL,
                                description="http(s) URL POSTed when the batch starts (its first job starts) or "
                                            "ends (every job has ended), by webhook_events_filter; signed with "
                                            "the token's secret (GET /webhook-secret); needs an API token; "
                                            "private, loopback and link-local targets are refused")
    webhook_events_filter: list[Literal[WEBHOOK_EVENTS]] | None = Field(  # type: ignore[valid-type]
        None, min_length=1, description='default ["completed"]')


JOB_FIELDS = tuple(JobRequest.model_fields)


def _limits(info: ValidationInfo) -> Limits | None:
    return (info.context or {}).get("limits")


# -- checking ----------------------------------------------------------------------------------------------
def check_job_request(data: Any, limits: Limits) -> JobRequest:
    """``data`` (as decoded from JSON) as a :class:`JobRequest`, or ApiError(422) naming the first bad field."""
    if not isinstance(data, dict):
        raise ApiError(422, "a job must be a JSON object")
    unknown = sorted(set(data) - set(JOB_FIELDS))
    if unknown:
        raise ApiError(422, f"unknown field(s): {', '.join(map(str, unknown))}; valid: {', '.join(JOB_FIELDS)}")
    # an explicit null is the field left out (a default)
    try:
        return JobRequest.model_validate({k: v for k, v in data.items() if v is not None},
                                         context={"limits": limits})
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = min(errors, key=lambda error: JOB_FIELDS.index(str(error["loc"][0])))
        field = str(first["loc"][0])
        raise ApiError(422, _message(field, data[field], limits), field=field) from None


def _message(field: str, value: Any, limits: Limits) -> str:
    """What a person reads when ``field`` is wrong, with the accepted values."""
    if field == "n":
        return f"n must be an integer from 1 to {limits.max_images}, got {value!r}"
    if field == "seed":
        return f"seed must be an integer from 0 to {MAX_SEED}, got {value!r}"
    if field == "cluster":
        return f"cluster must be an integer from 0 up, got {value!r}"
    if field == "model":
        return f"model must be a model's name, 1 to {MAX_MODEL_NAME} characters (see GET /api/v1/models)"
    if field == "label":
        return "label must be a class name or index"
    if field == "prompt":
        return "prompt must be a non-empty string"
    if field == "webhook":
        return f"webhook must be an http or https URL of at most {MAX_WEBHOOK_URL} characters"
    if isinstance(value, list) and value and all(isinstance(event, str) for event in value):
        unknown = sorted(set(value) - set(WEBHOOK_EVENTS))
        return f"webhook_events_filter has unknown webhook event(s): {', '.join(unknown[:5])}; valid: {', '.join(WEBHOOK_EVENTS)}"
    return f"webhook_events_filter must be a non-empty list of: {', '.join(WEBHOOK_EVENTS)}"


# -- the OpenAPI document ----------------------------------------------------------------------------------
def job_request_schema(limits: Limits) -> dict[str, dict[str, Any]]:
    """The ``JobRequest`` and ``BatchRequest`` components of the OpenAPI 3.0 document, from the models."""
    batch = BatchRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions = batch.pop("$defs")
    job = openapi_3_0(definitions["JobRequest"])
    job["properties"]["n"].update(maximum=limits.max_images, default=1)
    job["properties"]["prompt"]["maxLength"] = limits.max_prompt_length
    return {"JobRequest": job, "BatchRequest": openapi_3_0(batch)}


def openapi_3_0(schema: dict[str, Any], *, nullable: bool = False) -> dict[str, Any]:
    """pydantic writes JSON Schema 2020-12 (OpenAPI 3.1); the document is OpenAPI 3.0: an optional field's
    ``anyOf [..., {"type": "null"}]`` becomes the field's own schema (in a request, absent and null mean the
    default; in an answer, ``nullable``: the field may be null), and the generated titles go (the properties'
    names say it)."""
    schema = copy.deepcopy(schema)
    schema.pop("title", None)
    schema["description"] = " ".join(schema.get("description", "").split())
    if not schema["description"]:
        schema.pop("description")
    for name, prop in schema.get("properties", {}).items():
        choices = prop.pop("anyOf", [])
        options = [option for option in choices if option.get("type") != "null"]
        if len(options) == 1 and "$ref" in options[0]:  # OpenAPI 3.0 allows nothing beside a $ref
            prop["allOf"] = options
        elif len(options) == 1:
            prop.update(options[0])
        elif options:
            prop["oneOf"] = options
        if nullable and len(options) < len(choices):
            prop["nullable"] = True
        prop.pop("title", None)
        if prop.get("default") is None:
            prop.pop("default", None)
        if name == "label":
            for option in prop.get("oneOf", []):
                if option.get("type") == "string":
                    option["maxLength"] = prop.pop("maxLength", MAX_LABEL_TEXT)
    return schema
