"""Inference-only exports: what they keep, how they load and sample, and what they refuse."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from generation import export as E
from generation.base import Condition
from generation.checkpoint import load_checkpoint, save_checkpoint
from generation.latent_ops import LatentOpError, interpolate
from generation.registry import backend_names, get_model_class
from generation.sampling import generate
from priorforge.cli import main as cli
from tests.conftest import build_tiny


def conditions_of(backend: str) -> list[str]:
    return [c for c in ("class", "text", "cluster", "none") if c in get_model_class(backend).supported_conditions]


def saved_tiny(tmp_path, backend: str, condition: str):
    extra = {"num_classes": 4} if condition in ("class", "cluster") else {}
    if condition == "text":
        extra["text_dim"] = 6
    model = build_tiny(backend, condition=condition, **extra).eval()
    if condition == "text":  # a fitted-looking projection so that text conditions are not all zero
        torch.manual_seed(1)
        model.text_projection_matrix.copy_(torch.randn_like(model.text_projection_matrix) * 0.2)
    folder = save_checkpoint(model, tmp_path / f"{backend}-{condition}", dataset="digits",
                             class_names=[str(i) for i in range(model.config.num_classes)])
    return model, folder


@pytest.mark.parametrize("backend", backend_names())
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_an_export_samples_like_its_source_and_repeats_itself(tmp_path, backend, precision):
    condition = conditions_of(backend)[0]
    source, folder = saved_tiny(tmp_path, backend, condition)
    entry = E.export_checkpoint(folder, tmp_path / "export", precision=precision)
    exported, info = load_checkpoint(tmp_path / "export")
    assert exported.inference_only and entry["repeatable"]
    assert set(entry["dropped_modules"]) == set(source.training_only_modules)
    weights = load_file(str(tmp_path / "export" / "model.safetensors"))
    assert not any(k.split(".")[0] in entry["dropped_modules"] for k in weights)
    floats = {v.dtype for v in weights.values() if v.is_floating_point()}
    assert floats == {torch.float16 if precision == "fp16" else torch.float32}
    assert not (tmp_path / "export" / "training_state.json").exists()
    for condition in E.check_conditions(source):
        a = generate(exported, 5, condition, seed=3)
        assert torch.equal(a, generate(exported, 5, condition, seed=3))  # same seed, same pixels, every time
        b = generate(source, 5, condition, seed=3)
        if precision == "fp32":
            assert torch.equal(a, b)
        else:
            assert (a - b).abs().max() * 127.5 <= entry["tolerance"] + 0.5
    assert info.backend == backend and json.loads((tmp_path / "export" / "config.json").read_text())["export"]


@pytest.mark.parametrize("backend", ["aae-cg", "glf"])
def test_an_export_is_smaller_and_drops_the_encoder_unless_kept(tmp_path, backend):
    _, folder = saved_tiny(tmp_path, backend, "class")
    E.export_checkpoint(folder, tmp_path / "small")
    E.export_checkpoint(folder, tmp_path / "with-encoder", keep_encoder=True)
    small, _ = load_checkpoint(tmp_path / "small")
    kept, _ = load_checkpoint(tmp_path / "with-encoder")
    assert E.folder_size(tmp_path / "small") < E.folder_size(tmp_path / "with-encoder") < E.folder_size(folder)
    images = torch.zeros(1, 1, 28, 28)
    with pytest.raises(LatentOpError):
        interpolate(small, images, images, steps=3)
    assert interpolate(kept, images, images, steps=3).shape == (3, 1, 28, 28)


def test_export_refuses_what_it_cannot_do_safely(tmp_path, monkeypatch):
    _, folder = saved_tiny(tmp_path, "aae-cg", "class")
    E.export_checkpoint(folder, tmp_path / "export")
    with pytest.raises(E.ExportError, match="already an inference-only export"):
        E.export_checkpoint(tmp_path / "export", tmp_path / "again")
    (tmp_path / "not-an-export").mkdir()
    (tmp_path / "not-an-export" / "notes.txt").write_text("keep me")
    with pytest.raises(E.ExportError, match="not an earlier export"):
        E.export_checkpoint(folder, tmp_path / "not-an-export")
    assert (tmp_path / "not-an-export" / "notes.txt").read_text() == "keep me"
    E.export_checkpoint(folder, tmp_path / "export", precision="fp32")  # an earlier export is replaced
    assert json.loads((tmp_path / "export" / "config.json").read_text())["export"]["precision"] == "fp32"
    # a rounding error above the tolerance: refused, nothing left behind, the earlier export untouched
    monkeypatch.setattr(E, "pixel_difference", lambda a, b: {"max_abs_pixel_diff": 9, "repeatable": True})
    with pytest.raises(E.ExportError, match="up to 9 levels"):
        E.export_checkpoint(folder, tmp_path / "export", tolerance=2)
    assert json.loads((tmp_path / "export" / "config.json").read_text())["export"]["precision"] == "fp32"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_cli_export_prints_the_check_and_names_bad_flags(tmp_path, capsys):
    _, folder = saved_tiny(tmp_path, "aae-cg", "cluster")
    assert cli(["export", str(folder), "--out", str(tmp_path / "out")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["precision"] == "fp16" and printed["bytes"] > 0 and printed["max_abs_pixel_diff"] <= 2
    model, _ = load_checkpoint(tmp_path / "out")
    assert model.sample(2, Condition("cluster", index=1)).shape == (2, 1, 28, 28)
    assert cli(["export", str(folder), "--out", str(tmp_path / "x"), "--tolerance", "-1"]) == 2
    assert "--tolerance" in capsys.readouterr().err
    assert cli(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "y")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_checkpoint_whose_discriminator_has_an_older_layout_loads_for_sampling(tmp_path):
    """Text models' D_I gained an image-only trunk for Q and the class head: a checkpoint saved before loads
    with its discriminator dropped (inference only); weights that do not fit what sampling needs are refused."""
    from safetensors.torch import save_file

    source, folder = saved_tiny(tmp_path, "aae-cg", "text")
    weights = load_file(str(folder / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if ".image_trunk." not in k}, str(folder / "model.safetensors"))
    model, _ = load_checkpoint(folder)
    assert model.inference_only and model.dropped_modules == ("image_discriminator",)
    condition = E.check_conditions(source)[0]
    assert torch.equal(generate(model, 2, condition, seed=1), generate(source, 2, condition, seed=1))
    save_file({k: v for k, v in weights.items() if not k.startswith("decoder.fc")}, str(folder / "model.safetensors"))
    with pytest.raises(Exception, match="do not match"):
        load_checkpoint(folder)
