"""The residual VAE: architecture sizes, loss, training, conditions, checkpoints, lr annealing."""

from __future__ import annotations

import json
import math

import pytest
import torch

from generation.base import Condition, ConditionError
from generation.checkpoint import load_checkpoint, save_checkpoint
from generation.sampling import generate
from generation.vae import ResidualBlock, VAEConfig
from tests.conftest import build_tiny
from training.trainer import TrainConfig
from training.vae import VAETrainer, gaussian_kl, vae_loss

IMAGE_SHAPES = [(1, 28, 28), (3, 32, 32), (3, 64, 64)]


def tiny_trainer(model, max_steps: int = 5, lr: float | None = None, **hparams) -> VAETrainer:
    config = TrainConfig(max_steps=max_steps, batch_size=16, lr=lr, seed=0, device="cpu", sample_every=0,
                         checkpoint_every=0, evaluate=False, progress_bar=False)
    return VAETrainer(model, config, hparams)


@pytest.mark.parametrize("shape", IMAGE_SHAPES)
def test_builds_for_each_image_size(shape):
    model = build_tiny("vae", image_shape=shape).eval()
    images = generate(model, 3, Condition("none"), seed=0)
    assert images.shape == (3, *shape)
    assert images.min() >= -1 and images.max() <= 1
    out = model.encode(torch.rand(2, *shape) * 2 - 1)
    assert out.latents.shape == (2, 8) and out.logvar is not None and out.logvar.shape == (2, 8)
    # residual stages down to 7x7 (28 px) or 4x4, channels doubling from base_channels up to max_channels
    features = model.encoder.blocks(model.encoder.stem(torch.zeros(2, *shape)))
    assert features.shape[-1] == (7 if shape[1] == 28 else 4)
    assert features.shape[1] == min(8 * 2 ** (len(model.encoder.blocks)), 32)


def test_residual_blocks_resample_with_a_skip_path():
    down, up = ResidualBlock(4, 8, "down"), ResidualBlock(8, 4, "up")
    x = torch.randn(2, 4, 16, 16)
    assert down(x).shape == (2, 8, 8, 8)
    assert up(down(x)).shape == (2, 4, 16, 16)
    assert isinstance(up.upsample, torch.nn.Upsample) and up.upsample.mode == "nearest"
    with torch.no_grad():  # zero the main path: the block is then act(skip(x))
        for module in down.main:
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.zero_()
                module.bias.zero_()
    torch.testing.assert_close(down(x), down.act(down.skip(x)))


def test_config_defaults():
    assert VAEConfig().latent_dim == 32
    assert VAEConfig(image_shape=(3, 32, 32)).latent_dim == 128
    assert VAEConfig(image_shape=(3, 64, 64)).latent_dim == 512
    with pytest.raises(ValueError, match="unsupported image size 48"):
        VAEConfig(image_shape=(3, 48, 48))


def test_kl_is_zero_for_the_prior_and_positive_otherwise():
    zeros = torch.zeros(4, 6)
    torch.testing.assert_close(gaussian_kl(zeros, zeros), torch.zeros(4))
    # KL(N(1, 1) || N(0, 1)) = 1/2 per dim; KL(N(0, e) || N(0, 1)) = (e - 1 - 1) / 2 per dim
    torch.testing.assert_close(gaussian_kl(torch.ones(1, 6), zeros[:1]), torch.tensor([3.0]))
    torch.testing.assert_close(gaussian_kl(zeros[:1], torch.ones(1, 6)), torch.tensor([3 * (math.e - 2)]))


def test_loss_maps_targets_to_zero_one_and_is_finite():
    images = torch.randint(0, 2, (3, 1, 28, 28)).float() * 2 - 1  # black/white in [-1, 1]
    mu, logvar = torch.zeros(3, 4), torch.zeros(3, 4)
    perfect = vae_loss(images * 30, images, mu, logvar, kl_weight=0.01)  # logit +30 where white, -30 where black
    assert perfect["rec"].item() < 1e-9 and perfect["kl"].item() == 0
    undecided = vae_loss(torch.zeros_like(images), images, torch.ones(3, 4), logvar, kl_weight=0.01)
    assert undecided["rec"].item() == pytest.approx(math.log(2))
    assert undecided["loss"].item() == pytest.approx(math.log(2) + 0.01 * 0.5)
    extreme = vae_loss(torch.full_like(images, 1e4), images, 50 * torch.ones(3, 4), -50 * torch.ones(3, 4), 0.01)
    assert all(math.isfinite(v.item()) for v in extreme.values())


def test_training_lowers_the_loss_on_a_fixed_batch(digits_train):
    model = build_tiny("vae", condition="class").train()
    trainer = tiny_trainer(model, lr=2e-3)  # a tiny model at the default 4e-4 needs more than 20 steps
    images, labels, _ = digits_train.subset(32, seed=1).batch(torch.arange(32))
    cond = torch.nn.functional.one_hot(labels, 10).float()
    history = []
    for step in range(20):
        trainer.noise.manual_seed(step)
        history.append(trainer.train_step(images, cond, labels))
    # BCE against grey-level targets cannot reach 0: measure the loss above its floor, the targets' entropy
    t = ((images + 1) / 2).clamp(1e-6, 1 - 1e-6)
    floor = -(t * t.log() + (1 - t) * (1 - t).log()).mean().item()
    first = sum(h["loss"] for h in history[:3]) / 3 - floor
    last = sum(h["loss"] for h in history[-3:]) / 3 - floor
    assert 0 < last < 0.8 * first, f"loss above the floor went from {first:.4f} to {last:.4f}"
    assert all(h["lr"] == 2e-3 for h in history)  # no run length known: constant lr


def test_learning_rate_is_annealed_linearly_over_the_run(digits_train, tmp_path):
    model = build_tiny("vae")
    trainer = tiny_trainer(model, max_steps=4, final_lr_fraction=0.5)
    trainer.fit(digits_train.subset(64, seed=0), tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([4e-4 * (1 - 0.5 * k / 4) for k in range(4)])
    assert (tmp_path / "run" / "samples.png").is_file()
    loaded, _ = load_checkpoint(tmp_path / "run")
    model.eval()
    assert torch.equal(generate(model, 2, Condition("none"), seed=1), generate(loaded, 2, Condition("none"), seed=1))


def test_save_load_gives_identical_samples(tmp_path):
    model = build_tiny("vae", condition="class", num_classes=10)
    with torch.no_grad():  # non-default BN statistics, so that buffers are checked too
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 2.0)
    model.eval()
    save_checkpoint(model, tmp_path / "ckpt", dataset="digits", class_names=[str(i) for i in range(10)])
    loaded, info = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config == model.config and info.backend == "vae"
    condition = Condition("class", index=7)
    assert torch.equal(generate(model, 5, condition, seed=2), generate(loaded, 5, condition, seed=2))


def test_every_supported_condition_samples_and_the_class_matters():
    plain = build_tiny("vae").eval()
    assert generate(plain, 2, Condition("none"), seed=0).shape == (2, 1, 28, 28)
    model = build_tiny("vae", condition="class", num_classes=4).eval()
    per_class = [generate(model, 2, Condition("class", index=k), seed=0) for k in range(4)]
    assert all(torch.isfinite(x).all() and x.shape == (2, 1, 28, 28) for x in per_class)
    assert not torch.equal(per_class[0], per_class[1])  # same latents, different label -> different images
    # the encoder is conditional too (q(z | x, c))
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    assert not torch.equal(model.encode(x, Condition("class", index=0)).latents,
                           model.encode(x, Condition("class", index=1)).latents)


@pytest.mark.parametrize("kind", ["text", "cluster"])
def test_unsupported_conditions_are_refused(kind):
    with pytest.raises(ConditionError, match="supported: none, class"):
        build_tiny("vae", condition=kind)


def test_mismatched_requests_are_refused():
    model = build_tiny("vae", condition="class", num_classes=4).eval()
    with pytest.raises(ConditionError, match="trained with condition 'class'"):
        generate(model, 1, Condition("none"), seed=0)
    with pytest.raises(ConditionError, match="class label"):
        model.decode(torch.zeros(1, 8))
    with pytest.raises(ConditionError, match=r"shape \(2, 4\)"):
        model.posterior(torch.zeros(2, 1, 28, 28))


def test_hyper_parameters_are_checked():
    model = build_tiny("vae")
    with pytest.raises(ValueError, match="kl_weight must be a non-negative number"):
        tiny_trainer(model, kl_weight=-1)
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        tiny_trainer(model, warmup_steps=10)
