"""What a training needs before its loop starts, shared by ``priorforge train`` and the service's training runs:
checking a backend's condition, model options and hyper-parameters (with errors that name the field; the
checks themselves are torch-free, in :mod:`priorforge_spec.backends`, so the web process runs them too), and
building the model for a data set.
"""

from __future__ import annotations

from typing import Any

from generation.base import GenerativeModel
from generation.registry import get_model_class
from priorforge_spec.backends import (DERIVED_FIELDS, SetupError, check_condition,  # noqa: F401
                                      check_hparams, check_model_options)
from training.data import ImageData


def model_class(backend: str, condition: str) -> type[GenerativeModel]:
    try:
        cls = get_model_class(backend)
    except ValueError as exc:
        raise SetupError("backend", str(exc)) from None
    check_condition(backend, condition, cls.supported_conditions)
    return cls


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
