"""Shared fixtures: tiny model configs, an isolated cache folder, the digits data set."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

# width-like config fields shrunk to keep every test model tiny (only those a backend has are set)
TINY_FIELDS = {
    "base_channels": 8,
    "hidden_dim": 32,
    "disc_hidden": 32,
    "code_disc_hidden": (32,),
    "coupling_hidden": 16,
    "flow_hidden": 16,
    "lde_channels": 8,
    "num_mixtures": 5,
    "max_channels": 32,
}


def tiny_config_values(backend: str, **overrides):
    """Config values for a tiny model of ``backend`` (widths shrunk where the config has them)."""
    from generation.registry import get_model_class

    cls = get_model_class(backend)
    names = {f.name for f in dataclasses.fields(cls.config_class)}
    values = {k: v for k, v in TINY_FIELDS.items() if k in names}
    if "latent_dim" in names and "latent_dim" not in overrides:
        values["latent_dim"] = 8
    values.update(overrides)
    return values


def build_tiny(backend: str, **overrides):
    from generation.registry import build_model

    torch.manual_seed(0)
    return build_model(backend, **tiny_config_values(backend, **overrides))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own PRIORFORGE_CACHE unless it sets one itself."""
    if "PRIORFORGE_CACHE" not in os.environ or os.environ.get("PRIORFORGE_KEEP_CACHE") != "1":
        monkeypatch.setenv("PRIORFORGE_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def digits_train():
    from training.data import load_dataset

    return load_dataset("digits", None, "train")
