"""The part of a model version's card an admin writes: its title, description and examples (example prompts
of a text model, example labels of a class model, example clusters of a cluster model). A newly trained
version has no card; the shipped ones carry theirs from ``card.json``. The public form (its example links and
the hint under the model) and the Models page show what is written here.

The card lives in ``model_versions.card`` (JSON); only these three keys are written, the rest of a shipped
card (metrics, recipe, caveats, weights digest) is kept. Every example is checked against what a job for this
version accepts, so an example the public form offers is never refused: prompts by the rule of job prompts,
labels must be the version's class names, clusters its cluster numbers.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.core.errors import ApiError
from app.core.extensions import db
from app.core.tables import ModelVersion
from app.services.jobs import _has_control, check_prompt, parse_int_text

CARD_FIELDS = ("title", "description", "examples")
MAX_TITLE = 120  # characters, one line
MAX_DESCRIPTION = 1000  # characters, newlines allowed
MAX_EXAMPLES = 12  # the form shows them all as links


class CardEdit(BaseModel):
    """The part of a card an admin writes. examples: prompts of a text model (the rules of a job's prompt), labels
    of a class model (its class names), cluster numbers of a cluster model; an unconditional model has none. A
    field left out stays as it is; null or empty removes it."""

    # lengths are counted after the surrounding whitespace is stripped
    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True, title="CardEdit")

    title: str | None = Field(None, max_length=MAX_TITLE, description="one line")
    description: str | None = Field(None, max_length=MAX_DESCRIPTION)
    examples: list[str | int] | None = Field(None, max_length=MAX_EXAMPLES)


def _checked_fields(body: dict[str, Any]) -> CardEdit:
    """``body``'s fields as a :class:`CardEdit`, or ApiError(422) naming the first bad one."""
    try:
        return CardEdit.model_validate(body)
    except ValidationError as exc:
        error = min(exc.errors(include_url=False), key=lambda e: CARD_FIELDS.index(str(e["loc"][0])))
        key = str(error["loc"][0])
        value = body[key]
        if key == "examples":
            if isinstance(value, list) and len(value) > MAX_EXAMPLES:
                message = f"{len(value)} examples; a card holds at most {MAX_EXAMPLES}"
            else:
                message = "examples must be a list of strings"
        elif isinstance(value, str):
            limit = MAX_TITLE if key == "title" else MAX_DESCRIPTION
            message = f"{key} is {len(value.strip())} characters long; the limit is {limit}"
        else:
            message = f"{key} must be a string, got {type(value).__name__}"
        raise ApiError(422, message, field=key) from None


def _text(value: str | None, key: str, *, one_line: bool) -> str | None:
    if value is None:
        return None
    value = value.replace("\r\n", "\n")
    if _has_control(value) or (one_line and ("\n" in value or "\r" in value or "\t" in value)):
        raise ApiError(422, f"{key} must not hold control characters{' or line breaks' if one_line else ''}",
                       field=key)
    return value or None


def _example(version: ModelVersion, raw: Any, where: str) -> str:
    if version.condition == "text":
        return check_prompt(raw, f"{where} (an example prompt)")
    if version.condition == "class":
        names = list(version.class_names or [])
        if isinstance(raw, str):
            lowered = [n.lower() for n in names]
            if raw.strip().lower() in lowered:
                return names[lowered.index(raw.strip().lower())]
        shown = raw if not isinstance(raw, str) or len(raw) <= 40 else raw[:40] + "..."
        raise ApiError(422, f"{where}: {shown!r} is not a label of {version.name} v{version.version}; its labels "
                            f"are {', '.join(names)}", field="examples")
    if version.condition == "cluster":
        number = raw if isinstance(raw, int) and not isinstance(raw, bool) else (
            parse_int_text(raw.strip()) if isinstance(raw, str) else None)
        if number is None or not 0 <= number < version.num_classes:
            raise ApiError(422, f"{where} must be a cluster number from 0 to {version.num_classes - 1}, got "
                                f"{raw!r}", field="examples")
        return str(number)
    raise ApiError(422, f"{version.name} v{version.version} is unconditional: it takes no prompt or label, so its "
                        "card has no examples", field="examples")


def validate_card(version: ModelVersion, body: Any, *, partial: bool = True) -> dict[str, Any]:
    """The card fields of ``body`` checked for ``version``: {field: value or None (cleared)}. With
    ``partial`` only the fields present are returned (the others stay as they are); else all three."""
    if not isinstance(body, dict):
        raise ApiError(422, "a card must be a JSON object with title, description and examples")
    unknown = sorted(set(body) - set(CARD_FIELDS))
    if unknown:
        raise ApiError(422, f"unknown card field(s): {', '.join(unknown)}; valid: {', '.join(CARD_FIELDS)}",
                       field=unknown[0])
    fields = _checked_fields(body)
    out: dict[str, Any] = {}
    if "title" in body or not partial:
        out["title"] = _text(fields.title, "title", one_line=True)
    if "description" in body or not partial:
        out["description"] = _text(fields.description, "description", one_line=False)
    if "examples" in body or not partial:
        examples: list[str] = []
        for i, item in enumerate(fields.examples or []):
            value = _example(version, item, f"examples[{i}]")
            if value.lower() not in (e.lower() for e in examples):  # a repeated example is shown once
                examples.append(value)
        out["examples"] = examples
    return out


def card_edit_schema() -> dict[str, Any]:
    """The ``CardEdit`` component of the OpenAPI 3.0 document, from the model."""
    from app.services.schemas import openapi_3_0

    return openapi_3_0(CardEdit.model_json_schema(), nullable=True)


def write_card(version: ModelVersion, fields: dict[str, Any]) -> None:
    """Put validated card fields (from :func:`validate_card`) on the version, in the session's transaction;
    the caller commits. A field set to None or ``[]`` is removed from the card."""
    card = dict(version.card or {})
    for key, value in fields.items():
        if value in (None, []):
            card.pop(key, None)
        else:
            card[key] = value
    version.card = card or None  # a new object: the JSON column sees the change
    db.session.flush()


def card_fields_from_form(form: Any) -> dict[str, Any]:
    """The page's card form as a card body: examples one per line (blank lines skipped)."""
    examples = [line.strip() for line in form.get("examples", "").splitlines() if line.strip()]
    return {"title": form.get("title", ""), "description": form.get("description", ""), "examples": examples}


def form_values(version: ModelVersion, serving: ModelVersion | None) -> dict[str, str]:
    """What the card form shows: the version's card, or, for a version without one, the serving version's
    card when it takes the same conditions (a retrained model keeps its card unless the admin changes it)."""
    source = version.card or {}
    if not any(source.get(k) for k in CARD_FIELDS) and serving is not None and serving.id != version.id \
            and serving.condition == version.condition \
            and list(serving.class_names or []) == list(version.class_names or []) \
            and serving.num_classes == version.num_classes:
        source = serving.card or {}
    return {"title": str(source.get("title") or ""), "description": str(source.get("description") or ""),
            "examples": "\n".join(str(e) for e in source.get("examples") or [])}
