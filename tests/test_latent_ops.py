"""Latent operations (interpolate, mix) over every registered backend with an encoder, and their CLI."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from generation import registry
from generation.base import GenerativeModel, ModelConfig
from generation.checkpoint import save_checkpoint
from generation.latent_ops import LatentOpError, encode_images, interpolate, mix, mix_codes
from priorforge.cli import main

# small values for whichever of these fields a backend's config has
TINY_FIELDS = dict(base_channels=8, hidden_dim=32, latent_dim=8, noise_dim=8, disc_hidden=32,
                   code_disc_hidden=(32,), num_mixtures=3, lde_channels=4, lde_max_channels=8,
                   coupling_hidden=16)
CLASS_NAMES = [str(i) for i in range(10)]


def tiny_model(name: str, shape=(1, 28, 28)) -> GenerativeModel:
    cls = registry.get_model_class(name)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    values = {k: v for k, v in TINY_FIELDS.items() if k in fields}
    torch.manual_seed(0)
    return cls(cls.config_class.from_dict({"image_shape": shape, **values})).eval()


def encoder_backends() -> list[str]:
    return [n for n in registry.backend_names() if registry.get_model_class(n).has_encoder]


def images(n: int, seed: int, shape=(1, 28, 28)) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def reconstruct(model: GenerativeModel, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.decode(model.encode(x).latents)


class NoEncoderModel(GenerativeModel):
    """A decoder-only backend, registered by the tests that need one."""

    backend = "test-no-encoder"
    config_class = ModelConfig
    has_encoder = False

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.fc = torch.nn.Linear(4, int(np.prod(config.image_shape)))

    def sample_latents(self, n, condition, generator):
        return torch.randn(n, 4, generator=generator)

    def decode(self, latents, condition=None):
        return torch.tanh(self.fc(latents)).view(-1, *self.config.image_shape)


def test_the_new_backends_are_covered():
    assert {"lde", "glf"} <= set(encoder_backends())


@pytest.mark.parametrize("name", encoder_backends())
def test_interpolate_endpoints_are_the_reconstructions(name):
    model = tiny_model(name)
    a, b = images(2, 1), images(2, 2)
    path = interpolate(model, a, b, steps=5)
    assert path.shape == (10, 1, 28, 28)
    path = path.view(2, 5, 1, 28, 28)
    assert torch.allclose(path[:, 0], reconstruct(model, a), atol=1e-5)
    assert torch.allclose(path[:, -1], reconstruct(model, b), atol=1e-5)
    assert not torch.allclose(path[:, 2], path[:, 0], atol=1e-3)


@pytest.mark.parametrize("name", encoder_backends())
def test_mix_weights_and_flips(name):
    model = tiny_model(name)
    set_a, set_b = images(3, 3), images(3, 4)
    assert torch.allclose(mix(model, set_a, set_b, weight=1.0), reconstruct(model, set_a), atol=1e-5)
    assert torch.allclose(mix(model, set_a, set_b, weight=0.0), reconstruct(model, set_b), atol=1e-5)
    with torch.no_grad():
        z_a, z_b = model.encode(set_a).latents, model.encode(set_b).latents
        z_b[:, [0, 3]] *= -1
        expected = model.decode(0.6 * z_a + 0.4 * z_b)
    assert torch.allclose(mix(model, set_a, set_b, flip=[0, 3]), expected, atol=1e-5)


def test_mix_codes_arithmetic_and_errors():
    z_a, z_b = torch.ones(2, 4), torch.arange(8.0).view(2, 4)
    out = mix_codes(z_a, z_b, 0.6, flip=[1], flip_images=[1])
    expected_b = torch.tensor([[0.0, -1, 2, 3], [-4, 5, -6, -7]])
    assert torch.allclose(out, 0.6 + 0.4 * expected_b)
    assert mix_codes(z_a[:1], z_b, 0.5).shape == (2, 4)  # one image broadcast against a set
    with pytest.raises(LatentOpError, match="weight"):
        mix_codes(z_a, z_b, 1.5)
    with pytest.raises(LatentOpError, match="flip: code dims"):
        mix_codes(z_a, z_b, flip=[4])
    with pytest.raises(LatentOpError, match="flip_images"):
        mix_codes(z_a, z_b, flip_images=[2])
    with pytest.raises(LatentOpError, match="as many images"):
        mix_codes(torch.ones(2, 4), torch.ones(3, 4))


def test_bad_arguments_are_refused():
    model = tiny_model("glf")
    with pytest.raises(LatentOpError, match="steps"):
        interpolate(model, images(1, 0), images(1, 1), steps=1)
    with pytest.raises(LatentOpError, match="shape"):
        interpolate(model, images(1, 0, (3, 32, 32)), images(1, 1, (3, 32, 32)), steps=3)
    with pytest.raises(LatentOpError, match="as many images"):
        interpolate(model, images(2, 0), images(1, 1), steps=3)


def test_a_backend_without_an_encoder_is_refused():
    model = NoEncoderModel(ModelConfig())
    with pytest.raises(LatentOpError, match="has no encoder"):
        encode_images(model, images(1, 0))
    with pytest.raises(LatentOpError, match="has no encoder"):
        mix(model, images(1, 0), images(1, 1))


# -- CLI --------------------------------------------------------------------------------------------
@pytest.fixture
def checkpoint(tmp_path):
    folder = tmp_path / "ckpt"
    save_checkpoint(tiny_model("glf"), folder, dataset="digits", class_names=CLASS_NAMES)
    return folder


def write_png(path, seed: int, size: int = 40, mode: str = "RGB"):
    array = np.random.default_rng(seed).integers(0, 256, size=(size, size + 8, 3), dtype=np.uint8)
    Image.fromarray(array).convert(mode).save(path)
    return path


def test_cli_interpolate(checkpoint, tmp_path):
    a, b = write_png(tmp_path / "a.png", 0), write_png(tmp_path / "b.jpg", 1)
    out = tmp_path / "path.png"
    rc = main(["interpolate", "--checkpoint", str(checkpoint), "--a", str(a), "--b", str(b), "--steps", "4",
               "--out", str(out), "--device", "cpu"])
    assert rc == 0
    with Image.open(out) as img:
        assert img.size == (4 * 30 + 2, 32)  # one row of 4 28x28 images, 2px padding


def test_cli_mix_reads_folders_and_files(checkpoint, tmp_path):
    set_a = tmp_path / "horses"
    set_a.mkdir()
    for i in range(3):
        write_png(set_a / f"{i}.png", i, mode="L")
    (set_a / "notes.txt").write_text("not an image")
    set_b = [str(write_png(tmp_path / f"bird{i}.png", 10 + i)) for i in range(3)]
    out = tmp_path / "mix.png"
    rc = main(["mix", "--checkpoint", str(checkpoint), "--set-a", str(set_a), "--set-b", *set_b,
               "--weight", "0.6", "--flip", "0,3", "--flip-images", "1", "--out", str(out), "--nrow", "3",
               "--device", "cpu"])
    assert rc == 0
    with Image.open(out) as img:
        assert img.size == (3 * 30 + 2, 32)
        assert '"weight": 0.6' in img.text["priorforge"]


@pytest.mark.parametrize("args, message", [
    (["--weight", "1.5"], "--weight must be between 0 and 1"),
    (["--flip", "a,b"], "--flip expects comma-separated integers"),
    (["--flip", "99"], "flip: code dims [99] out of range"),
    (["--out", "mix.jpg"], "--out must be a .png file"),
])
def test_cli_mix_errors(checkpoint, tmp_path, capsys, args, message):
    a, b = write_png(tmp_path / "a.png", 0), write_png(tmp_path / "b.png", 1)
    base = ["mix", "--checkpoint", str(checkpoint), "--set-a", str(a), "--set-b", str(b),
            "--out", str(tmp_path / "mix.png"), "--device", "cpu"]
    assert main(base + args) == 2
    assert message in capsys.readouterr().err


def test_cli_missing_inputs(checkpoint, tmp_path, capsys):
    a = write_png(tmp_path / "a.png", 0)
    assert main(["interpolate", "--checkpoint", str(checkpoint), "--a", str(a), "--b", str(tmp_path / "nope.png"),
                 "--out", str(tmp_path / "o.png")]) == 2
    assert "--b: image file" in capsys.readouterr().err
    assert main(["mix", "--checkpoint", str(checkpoint), "--set-a", str(tmp_path / "missing"), "--set-b", str(a),
                 "--out", str(tmp_path / "o.png")]) == 2
    assert "--set-a:" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["mix", "--checkpoint", str(checkpoint), "--set-a", str(a), "--set-b", str(tmp_path / "empty"),
                 "--out", str(tmp_path / "o.png")]) == 2
    assert "holds no images" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    assert main(["interpolate", "--checkpoint", str(checkpoint), "--a", str(a), "--b", str(bad),
                 "--out", str(tmp_path / "o.png"), "--device", "cpu"]) == 2
    assert "not a readable image" in capsys.readouterr().err
    assert main(["interpolate", "--checkpoint", str(tmp_path / "nockpt"), "--a", str(a), "--b", str(a),
                 "--out", str(tmp_path / "o.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["interpolate", "--checkpoint", str(checkpoint), "--a", str(a), "--b", str(a), "--steps", "1",
                 "--out", str(tmp_path / "o.png")]) == 2
    assert "--steps must be between" in capsys.readouterr().err


def test_cli_refuses_a_backend_without_an_encoder(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(registry.BACKENDS, NoEncoderModel.backend, f"{__name__}:NoEncoderModel")
    folder = tmp_path / "noenc"
    save_checkpoint(NoEncoderModel(ModelConfig()), folder, dataset="digits", class_names=CLASS_NAMES)
    a = write_png(tmp_path / "a.png", 0)
    assert main(["interpolate", "--checkpoint", str(folder), "--a", str(a), "--b", str(a),
                 "--out", str(tmp_path / "o.png"), "--device", "cpu"]) == 2
    assert "backend 'test-no-encoder' has no encoder" in capsys.readouterr().err


# -- interpolation between generated codes (the service's interpolation experiment) ----------------------------
def tiny_class_model(name: str) -> GenerativeModel:
    cls = registry.get_model_class(name)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    values = {k: v for k, v in TINY_FIELDS.items() if k in fields}
    torch.manual_seed(0)
    return cls(cls.config_class.from_dict({"image_shape": (1, 28, 28), "condition": "class", "num_classes": 10,
                                           **values})).eval()


@pytest.mark.parametrize("name", registry.backend_names())
def test_interpolate_generated_ends_are_the_service_images(name):
    """Every backend, encoder or not: the ends of the line are, bit for bit, image 0 of the jobs of the two ends
    (generate_like_service draws and decodes as a service job does); a backend whose decoder reads the condition
    goes between seeds of one label only, the others between labels too."""
    from generation.base import Condition
    from generation.latent_ops import interpolate_generated
    from generation.sampling import CONDITION_FREE_DECODERS, generate_like_service

    model = tiny_class_model(name)
    three, eight = Condition("class", index=3), Condition("class", index=8)
    path = interpolate_generated(model, three, 11, three, 12, 5, pass_size=8)  # between two seeds
    assert path.shape == (5, 1, 28, 28)
    assert torch.equal(path[0], generate_like_service(model, 1, three, 11, pass_size=8)[0])
    assert torch.equal(path[-1], generate_like_service(model, 1, three, 12, pass_size=8)[0])
    assert not torch.equal(path[0], path[2])  # the middle is neither end
    if name in CONDITION_FREE_DECODERS:
        path = interpolate_generated(model, three, 11, eight, 11, 4, pass_size=8)  # between labels, one seed
        assert torch.equal(path[0], generate_like_service(model, 1, three, 11, pass_size=8)[0])
        assert torch.equal(path[-1], generate_like_service(model, 1, eight, 11, pass_size=8)[0])
    else:
        with pytest.raises(LatentOpError, match="between seeds of one condition only"):
            interpolate_generated(model, three, 11, eight, 11, 4, pass_size=8)
    with pytest.raises(LatentOpError, match="at least 2"):
        interpolate_generated(model, three, 11, three, 12, 1, pass_size=8)


@pytest.mark.parametrize("name", registry.backend_names())
def test_regenerate_as_another_label_keeps_the_code(name):
    """glf, pga and vae re-generate an encoded image under another label; under its own label that is its
    reconstruction (glf: the flow there and back, up to float rounding); the others refuse."""
    from generation.base import Condition
    from generation.latent_ops import REGENERATING_BACKENDS, reconstruct_and_mix, regenerate_as

    model = tiny_class_model(name)
    x = images(1, 5)[0]
    three, eight = Condition("class", index=3), Condition("class", index=8)
    if name not in REGENERATING_BACKENDS:
        with pytest.raises(LatentOpError, match="cannot re-generate"):
            regenerate_as(model, x, three, [eight], pass_size=8)
        return
    if name == "glf":  # an untrained flow starts as the identity, which no condition changes: move it off it
        generator = torch.Generator().manual_seed(1)
        for parameter in model.flow.parameters():
            parameter.data.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    out = regenerate_as(model, x, three, [three, eight], pass_size=8)
    reconstruction = reconstruct_and_mix(model, [x], None, 8, three)[1]
    assert out.shape == (2, 1, 28, 28)
    assert torch.allclose(out[0], reconstruction, atol=1e-4)
    assert not torch.allclose(out[1], out[0], atol=1e-3)  # the label changes the image
