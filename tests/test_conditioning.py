"""Every backend honours its class condition, and the class prior of the CVAE-style backends.

The regression test trains a tiny model of each backend for a few hundred steps on four classes of very
different 8x8 shapes and asks it for each class; a hand-made judge (the class of the nearest real image) must find the
requested shape in most samples. Before the class prior, the VAE and LPGA drew about 60% of the requested
shapes here (some classes near chance): their decoders ignored the label.
"""

from __future__ import annotations

import pytest
import torch

from generation.base import Condition
from generation.checkpoint import load_checkpoint, save_checkpoint
from generation.layers import ClassGaussianPrior
from generation.sampling import generate
from tests.conftest import build_tiny
from training.data import ImageData
from training.registry import get_trainer_class
from training.trainer import TrainConfig

SHAPES = ["bar across", "bar down", "square", "frame"]
CASES = [("aae-cg", {}), ("glf", {}), ("lde", {}), ("pga", {"variant": "lpga"}), ("pga", {"variant": "vpga"}),
         ("vae", {}), ("pga", {"variant": "lpga", "class_prior": "flow"}), ("vae", {"class_prior": "flow"})]


def shapes_data(n: int, seed: int) -> ImageData:
    """``n`` 8x8 images, classes in turn: a horizontal bar, a vertical bar, a small square, a frame; each at a
    random offset (bars, square) and brightness, plus faint noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(SHAPES)
    images = torch.zeros(n, 1, 8, 8)
    offsets = torch.randint(0, 3, (n,), generator=gen).tolist()
    brightness = (0.6 + 0.4 * torch.rand(n, generator=gen)).tolist()
    for i, (k, o, b) in enumerate(zip(labels.tolist(), offsets, brightness)):
        if k == 0:
            images[i, 0, o:o + 2, 1:7] = b
        elif k == 1:
            images[i, 0, 1:7, o:o + 2] = b
        elif k == 2:
            images[i, 0, 2 + o // 2:5 + o // 2, 2:5] = b
        else:
            images[i, 0, [0, -1], :] = b
            images[i, 0, :, [0, -1]] = b
    images = (images + 0.05 * torch.rand(n, 1, 8, 8, generator=gen)).clamp(0, 1)
    return ImageData("shapes", (images * 255).round().to(torch.uint8), labels, list(SHAPES))


class NearestReference:
    """The judge: the class of the nearest held-out real image in pixel space (1-NN)."""

    def __init__(self, data: ImageData):
        self.references = data.batch(torch.arange(len(data))).images.flatten(1)  # (N, 64)
        self.labels = data.labels

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.labels[torch.cdist(images.flatten(1).float(), self.references).argmin(1)]  # (n,)


@pytest.fixture(scope="module")
def judge() -> NearestReference:
    return NearestReference(shapes_data(400, seed=1))


def test_the_judge_tells_the_shapes_apart(judge):
    real = shapes_data(400, seed=2)
    assert (judge(real.batch(torch.arange(400)).images) == real.labels).float().mean() == 1.0
    noise = torch.rand(400, 1, 8, 8) * 2 - 1  # not a shape: the judge's answers are spread, not one class
    assert torch.bincount(judge(noise), minlength=4).max() < 400


@pytest.mark.parametrize("backend, options", CASES, ids=[f"{b}-{'-'.join(map(str, o.values())) or 'default'}"
                                                         for b, o in CASES])
def test_a_class_model_draws_the_requested_class(backend, options, judge, tmp_path):
    model = build_tiny(backend, image_shape=(1, 8, 8), condition="class", num_classes=4, **options)
    # tiny models learn at 2e-3 in a few hundred steps; each backend's other settings are its defaults
    steps = 400 if backend == "lde" else 300  # the LDE's loop gets 3/4 of its steps, its density stage the rest
    config = TrainConfig(epochs=1000, max_steps=steps, batch_size=32, lr=2e-3, seed=0, device="cpu", sample_every=0,
                         checkpoint_every=0, evaluate=False, progress_bar=False)
    get_trainer_class(backend)(model, config).fit(shapes_data(512, seed=0), tmp_path)
    model.eval()
    accuracy = [float((judge(generate(model, 100, Condition("class", index=k), seed=k)) == k).float().mean())
                for k in range(len(SHAPES))]
    assert min(accuracy) >= 0.5 and sum(accuracy) / len(accuracy) >= 0.75, \
        f"{backend} {options}: share of samples of the requested shape, per class: {accuracy}"


# -- the per-class Gaussian ------------------------------------------------------------------------------
def test_class_gaussian_fits_each_class_and_samples_from_it():
    gen = torch.Generator().manual_seed(0)
    mixing = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.5, 0.0], [0.0, -0.3, 0.2]])
    means = torch.tensor([[3.0, 0.0, -1.0], [-2.0, 1.0, 0.5]])
    labels = torch.arange(4000) % 2
    codes = means[labels] + torch.randn(4000, 3, generator=gen) @ mixing.T  # class k: N(means[k], A A^T)
    prior = ClassGaussianPrior(num_classes=2, dim=3)
    noise = torch.randn(5, 3, generator=gen)
    assert torch.equal(prior.sample(torch.zeros(5, dtype=torch.long), noise), noise)  # unfitted: N(0, I)
    prior.fit(codes, labels)
    assert bool(prior.fitted)
    draws = prior.sample(torch.ones(20000, dtype=torch.long), torch.randn(20000, 3, generator=gen))
    torch.testing.assert_close(draws.mean(0), means[1], atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(draws.T), mixing @ mixing.T, atol=0.05, rtol=0)
    torch.testing.assert_close(prior.mean[0], means[0], atol=0.05, rtol=0)


def test_a_class_without_codes_gets_the_gaussian_of_all_codes():
    codes, labels = torch.randn(50, 2, generator=torch.Generator().manual_seed(1)) + 4, torch.zeros(50)
    prior = ClassGaussianPrior(num_classes=2, dim=2)
    prior.fit(codes, labels)
    torch.testing.assert_close(prior.mean[1], codes.mean(0))


@pytest.mark.parametrize("backend", ["vae", "pga"])
def test_a_checkpoint_from_before_the_class_prior_loads_and_samples_as_it_did(backend, tmp_path):
    model = build_tiny(backend, condition="class", num_classes=4).eval()
    save_checkpoint(model, tmp_path / "ckpt", dataset="test", class_names=list("abcd"))
    # what such a checkpoint holds: no class_prior in its config, none of the prior's buffers in its weights
    from safetensors.torch import load_file, save_file
    import json

    weights = {k: v for k, v in load_file(str(tmp_path / "ckpt" / "model.safetensors")).items()
               if not k.startswith("class_prior.")}
    save_file(weights, str(tmp_path / "ckpt" / "model.safetensors"))
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    del config["model_config"]["class_prior"]
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert not bool(loaded.class_prior.fitted)
    condition = Condition("class", index=2)
    noise = torch.randn(3, model.config.latent_dim, generator=torch.Generator().manual_seed(4))
    assert torch.equal(loaded.sample_latents(3, condition, torch.Generator().manual_seed(4)), noise)  # N(0, I)
    partial = dict(weights, **{"class_prior.mean": torch.zeros(4, model.config.latent_dim)})
    with pytest.raises(RuntimeError, match="class_prior"):  # some of its buffers but not all: incomplete
        loaded.load_state_dict(partial)


@pytest.mark.parametrize("backend", ["vae", "pga"])
def test_a_fitted_class_prior_is_saved_and_drawn_from(backend, tmp_path):
    model = build_tiny(backend, condition="class", num_classes=4).eval()
    d = model.config.latent_dim
    model.class_prior.fit(torch.randn(40, d) + 10 * torch.arange(40).remainder(4)[:, None], torch.arange(40) % 4)
    codes = model.sample_latents(200, Condition("class", index=3), torch.Generator().manual_seed(0))
    assert abs(float(codes.mean()) - 30) < 1  # class 3's codes sit around 30
    save_checkpoint(model, tmp_path / "ckpt", dataset="test", class_names=list("abcd"))
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    condition = Condition("class", index=1)
    assert torch.equal(generate(model, 4, condition, seed=3), generate(loaded, 4, condition, seed=3))


@pytest.mark.parametrize("backend", ["vae", "pga"])
def test_the_class_prior_leaves_the_autoencoder_training_unchanged(backend):
    """The paper's objective is intact: from the same start, the encoder and decoder take the same steps with
    a Gaussian prior (fitted afterwards), a flow prior (its own optimiser) or none."""
    from tests.test_backends import tiny_trainer_hparams

    data = shapes_data(64, seed=3)
    images, labels, _ = data.batch(torch.arange(32))
    cond = torch.nn.functional.one_hot(labels, 4).float()
    weights = []
    for prior in ("standard", "gaussian", "flow"):
        model = build_tiny(backend, image_shape=(1, 8, 8), condition="class", num_classes=4, class_prior=prior)
        config = TrainConfig(max_steps=3, batch_size=32, seed=0, device="cpu", progress_bar=False, evaluate=False)
        trainer = get_trainer_class(backend)(model, config, tiny_trainer_hparams(backend))
        for step in range(3):
            trainer.step = step
            trainer.noise.manual_seed(step)
            losses = trainer.train_step(images, cond, labels)
        assert ("prior_nll" in losses) == (prior == "flow")
        weights.append({k: v for k, v in model.state_dict().items() if k.startswith(("encoder.", "decoder."))})
    assert all(torch.equal(weights[0][k], other[k]) for other in weights[1:] for k in weights[0])


def test_class_prior_option_is_checked():
    with pytest.raises(ValueError, match="class_prior must be one of gaussian, flow, standard"):
        build_tiny("vae", condition="class", class_prior="mixture")
    plain = build_tiny("pga", condition="none")  # the option only concerns class models: N(0, I) otherwise
    assert plain.class_prior is None and plain.prior_flow is None
