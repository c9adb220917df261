"""The shape of an experiment request, written once: :class:`ExperimentRequest` checks the fields' types and
ranges (:func:`check_experiment_request`, the first step of :func:`app.services.experiments.validate_experiment`)
and the OpenAPI document's ``ExperimentRequest`` is generated from it (:func:`experiment_request_schema`). What
depends on the kind and on the serving models (which fields a kind takes, at least two values to sweep, whether a
model takes the label) is checked by :mod:`app.services.experiments` after it, with the same kind of message: one
``ApiError(422)`` naming the field.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.core.errors import ApiError
from app.services.schemas import MAX_SEED, condition_message, openapi_3_0
from priorforge_spec.experiments import SWEEP_WORDS

KINDS = ("compare", "sweep", "interpolate", "reconstruct", "mix")
END_FIELDS = ("label", "cluster", "prompt", "seed")  # what one end of an interpolation names
MAX_ROWS = 16  # the models of a comparison, the seeds of a sweep
MAX_COLUMNS = 32  # the seeds of a comparison, the values of a sweep (a cluster model has up to 30), the steps
DEFAULT_N = 4
DEFAULT_STEPS = 8

Label = str | int
Seed = Field(None, ge=0, le=MAX_SEED)
_STRICT = ConfigDict(extra="forbid", strict=True)
_SWEEP_WORDS = "; ".join(f"{name}: {', '.join(values)}" for name, values in SWEEP_WORDS.items())


class ExperimentEnd(BaseModel):
    """One end of an interpolation: a condition (label, cluster or prompt) and a seed."""

    model_config = _STRICT

    label: Label | None = None
    cluster: int | None = Field(None, ge=0)
    prompt: str | None = Field(None, min_length=1)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="random when absent")


class ExperimentRequest(BaseModel):
    """compare: one request (label or prompt, seed, n) on several models, image i of each with seed + i (each row
    equals that model's single job pixel for pixel). sweep: one model, the same seeds, one word varied: the label of
    a class model (labels), the cluster of a cluster model (clusters) or a word of a text model's prompt (prompt,
    word, values); one row per seed, every cell equal to the single job of its condition and seed. interpolate:
    steps images on the straight line between the codes of two single jobs (from, to), whose images are its two
    ends; pga and vae go between seeds of one condition only. reconstruct: an image (image) and the decoding of its
    code; mix: two images' codes (a, b) mixed along steps weights, whose ends are the two reconstructions (models
    with an encoder). Each field's description names its kinds; a field of another kind is a 422."""

    model_config = ConfigDict(extra="forbid", strict=True, title="ExperimentRequest")

    kind: Literal[KINDS]  # type: ignore[valid-type]
    models: list[str] | None = Field(None, min_length=2, max_length=MAX_ROWS, description=(
        "compare: the models (default: every serving model that takes the label or prompt)"))
    model: str | None = Field(None, min_length=1, description="sweep, interpolate, reconstruct, mix: the model "
                                                              "(default: the default model)")
    label: Label | None = Field(None, description="compare: the class name or index every model gets; reconstruct, "
                                                  "mix: the image's label, for a model whose decoder reads it")
    prompt: str | None = Field(None, min_length=1, description=(
        "compare: the prompt every model gets; sweep: the prompt whose word varies; reconstruct, mix: the image's "
        "prompt"))
    word: str | None = Field(None, min_length=1, description="sweep (text model): the word of prompt to vary")
    values: list[str] | None = Field(None, min_length=2, max_length=MAX_COLUMNS, description=(
        f"sweep (text model): what goes in place of word; default for a known word its list ({_SWEEP_WORDS})"))
    labels: list[Label] | None = Field(None, min_length=2, max_length=MAX_COLUMNS,
                                       description="sweep (class model): the labels (default: all)")
    clusters: list[Annotated[int, Field(ge=0)]] | None = Field(None, min_length=2, max_length=MAX_COLUMNS, description=(
        f"sweep (cluster model): the clusters (default: the first {MAX_COLUMNS})"))
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="compare, sweep: image (row) i uses seed + i; "
                                                                  "random when absent")
    n: int = Field(DEFAULT_N, ge=1, le=MAX_COLUMNS, description=(
        f"compare: images per model (up to {MAX_COLUMNS}); sweep: seeds, one row each (up to {MAX_ROWS})"))
    start: ExperimentEnd | None = Field(None, alias="from", description=(
        "interpolate: one end, a condition (label, cluster or prompt) and a seed (random when absent)"))
    end: ExperimentEnd | None = Field(None, alias="to", description=(
        "interpolate: the other end (default: from's condition and seed; the two ends must differ)"))
    steps: int = Field(DEFAULT_STEPS, ge=2, le=MAX_COLUMNS, description=(
        "interpolate: images on the line, both ends included; mix: mixes from all of a to all of b, both ends "
        "included"))
    image: str | None = Field(None, min_length=1, description=(
        "reconstruct (a model with an encoder): a gallery image's id; or upload the image as a file named image "
        "(multipart)"))
    a: str | None = Field(None, min_length=1, description="mix: the first image, a gallery image's id or an "
                                                          "uploaded file named a")
    b: str | None = Field(None, min_length=1, description="mix: the second image (id or file b)")
    cluster: int | None = Field(None, ge=0, description="reconstruct, mix: the image's cluster, for a model whose "
                                                        "decoder reads it (pga, vae), as label or prompt are")
    regenerate_as: list[Label] | None = Field(None, alias="as", min_length=1, max_length=MAX_COLUMNS - 2,
                                              description=(
        "reconstruct (glf, pga, vae; with the image's own label, cluster or prompt): re-generate the image under "
        "each of these conditions with its code kept, one column each"))


FIELD_NAMES = tuple(field.alias or name for name, field in ExperimentRequest.model_fields.items())


def check_experiment_request(data: dict[str, Any], kind: str) -> None:
    """The types and ranges of a ``kind`` experiment's fields (``data`` as decoded from JSON; an explicit null is
    the field left out), or ApiError(422) naming the first bad field in words."""
    try:
        ExperimentRequest.model_validate({k: v for k, v in data.items() if v is not None})
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = min(errors, key=lambda error: FIELD_NAMES.index(str(error["loc"][0])))
        raise _error(first, data, kind) from None


def _error(error: Any, data: dict[str, Any], kind: str) -> ApiError:
    loc = [str(part) for part in error["loc"]]
    key, value = loc[0], data[loc[0]]
    if key in ("from", "to"):
        if not isinstance(value, dict):
            return ApiError(422, f"{key} must be an object such as {{\"label\": \"3\", \"seed\": 1}}", field=key)
        unknown = sorted(str(name) for name in set(value) - set(END_FIELDS))
        if unknown:
            return ApiError(422, f"unknown field(s) in {key}: {', '.join(unknown)}; valid: {', '.join(END_FIELDS)}",
                            field=key)
        inner = loc[1]
        return ApiError(422, f"{key}: {_message(inner, value[inner], kind)}", field=inner)
    return ApiError(422, _message(key, value, kind), field=key)


def _message(key: str, value: Any, kind: str) -> str:
    """What a person reads when ``key`` is wrong, with the accepted values."""
    if (shared := condition_message(key, value)) is not None:
        return shared
    if key in ("n", "steps"):
        low, high = (1, MAX_ROWS if kind == "sweep" else MAX_COLUMNS) if key == "n" else (2, MAX_COLUMNS)
        return f"{key} must be an integer from {low} to {high}, got {value!r}"
    if key == "model":
        return "model must be a non-empty string (see GET /api/v1/models)"
    if key in ("prompt", "word", "image", "a", "b"):
        return f"{key} must be a non-empty string"
    field = ExperimentRequest.model_fields[{"as": "regenerate_as"}.get(key, key)]
    high = next(rule.max_length for rule in field.metadata if hasattr(rule, "max_length"))
    if not isinstance(value, list) or not value:
        return f"{key} must be a non-empty list"
    if len(value) > high:
        return f"{key} has {len(value)} entries; the limit is {high}"
    if len(value) == 1 and key != "as":
        return "a comparison needs at least two models" if key == "models" else f"a {kind} needs at least two values"
    return {"models": "models must be a list of distinct model names", "values": "values must be non-empty strings",
            "labels": "labels must be class names or indexes", "clusters": "clusters must be integers from 0 up",
            "as": "as must be labels, clusters or prompts"}[key]


def experiment_request_schema() -> dict[str, Any]:
    """The ``ExperimentRequest`` component of the OpenAPI 3.0 document (and the ``ExperimentEnd`` it refers to)."""
    schema = ExperimentRequest.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
    definitions = schema.pop("$defs")
    return {"ExperimentRequest": openapi_3_0(schema), "ExperimentEnd": openapi_3_0(definitions["ExperimentEnd"])}
