"""The perceptual generative autoencoder (LPGA, VPGA): model, losses, warm-up, finite-difference log-det."""

from __future__ import annotations

import math

import pytest
import torch

from generation.base import Condition, ConditionError
from generation.checkpoint import load_checkpoint, save_checkpoint
from generation.pga import PGAConfig
from generation.sampling import generate
from tests.conftest import build_tiny
from training.pga import PGATrainer, finite_difference_log_det, sphere_directions
from training.trainer import TrainConfig

VARIANTS = ["lpga", "vpga"]
IMAGE_SHAPES = [(1, 28, 28), (3, 32, 32), (3, 64, 64)]


def tiny_trainer(model, **hparams) -> PGATrainer:
    config = TrainConfig(max_steps=5, batch_size=16, seed=0, device="cpu", sample_every=0, checkpoint_every=0,
                         evaluate=False, progress_bar=False)
    return PGATrainer(model, config, hparams)


def fixed_batch(digits_train, n: int = 32):
    images, labels, _ = digits_train.subset(n, seed=1).batch(torch.arange(n))
    return images, torch.nn.functional.one_hot(labels, 10).float(), labels


def run_steps(trainer: PGATrainer, images, cond, labels, steps: int) -> list[dict[str, float]]:
    """``steps`` calls of ``train_step`` with the step counter and noise seeding of the shared loop."""
    history = []
    for step in range(steps):
        trainer.step = step
        trainer.noise.manual_seed(1_000_003 * trainer.config.seed + step)
        history.append(trainer.train_step(images, cond, labels))
    return history


def run_steps_at(trainer: PGATrainer, batch, step: int) -> dict[str, float]:
    """One ``train_step`` as the shared loop's step ``step`` (0-based)."""
    trainer.step = step
    trainer.noise.manual_seed(step)
    return trainer.train_step(*batch)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", IMAGE_SHAPES)
def test_builds_for_each_image_size(variant, shape):
    model = build_tiny("pga", variant=variant, image_shape=shape).eval()
    images = generate(model, 3, Condition("none"), seed=0)
    assert images.shape == (3, *shape)
    assert images.min() >= -1 and images.max() <= 1
    out = model.encode(torch.rand(2, *shape) * 2 - 1)
    assert out.latents.shape == (2, 8)
    assert (out.logvar is not None) == (variant == "vpga")


def test_config_defaults_and_bad_variant():
    assert PGAConfig(variant="lpga").latent_dim == 12
    assert PGAConfig(variant="vpga").latent_dim == 32
    assert PGAConfig(variant="lpga", image_shape=(3, 32, 32)).latent_dim == 128
    with pytest.raises(ValueError, match="variant.*lpga, vpga.*'gan'"):
        PGAConfig(variant="gan")  # type: ignore[arg-type]


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_lowers_the_loss_on_a_fixed_batch(variant, digits_train):
    model = build_tiny("pga", variant=variant, condition="class")
    trainer = tiny_trainer(model, warmup_steps=1)
    model.train()
    history = run_steps(trainer, *fixed_batch(digits_train), steps=20)
    first = sum(h["rec"] for h in history[:3]) / 3
    last = sum(h["rec"] for h in history[-3:]) / 3
    assert last < 0.8 * first, f"rec went from {first:.4f} to {last:.4f}"
    latent_keys = ["zn_rec", "nll_enc", "nll_dec"] if variant == "lpga" else ["zn_rec", "vrec", "vkld"]
    for key in latent_keys:
        assert all(math.isfinite(h[key]) for h in history[1:]), key
    # the latent reconstruction on prior samples improves once switched on
    assert history[-1]["zn_rec"] < history[1]["zn_rec"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_warmup_switches_the_latent_terms_on_at_the_right_step(variant, digits_train):
    batch = fixed_batch(digits_train, 16)
    models = [build_tiny("pga", variant=variant, condition="class").train() for _ in range(2)]
    warm = tiny_trainer(models[0], warmup_steps=2)
    never = tiny_trainer(models[1], warmup_steps=10**9)  # a plain autoencoder throughout
    for step in range(3):
        losses = run_steps_at(warm, batch, step)
        run_steps_at(never, batch, step)
        same = all(torch.equal(a, b) for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()))
        assert losses["latent_on"] == float(step >= 2)
        assert ("zn_rec" in losses) == (step >= 2)
        assert same == (step < 2), f"step {step}: the latent terms acted {'early' if not same else 'late'}"


def test_gradients_reach_only_the_networks_the_paper_assigns(digits_train):
    """L_lr (Eq. 2) trains the encoder only; L_nll(dec) (Eq. 6) the decoder only."""
    model = build_tiny("pga", variant="lpga", condition="class").train()
    trainer = tiny_trainer(model, warmup_steps=0)
    images, cond, _ = fixed_batch(digits_train, 8)
    trainer._latent_reconstruction(trainer.randn(8, 8), cond).backward()
    assert all(p.grad is None for p in model.decoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())

    model.zero_grad(set_to_none=True)
    mu, _ = model.encode_params(images, cond)
    _, nll_dec = trainer._lpga_terms(mu, cond)
    trainer._backward(torch.zeros((), requires_grad=True), nll_dec, None, None)
    assert all(p.grad is None for p in model.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())


def test_vpga_latent_likelihood_reaches_the_encoder_only_through_its_variance(digits_train):
    """vrec (Eq. 10) trains G, and E only through sigma(x) in the reparameterisation noise: E's mean head gets
    no gradient from it (E's weights are not trained through h, as in the reference code)."""
    model = build_tiny("pga", variant="vpga", condition="class").train()
    trainer = tiny_trainer(model, warmup_steps=0)
    images, cond, _ = fixed_batch(digits_train, 8)
    mu, logvar = model.encode_params(images, cond)
    _, vrec, noise_leaf, noise = trainer._vpga_terms(mu, logvar, cond)
    trainer._backward(torch.zeros((), requires_grad=True), vrec, noise_leaf, noise)
    head = model.encoder.head[-1].weight.grad  # (2H, hidden): rows [:H] give mu, rows [H:] give logvar
    assert head is not None and torch.all(head[:8] == 0) and head[8:].abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())


@pytest.mark.parametrize("variant", VARIANTS)
def test_save_load_gives_identical_samples(variant, digits_train, tmp_path):
    model = build_tiny("pga", variant=variant, condition="class", num_classes=10)
    run_steps(tiny_trainer(model, warmup_steps=1), *fixed_batch(digits_train, 16), steps=2)  # move BN statistics
    model.eval()
    save_checkpoint(model, tmp_path / "ckpt", dataset="digits", class_names=[str(i) for i in range(10)])
    loaded, info = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config == model.config and info.backend == "pga"
    condition = Condition("class", index=3)
    assert torch.equal(generate(model, 5, condition, seed=4), generate(loaded, 5, condition, seed=4))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_supported_condition_samples_and_the_class_matters(variant):
    plain = build_tiny("pga", variant=variant).eval()
    assert generate(plain, 2, Condition("none"), seed=0).shape == (2, 1, 28, 28)
    model = build_tiny("pga", variant=variant, condition="class", num_classes=4).eval()
    per_class = [generate(model, 2, Condition("class", index=k), seed=0) for k in range(4)]
    assert all(torch.isfinite(x).all() and x.shape == (2, 1, 28, 28) for x in per_class)
    assert not torch.equal(per_class[0], per_class[1])  # same latents, different label -> different images


@pytest.mark.parametrize("kind", ["text", "cluster"])
def test_unsupported_conditions_are_refused(kind):
    with pytest.raises(ConditionError, match="supported: none, class"):
        build_tiny("pga", condition=kind)


def test_mismatched_requests_are_refused():
    model = build_tiny("pga", condition="class", num_classes=4).eval()
    with pytest.raises(ConditionError, match="trained with condition 'class'"):
        generate(model, 1, Condition("none"), seed=0)
    with pytest.raises(ConditionError, match="out of range 0..3"):
        generate(model, 1, Condition("class", index=4), seed=0)
    with pytest.raises(ConditionError, match="class label"):
        model.decode(torch.zeros(1, 8))
    plain = build_tiny("pga").eval()
    with pytest.raises(ConditionError, match="trained with condition 'none'"):
        generate(plain, 1, Condition("class", index=0), seed=0)


def test_hyper_parameters_are_checked():
    lpga = build_tiny("pga", variant="lpga")
    with pytest.raises(ValueError, match=r"\['vkld'\] do not apply to variant 'lpga'"):
        tiny_trainer(lpga, vkld=0.1)
    with pytest.raises(ValueError, match="optimizer must be one of sgd, adam"):
        tiny_trainer(lpga, optimizer="rmsprop")
    with pytest.raises(ValueError, match="warmup_steps must be a non-negative integer"):
        tiny_trainer(lpga, warmup_steps=-1)
    assert isinstance(tiny_trainer(lpga, optimizer="sgd").optimizers["pga"], torch.optim.SGD)
    assert tiny_trainer(lpga).hparams["alpha"] == 6e-2  # the reference's MNIST weight


# -- the finite-difference log-determinant (paper Eq. 6) -------------------------------------------------
def _estimates(matrix: torch.Tensor, n: int, radius: float, seed: int = 0) -> torch.Tensor:
    dim = matrix.shape[0]
    z = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    d = sphere_directions(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed + 1),
                                      dtype=torch.float64), radius)
    return finite_difference_log_det(lambda v: v @ matrix.T, z, d)  # h(z) = A z


def test_sphere_directions_have_the_radius():
    d = sphere_directions(torch.randn(100, 12), 0.05)
    torch.testing.assert_close(d.norm(dim=1), torch.full((100,), 0.05))


def test_log_det_estimate_is_exact_for_a_scaled_orthogonal_map():
    """||cQd||^2 / ||d||^2 = c^2 for every d, so (H/2) log c^2 = H log c = log|det cQ| exactly."""
    dim = 6
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    matrix = 1.7 * q
    estimates = _estimates(matrix, 50, radius=1e-2 * dim**0.5)
    exact = torch.linalg.slogdet(matrix).logabsdet
    torch.testing.assert_close(estimates, torch.full_like(estimates, exact.item()), atol=1e-8, rtol=0)


def test_log_det_estimate_bounds_the_exact_log_det_of_a_linear_map():
    """For h(z) = Az and d uniform on a sphere, ||Ad||^2/||d||^2 = sum_i s_i^2 u_i^2 with u uniform on the unit
    sphere (s_i the singular values). Jensen on log (weights u_i^2, E[u_i^2] = 1/H) gives
        log|det A| = (H/2) mean_i log s_i^2  <=  E[estimate]  <=  (H/2) log(mean_i s_i^2),
    the paper's "upper bound, tight when h is close to the identity" (Eq. 6): for A = I + eps R the gap is
    second order in eps."""
    dim = 6
    generator = torch.Generator().manual_seed(3)
    general = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    direction = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    eye = torch.eye(dim, dtype=torch.float64)
    gaps = {}
    for name, matrix in (("general", general), ("eps=0.05", eye + 0.05 * direction),
                         ("eps=0.025", eye + 0.025 * direction)):
        estimates = _estimates(matrix, 40_000, radius=1e-2 * dim**0.5)
        mean, stderr = estimates.mean().item(), estimates.std().item() / len(estimates) ** 0.5
        exact = torch.linalg.slogdet(matrix).logabsdet.item()
        singular = torch.linalg.svdvals(matrix)
        assert exact == pytest.approx(singular.log().sum().item(), abs=1e-9)  # H x the mean log singular value
        upper = 0.5 * dim * math.log(singular.pow(2).mean().item())
        assert exact - 4 * stderr <= mean <= upper + 4 * stderr, (name, exact, mean, upper)
        gaps[name] = mean - exact
    assert gaps["general"] > 0.5  # a badly conditioned map: the bound is loose...
    assert gaps["eps=0.025"] < 0.02 * gaps["general"]  # ...and tight near the identity,
    assert 3.0 < gaps["eps=0.05"] / gaps["eps=0.025"] < 6.0  # quadratically so (halving eps quarters the gap)


def test_log_det_estimate_is_scale_free_in_the_radius_for_a_linear_map():
    matrix = torch.randn(5, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    torch.testing.assert_close(_estimates(matrix, 20, radius=1e-3), _estimates(matrix, 20, radius=10.0))
