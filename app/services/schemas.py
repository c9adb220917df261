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


def condition_message(field: str, value: Any) -> str | None:
    """The message of a bad seed, cluster or label, the fields a job and an experiment share; None for others."""
    if field == "seed":
        return f"seed must be an integer from 0 to {MAX_SEED}, got {value!r}"
    if field == "cluster":
        return f"cluster must be an integer from 0 up, got {value!r}"
    if field == "label":
        return "label must be a class name or index"
    return None


def _message(field: str, value: Any, limits: Limits) -> str:
    """What a person reads when ``field`` is wrong, with the accepted values."""
    if field == "n":
        return f"n must be an integer from 1 to {limits.max_images}, got {value!r}"
    if (shared := condition_message(field, value)) is not None:
        return shared
    if field == "model":
        return f"model must be a model's name, 1 to {MAX_MODEL_NAME} characters (see GET /api/v1/models)"
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
        if "const" in prop:  # OpenAPI 3.0 has no const: a one-value enum says the same
            prop["enum"] = [prop.pop("const")]
        for key in ("items", "additionalProperties"):  # a list's or a map's values may be null too
            if isinstance(prop.get(key), dict):
                prop[key] = _nullable_3_0(prop[key])
        if name == "label":
            for option in prop.get("oneOf", []):
                if option.get("type") == "string":
                    option["maxLength"] = prop.pop("maxLength", MAX_LABEL_TEXT)
    return schema


def _nullable_3_0(schema: dict[str, Any]) -> dict[str, Any]:
    """A value's schema in OpenAPI 3.0: ``anyOf [X, {"type": "null"}]`` becomes X with ``nullable`` (a ``$ref``
    inside an ``allOf``, as nothing may stand beside a ``$ref``)."""
    choices = schema.get("anyOf")
    if not choices or not any(option.get("type") == "null" for option in choices):
        return schema
    options = [option for option in choices if option.get("type") != "null"]
    rest = {key: value for key, value in schema.items() if key != "anyOf"}
    if len(options) == 1 and "$ref" in options[0]:
        return {**rest, "allOf": options, "nullable": True}
    if len(options) == 1:
        return {**rest, **options[0], "nullable": True}
    return {**rest, "oneOf": options, "nullable": True}


# -- training requests --------------------------------------------------------------------------------------
TRAINING_IMAGE_SIZES = (8, 16, 28, 32, 64, 128, 256)
MAX_TRAINING_SEED = 2**31 - 1


@dataclass(frozen=True)
class TrainingLimits:
    """The deployment's limits on a training request (TRAINING_MAX_STEPS, TRAINING_MAX_BATCH_SIZE)."""

    max_steps: int
    max_batch_size: int


class TrainingRequest(BaseModel):
    """A training run's request. The fields' types and ranges are checked here; the backend, the data set, the
    condition and the backend's model options and hyper-parameters against the backends and data sets by
    :func:`app.services.trainings.validate_training` after it."""

    model_config = ConfigDict(extra="forbid", strict=True, title="TrainingRequest")

    backend: str = Field(description="backend name (aae-cg, lde, glf, pga, vae)")
    dataset: str = Field(min_length=1, max_length=100, description="a built-in data set or an uploaded one")
    condition: Literal["none", "class", "cluster", "text"] | None = Field(
        None, description="none, class, cluster or text (default: class when the data set has classes, else none)")
    model_name: str | None = Field(None, min_length=1, max_length=100,
                                   description="register the result under this model name (default: "
                                               "<dataset>-<backend>)")
    max_steps: int = Field(2000, ge=1, description="optimisation steps")
    batch_size: int = Field(64, ge=1, description="images per step")
    lr: float | None = Field(None, gt=0, le=10, allow_inf_nan=False,
                             description="learning rate (default: the backend's)")
    seed: int = Field(0, ge=0, le=MAX_TRAINING_SEED, description="seeds weights, batch order and noise")
    image_size: int | None = Field(None, description="resize images to this square size (28 or 4*2^k; uploaded "
                                                     "sets: their own, rounded up)")
    channels: Literal[1, 3] | None = Field(None, description="1 or 3 (uploaded sets: 1 for grey images, else 3)")
    clusters: int = Field(10, ge=2, le=1000, description="number of clusters (condition cluster)")
    max_cpu_minutes: float | None = Field(None, gt=0, le=7 * 24 * 60, allow_inf_nan=False,
                                          description="stop after this much CPU time")
    checkpoint_every: int = Field(200, ge=1, le=1_000_000,
                                  description="steps between checkpoints (a resumed run restarts from the last one)")
    sample_every: int = Field(200, ge=1, le=1_000_000, description="steps between sample grids")
    evaluate: bool = Field(True, description="evaluate at the end")
    eval_samples: int = Field(1000, ge=10, le=50_000, description="generated images for the evaluation")
    model_options: dict[str, Any] = Field(default_factory=dict, description="model config fields of the backend")
    hparams: dict[str, Any] = Field(default_factory=dict, description="training hyper-parameters of the backend")

    @field_validator("max_steps", "batch_size")
    @classmethod
    def _within_the_deployments_limit(cls, value: int, info: ValidationInfo) -> int:
        limits: TrainingLimits | None = (info.context or {}).get("limits")
        limit = None if limits is None else \
            limits.max_steps if info.field_name == "max_steps" else limits.max_batch_size
        if limit is not None and value > limit:
            raise ValueError("above the limit")
        return value

    @field_validator("image_size")
    @classmethod
    def _a_known_size(cls, value: int | None) -> int | None:
        if value is not None and value not in TRAINING_IMAGE_SIZES:
            raise ValueError("not a size")
        return value

    @field_validator("dataset", "model_name")
    @classmethod
    def _a_plain_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and (any(ord(c) < 32 for c in value) or
                                  (info.field_name == "model_name" and ("/" in value or not value.strip()))):
            raise ValueError("not a plain name")
        return value


TRAINING_FIELDS = tuple(TrainingRequest.model_fields)


def check_training_request(data: Any, limits: TrainingLimits) -> TrainingRequest:
    """``data`` (as decoded from JSON) as a :class:`TrainingRequest`, or ApiError(422) naming the first bad field
    (an explicit null is the field left out)."""
    if not isinstance(data, dict):
        raise ApiError(422, "a training request is a JSON object")
    unknown = sorted(map(str, set(data) - set(TRAINING_FIELDS)))
    if unknown:
        raise ApiError(422, f"unknown field(s) {unknown}; valid: {sorted(TRAINING_FIELDS)}", field=unknown[0])
    try:
        return TrainingRequest.model_validate({k: v for k, v in data.items() if v is not None},
                                              context={"limits": limits})
    except ValidationError as exc:
        first = min(exc.errors(include_url=False), key=lambda error: TRAINING_FIELDS.index(str(error["loc"][0])))
        field = str(first["loc"][0])
        raise ApiError(422, _training_message(field, data.get(field), limits), field=field) from None


FIXED_TRAINING_MESSAGES = {
    "dataset": "dataset is required (a built-in or uploaded data set's name)",
    "model_name": "model_name must be 1-100 characters without '/' or control characters",
    "channels": "channels must be 1 or 3",
    "evaluate": "evaluate must be true or false",
    "model_options": "model_options must be an object of name: value",
    "hparams": "hparams must be an object of name: value",
}


def _training_message(field: str, value: Any, limits: TrainingLimits) -> str:
    """What a person reads when a training request's ``field`` is wrong, with the accepted values."""
    from priorforge_spec.backends import backend_names

    constraints = TrainingRequest.model_fields[field].metadata
    low = next((getattr(c, "ge", None) for c in constraints if getattr(c, "ge", None) is not None), None)
    high = next((getattr(c, "le", None) for c in constraints if getattr(c, "le", None) is not None), None)
    if field == "max_steps":
        high = limits.max_steps
    elif field == "batch_size":
        high = limits.max_batch_size
    choices = {"backend": backend_names(), "condition": ["none", "class", "cluster", "text"],
               "image_size": list(map(str, TRAINING_IMAGE_SIZES))}
    if field in choices:
        return f"{field} must be one of {', '.join(choices[field])}, got {value!r}"
    if field in FIXED_TRAINING_MESSAGES:
        return FIXED_TRAINING_MESSAGES[field]
    if field in ("lr", "max_cpu_minutes"):
        bound = next(c.gt for c in constraints if getattr(c, "gt", None) is not None)
        return f"{field} must be a number above {bound} and at most {high}, got {value!r}"
    return f"{field} must be an integer from {low} to {high}, got {value!r}"


def training_request_schema(limits: TrainingLimits, model_options: dict[str, Any], hparams: dict[str, Any],
                            backends: list[str]) -> dict[str, Any]:
    """The ``TrainingRequest`` component of the OpenAPI 3.0 document, from the model, with what only the
    backends know: their names, and the model options and hyper-parameters each one takes."""
    schema = openapi_3_0(TrainingRequest.model_json_schema())
    props = schema["properties"]
    props["backend"]["enum"] = backends
    props["max_steps"]["maximum"] = limits.max_steps
    props["batch_size"]["maximum"] = limits.max_batch_size
    props["image_size"]["enum"] = list(TRAINING_IMAGE_SIZES)
    for name in ("lr", "max_cpu_minutes"):  # OpenAPI 3.0 spells an open bound as a flag
        props[name]["minimum"] = props[name].pop("exclusiveMinimum")
        props[name]["exclusiveMinimum"] = True
    props["model_options"].update(properties=model_options, additionalProperties=False)
    props["hparams"].update(properties=hparams, additionalProperties=False)
    return schema
