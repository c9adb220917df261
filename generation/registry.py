"""The one map from backend names (used by the CLI, the service and checkpoints) to model classes.

Entries are import paths so that importing the registry does not import every backend.
"""

from __future__ import annotations

import importlib

from generation.base import GenerativeModel, ModelConfig

BACKENDS: dict[str, str] = {
    "aae-cg": "generation.aae_cg:CodeGeneratorAAE",
    "lde": "generation.lde:LatentDensityAE",
    "glf": "generation.glf:GenerativeLatentFlow",
    "pga": "generation.pga:PerceptualGenerativeAE",
    "vae": "generation.vae:ResidualVAE",
}


def backend_names() -> list[str]:
    return sorted(BACKENDS)


def get_model_class(name: str) -> type[GenerativeModel]:
    """The model class registered as ``name``; ``ValueError`` listing the valid names otherwise."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; valid backends: {', '.join(backend_names())}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_model(name: str, **config_values) -> GenerativeModel:
    """Build a fresh model of backend ``name`` from config keyword arguments."""
    cls = get_model_class(name)
    config = cls.config_class.from_dict(config_values)
    return cls(config)


def config_class(name: str) -> type[ModelConfig]:
    return get_model_class(name).config_class
