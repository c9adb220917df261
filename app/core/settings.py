"""The service's settings, typed and checked once when the app is made.

Every key of :func:`app.core.config.default_config` has a type: the type of its default, or, where the default
is None, the one named in :data:`OPTIONAL`. :func:`check_settings` validates the loaded values against those
types (a ValueError names the key and what it takes; a float setting takes a whole number, nothing else is
converted) and writes the values back, so the code reads a setting as the type it is declared with. :func:`settings` gives them as one typed object.
"""
from __future__ import annotations

from typing import Any

from flask import Flask, current_app
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

# the settings whose default is None (unset): their type when set
OPTIONAL: dict[str, Any] = {
    "SECRET_KEY": str | None, "STORAGE_URL": str | None, "S3_ENDPOINT_URL": str | None, "S3_REGION": str | None,
    "BROKER_VISIBILITY_TIMEOUT": int | None, "DEFAULT_MODEL": str | None, "RATELIMIT_STORAGE_URI": str | None,
    "DATA_ROOT": str | None, "TRAINING_DEVICE": str | None, "TRAINING_EVAL_CLASSIFIER_STEPS": int | None,
    "METRICS_DIR": str | None, "BROKER_POLLING_INTERVAL": float | None,
}
# lists and mappings: their items' types
CONTAINERS: dict[str, Any] = {
    "MODEL_QUEUES": dict[str, str], "METRICS_ALLOW_NETWORKS": list[str], "WEBHOOK_ALLOW_NETWORKS": list[str],
}
EXTENSION = "priorforge_settings"


class _Base(BaseModel):
    # strict: a setting is its JSON value (PRIORFORGE_* variables are parsed as JSON), never a guess from text
    # ("yes" is no bool, "60" no number); a float setting takes a whole number
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


def settings_model(defaults: dict[str, Any]) -> type[BaseModel]:
    """The pydantic model of the settings whose defaults are ``defaults``."""
    fields: dict[str, Any] = {}
    for key, default in defaults.items():
        if key in OPTIONAL:
            kind = OPTIONAL[key]
        elif key in CONTAINERS:
            kind = CONTAINERS[key]
        elif default is None:
            raise TypeError(f"setting {key} defaults to None: name its type in OPTIONAL")
        else:
            kind = type(default)
        fields[key] = (kind, Field(default=default))
    return create_model("Settings", __base__=_Base, **fields)


def check_settings(app: Flask, defaults: dict[str, Any]) -> BaseModel:
    """Validate ``app.config``'s settings against their types, write the converted values back and keep the
    typed object on the app; a ValueError names each bad key."""
    model = settings_model(defaults)
    try:
        typed = model.model_validate({key: app.config[key] for key in defaults})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, error['loc']))} {_what(model, error)}, got "
                             f"{error['input']!r}" for error in exc.errors(include_url=False))
        raise ValueError(f"bad setting(s): {problems} (PRIORFORGE_<NAME> variables are read as JSON)") from None
    app.config.update(typed.model_dump())
    app.extensions[EXTENSION] = typed
    return typed


def _what(model: type[BaseModel], error: Any) -> str:
    annotation = model.model_fields[str(error["loc"][0])].annotation
    name = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
    return f"must be {name}"


def settings(app: Flask | None = None) -> Any:
    """The app's typed settings as checked when it was made (values changed in ``app.config`` later, as tests
    do, are not in it: read those from ``app.config``)."""
    return (app or current_app).extensions[EXTENSION]
