"""Backend name -> trainer class (the trainer-side twin of ``generation.registry``)."""

from __future__ import annotations

import importlib

from training.trainer import Trainer

TRAINERS: dict[str, str] = {
    "aae-cg": "training.aae_cg:AAECodeGeneratorTrainer",
    "lde": "training.lde:LDETrainer",
    "glf": "training.glf:GLFTrainer",
    "pga": "training.pga:PGATrainer",
    "vae": "training.vae:VAETrainer",
}


def get_trainer_class(name: str) -> type[Trainer]:
    try:
        target = TRAINERS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; valid backends: {', '.join(sorted(TRAINERS))}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)
