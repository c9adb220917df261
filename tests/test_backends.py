"""One test class over every registry entry: the uniform interface each backend must honour."""

from __future__ import annotations

import pytest
import torch

from generation.base import CONDITION_KINDS, Condition, ConditionError
from generation.checkpoint import load_checkpoint, save_checkpoint
from generation.registry import backend_names, get_model_class
from generation.sampling import generate
from tests.conftest import build_tiny
from training.registry import get_trainer_class
from training.trainer import TrainConfig

IMAGE_SHAPES = [(1, 28, 28), (3, 32, 32), (3, 64, 64)]


def condition_for(model, kind: str, index: int = 1) -> Condition:
    if kind in ("class", "cluster"):
        return Condition(kind, index=index)
    if kind == "text":
        return Condition("text", embedding=torch.randn(model.config.text_dim, generator=torch.Generator().manual_seed(5)))
    return Condition("none")


@pytest.mark.parametrize("backend", backend_names())
class TestBackendInterface:
    @pytest.mark.parametrize("shape", IMAGE_SHAPES)
    def test_builds_and_samples_each_image_size(self, backend, shape):
        model = build_tiny(backend, image_shape=shape).eval()
        images = generate(model, 3, Condition("none"), seed=0)
        assert images.shape == (3, *shape)
        assert images.min() >= -1.0 and images.max() <= 1.0
        if model.has_encoder:
            x = torch.rand(2, *shape) * 2 - 1
            out = model.encode(x)
            assert out.latents.shape[0] == 2 and out.latents.ndim == 2

    def test_training_steps_lower_the_loss(self, backend, digits_train, tmp_path):
        torch.manual_seed(0)
        model = build_tiny(backend, condition="class", num_classes=10)
        config = TrainConfig(max_steps=1, batch_size=32, seed=0, device="cpu", sample_every=0,
                             checkpoint_every=0, evaluate=False, progress_bar=False)
        trainer = get_trainer_class(backend)(model, config, tiny_trainer_hparams(backend))
        fixed = digits_train.subset(32, seed=1)
        images, labels, _ = fixed.batch(torch.arange(32))
        cond = torch.nn.functional.one_hot(labels, 10).float()
        model.train()
        history = [trainer.train_step(images, cond, labels) for _ in range(30)]
        key = reconstruction_key(history[0])
        first = sum(h[key] for h in history[:3]) / 3
        last = sum(h[key] for h in history[-3:]) / 3
        assert last < first, f"{backend}: {key} went from {first:.4f} to {last:.4f}"

    @pytest.mark.parametrize("kind", CONDITION_KINDS)
    def test_each_supported_condition_samples_and_others_are_refused(self, backend, kind):
        cls = get_model_class(backend)
        if kind not in cls.supported_conditions:
            with pytest.raises(ConditionError, match="supported"):
                build_tiny(backend, condition=kind)
            return
        model = build_tiny(backend, condition=kind, num_classes=4).eval()
        images = generate(model, 2, condition_for(model, kind), seed=1)
        assert images.shape == (2, 1, 28, 28)
        assert torch.isfinite(images).all()

    @pytest.mark.parametrize("kind", ["none", "class"])
    def test_save_load_round_trip_gives_identical_samples(self, backend, kind, tmp_path):
        if kind not in get_model_class(backend).supported_conditions:
            pytest.skip(f"{backend} does not support {kind}")
        model = build_tiny(backend, condition=kind, num_classes=4).eval()
        with torch.no_grad():  # perturb BN statistics so that buffers are checked too
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.1, 0.1)
        save_checkpoint(model, tmp_path / "ckpt", dataset="test", class_names=["a", "b", "c", "d"])
        loaded, info = load_checkpoint(tmp_path / "ckpt")
        condition = condition_for(model, kind, index=2)
        assert torch.equal(generate(model, 4, condition, seed=7), generate(loaded, 4, condition, seed=7))
        assert info.backend == backend and info.class_names == ["a", "b", "c", "d"]

    def test_sampling_is_deterministic_per_seed(self, backend):
        model = build_tiny(backend).eval()
        a = generate(model, 3, Condition("none"), seed=11)
        b = generate(model, 3, Condition("none"), seed=11)
        c = generate(model, 3, Condition("none"), seed=12)
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def tiny_trainer_hparams(backend: str) -> dict:
    """Hyper-parameters that make a backend's first steps exercise its full loss quickly."""
    defaults = get_trainer_class(backend).hparam_defaults
    out = {}
    for name, value in {"warmup_steps": 0, "lde_fraction": 0.5}.items():
        if name in defaults:
            out[name] = value
    return out


def reconstruction_key(losses: dict) -> str:
    for key in ("rec_pix", "rec", "recon", "reconstruction", "loss"):
        if key in losses:
            return key
    return next(iter(losses))
