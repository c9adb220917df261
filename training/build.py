"""What a training needs before its loop starts, shared by ``priorforge train`` and the service's training runs:
checking a backend's condition, model options and hyper-parameters (with errors that name the field), and
building the model for a data set.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from generation.base import GenerativeModel
from generation.registry import get_model_class
from training.data import ImageData

# config fields the data set and condition decide; a request may not set them
DERIVED_FIELDS = ("image_shape", "condition", "num_classes", "text_encoder", "text_encoder_dim")


class SetupError(ValueError):
    """A training request that cannot work; ``field`` names what to fix."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def model_class(backend: str, condition: str) -> type[GenerativeModel]:
    try:
        cls = get_model_class(backend)
    except ValueError as exc:
        raise SetupError("backend", str(exc)) from None
    if condition not in cls.supported_conditions:
        raise SetupError("condition", f"backend {backend!r} supports the conditions "
                                      f"{', '.join(cls.supported_conditions)}, not {condition!r}")
    return cls


def _type_problem(value: Any, default: Any) -> str | None:
    """Why ``value`` cannot replace ``default`` (None when it can). JSON has no tuples: lists stand for them."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if isinstance(default, float):
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a string"
    if isinstance(default, (tuple, list)):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                      for v in value)
        return None if ok else "a list of positive integers"
    return None


def _example_of(annotation: str) -> Any:
    """A value of the type an annotation such as ``int | None`` names (the module uses string annotations)."""
    first = annotation.replace("None", "").split("|")[0]
    if "tuple" in first or "list" in first:
        return (1,)
    for name, example in (("bool", False), ("int", 0), ("float", 0.0), ("str", "")):
        if name in first:
            return example
    return None


def check_model_options(backend: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` as config values of ``backend``: known, settable fields of the right JSON type."""
    cls = get_model_class(backend)
    fields = {f.name: f for f in dataclasses.fields(cls.config_class)}
    settable = sorted(set(fields) - set(DERIVED_FIELDS))
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in settable:
            raise SetupError(f"model_options.{key}", f"backend {backend!r} has no model option {key!r}; "
                                                     f"valid: {', '.join(settable)}")
        field = fields[key]
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        if default is None:  # an optional field ("int | None"): null keeps the default, else check the type
            if value is None:
                continue
            default = _example_of(str(field.type))
        problem = _type_problem(value, default)
        if problem:
            raise SetupError(f"model_options.{key}", f"model option {key!r} must be {problem}, got {value!r}")
        out[key] = tuple(value) if isinstance(default, tuple) else value
    return out


def check_hparams(backend: str, hparams: dict[str, Any]) -> dict[str, Any]:
    """``hparams`` against the backend trainer's ``hparam_defaults`` (names and JSON types)."""
    from training.registry import get_trainer_class

    defaults = get_trainer_class(backend).hparam_defaults
    for key, value in hparams.items():
        if key not in defaults:
            raise SetupError(f"hparams.{key}", f"backend {backend!r} has no hyper-parameter {key!r}; "
                                               f"valid: {', '.join(sorted(defaults))}")
        problem = _type_problem(value, defaults[key])
        if problem:
            raise SetupError(f"hparams.{key}", f"hyper-parameter {key!r} must be {problem}, got {value!r}")
    return dict(hparams)


def model_config_values(backend: str, data: ImageData, condition: str, clusters: int,
                        options: dict[str, Any]) -> dict[str, Any]:
    """The full config of a model of ``backend`` for ``data`` (image shape and class count from the data)."""
    values: dict[str, Any] = {"image_shape": data.image_shape, "condition": condition}
    if condition == "class":
        if (data.labels < 0).any():
            raise SetupError("condition", f"condition 'class' needs labels, and data set {data.name!r} has "
                                          "unlabelled images")
        values["num_classes"] = len(data.class_names)
    elif condition == "cluster":
        if clusters < 2:
            raise SetupError("clusters", f"must be at least 2, got {clusters}")
        values["num_classes"] = clusters
    return values | check_model_options(backend, options)


def build_model(backend: str, data: ImageData, condition: str, *, clusters: int = 10,
                options: dict[str, Any] | None = None, seed: int = 0) -> GenerativeModel:
    """A freshly initialised model (weights seeded with ``seed``) sized for ``data``."""
    import torch

    cls = model_class(backend, condition)
    config = cls.config_class.from_dict(model_config_values(backend, data, condition, clusters, options or {}))
    torch.manual_seed(seed)
    return cls(config)
