"""Checkpoint folders: format, errors, and resuming training where it stopped."""

from __future__ import annotations

import json

import pytest
import torch

from generation.checkpoint import (CheckpointError, load_checkpoint, load_training_state, read_checkpoint_config,
                                   save_checkpoint)
from tests.conftest import build_tiny
from training.aae_cg import AAECodeGeneratorTrainer
from training.trainer import TrainConfig


def tiny_trainer(max_steps: int, seed: int = 0):
    model = build_tiny("aae-cg", condition="class", num_classes=10)
    config = TrainConfig(max_steps=max_steps, batch_size=32, seed=seed, device="cpu", sample_every=0,
                         checkpoint_every=0, evaluate=False, progress_bar=False)
    return AAECodeGeneratorTrainer(model, config)


def test_checkpoint_folder_has_config_weights_metrics_samples(tmp_path, digits_train):
    trainer = tiny_trainer(3)
    trainer.fit(digits_train, tmp_path / "run")
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "model.safetensors", "metrics.json", "samples.png"} <= names
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["format_version"] == 1
    assert config["class_name"] == "CodeGeneratorAAE"
    assert config["dataset"] == "digits" and config["image_shape"] == [1, 28, 28]
    assert config["class_names"] == [str(i) for i in range(10)]
    assert config["model_config"]["latent_dim"] == 8
    assert not any(name.endswith((".pt", ".pth", ".pkl", ".bin")) for name in names)


def test_resume_continues_from_the_saved_step_with_optimizer_state(tmp_path, digits_train):
    out = tmp_path / "run"
    tiny_trainer(4).fit(digits_train, out)
    resumed = tiny_trainer(7)
    resumed.fit(digits_train, out, resume=True)
    assert resumed.step == 7
    history = [json.loads(line)["step"] for line in (out / "history.jsonl").read_text().splitlines()]
    assert history == [1, 2, 3, 4, 5, 6, 7]
    # Adam's moment buffers were restored, not restarted: step counters continue
    state = resumed.optimizers["prior"].state_dict()["state"]
    assert int(next(iter(state.values()))["step"]) == 7


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, digits_train):
    straight = tiny_trainer(6)
    straight.fit(digits_train, tmp_path / "straight")
    tiny_trainer(3).fit(digits_train, tmp_path / "split")
    second = tiny_trainer(6)
    second.fit(digits_train, tmp_path / "split", resume=True)
    a, _ = load_checkpoint(tmp_path / "straight")
    b, _ = load_checkpoint(tmp_path / "split")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(pa.float(), pb.float(), atol=1e-5), name


def test_resume_refuses_a_different_model_config(tmp_path, digits_train):
    tiny_trainer(2).fit(digits_train, tmp_path / "run")
    model = build_tiny("aae-cg", condition="class", num_classes=10, latent_dim=12)
    trainer = AAECodeGeneratorTrainer(model, TrainConfig(max_steps=3, batch_size=32, device="cpu",
                                                         evaluate=False, progress_bar=False))
    with pytest.raises(CheckpointError, match="config differs"):
        trainer.fit(digits_train, tmp_path / "run", resume=True)


def test_resume_without_training_state_is_a_clear_error(tmp_path):
    model = build_tiny("aae-cg")
    save_checkpoint(model, tmp_path, dataset="x", class_names=[])
    with pytest.raises(CheckpointError, match="no training state"):
        load_training_state(tmp_path, {})


@pytest.mark.parametrize("breakage, message", [
    ("missing_folder", "does not exist"),
    ("no_config", "config.json is missing"),
    ("bad_json", "not valid JSON"),
    ("bad_version", "format_version"),
    ("no_weights", "model.safetensors is missing"),
])
def test_broken_checkpoints_are_clear_errors(tmp_path, breakage, message):
    folder = tmp_path / "ckpt"
    save_checkpoint(build_tiny("aae-cg"), folder, dataset="x", class_names=[])
    if breakage == "missing_folder":
        folder = tmp_path / "nope"
    elif breakage == "no_config":
        (folder / "config.json").unlink()
    elif breakage == "bad_json":
        (folder / "config.json").write_text("{not json")
    elif breakage == "bad_version":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config | {"format_version": 99}))
    elif breakage == "no_weights":
        (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(folder)


def test_config_round_trip_keeps_every_field(tmp_path):
    model = build_tiny("aae-cg", condition="cluster", num_classes=7, noise_dim=13)
    save_checkpoint(model, tmp_path, dataset="x", class_names=[])
    loaded, info = load_checkpoint(tmp_path)
    assert loaded.config == model.config
    assert read_checkpoint_config(tmp_path)["condition"] == "cluster"
    assert info.condition == "cluster"
