"""The shapes of the API's job answers, written once: the OpenAPI document's ``Image``, ``Job`` and ``JobCreated``
components are generated from these models (:func:`response_schemas`), and the tests check every answer of
:mod:`app.api.views` against them (``extra="forbid"``: a field the views add must be declared here first). The
fuzz tests (tests/fuzz/) check the live answers against the document.

The views build plain dicts (the read path is every waiting client's: no model instance per answer); these
models are the contract they are held to.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


CANCEL_SECRET = ("an anonymous creator's capability, returned once at creation: send it as the X-Cancel-Secret header "
                 "to cancel (a token's jobs are cancelled with the token instead)")


def date_time() -> Any:
    return Field(json_schema_extra={"format": "date-time"})


# a job's states, spelled out for the type checker; a test holds them equal to JobStatus
Status = Literal["queued", "running", "succeeded", "failed", "canceled"]


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ImageOut(_Answer):
    """An image and the exact model version that made it."""

    id: str
    job_id: str
    index: int
    width: int
    height: int
    seed: int
    created_at: str = date_time()
    url: str
    png_url: str
    model: str
    model_version: int = Field(description="the exact version that made the image")
    model_version_id: int
    parameters: dict[str, Any] | None = Field(None, description="the PNG's text chunk (GET /images/{id} only)")


class Delivery(_Answer):
    id: str
    event: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: str | None
    delivered_at: str | None


class WebhookOut(_Answer):
    """The job's webhook and its deliveries: for the token that created it and admins only."""

    url: str
    events_filter: list[str]
    deliveries: list[Delivery]


class JobOut(_Answer):
    """A job as it stands; its images once it has succeeded."""

    id: str
    url: str
    status: Status
    progress: float = Field(ge=0, le=1)
    error: str | None
    model: str
    model_version: int
    model_version_id: int
    backend: str
    condition: str
    label: str | None
    cluster: int | None
    prompt: str | None
    n: int
    seed: int
    attempts: int
    batch_id: str | None
    created_at: str = date_time()
    started_at: str | None = date_time()
    finished_at: str | None = date_time()
    images: list[ImageOut]
    webhook: WebhookOut | None = None
    cancel_secret: str | None = Field(None, description=CANCEL_SECRET)


class JobCreated(_Answer):
    """A queued job: without wait its id, url and status; with wait the whole Job as it stood when the wait ran
    out. cancel_secret only for an anonymous creator."""

    id: str
    url: str
    status: Status
    cancel_secret: str | None = Field(None, description=CANCEL_SECRET)


# the models' names in the document
COMPONENTS = {"ImageOut": "Image", "JobOut": "Job", "JobCreated": "JobCreated", "Delivery": "WebhookDelivery",
              "WebhookOut": "Webhook"}


def response_schemas() -> dict[str, dict[str, Any]]:
    """The ``Image``, ``Job`` and ``JobCreated`` components (and the ones they refer to) of the OpenAPI 3.0
    document, from the models."""
    from app.services.schemas import openapi_3_0

    out: dict[str, dict[str, Any]] = {}
    for model in (JobOut, JobCreated):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in schema.pop("$defs", {}).items():
            out[COMPONENTS[name]] = openapi_3_0(definition, nullable=True)
        out[COMPONENTS[model.__name__]] = openapi_3_0(schema, nullable=True)
    return _renamed_refs(out)


def _renamed_refs(node: Any) -> Any:
    """``$ref``s by the document's names of the components."""
    if isinstance(node, dict):
        return {key: (f"#/components/schemas/{COMPONENTS[value.rsplit('/', 1)[1]]}" if key == "$ref" else
                      _renamed_refs(value)) for key, value in node.items()}
    if isinstance(node, list):
        return [_renamed_refs(item) for item in node]
    return node
