"""LDE backend: shapes, conditions, the estimator's causality and likelihood, the two-stage training."""

from __future__ import annotations

import json
import math

import pytest
import torch

from generation.base import Condition, ConditionError
from generation.checkpoint import load_checkpoint, save_checkpoint
from generation.lde import LatentDensityAE, LatentDensityEstimator, LDEConfig
from generation.registry import build_model
from training.data import load_dataset
from training.lde import LDETrainer
from training.trainer import TrainConfig

TINY = dict(base_channels=8, hidden_dim=32, latent_dim=8, num_mixtures=5, lde_channels=8, lde_max_channels=16)


def tiny(**overrides) -> LatentDensityAE:
    torch.manual_seed(0)
    return build_model("lde", **{**TINY, **overrides})


def loop_config(**overrides) -> TrainConfig:
    values = dict(device="cpu", progress_bar=False, sample_every=0, checkpoint_every=0, evaluate=False)
    return TrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", None, "train")


def mixture_codes(n: int = 256, dim: int = 6) -> torch.Tensor:
    """Codes with structure: two clusters, and each dim correlated with the previous one."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(n, dim, generator=gen) * 0.3
    z[:, 0] += torch.where(torch.rand(n, generator=gen) < 0.5, -2.0, 2.0)
    for i in range(1, dim):
        z[:, i] += z[:, i - 1]
    return z


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64)])
def test_sample_shapes(shape):
    model = tiny(image_shape=shape).eval()
    images = model.sample(3, Condition(), torch.Generator().manual_seed(0))
    assert images.shape == (3, *shape)
    assert images.abs().max() <= 1.0
    assert model.encode(images).latents.shape == (3, 8)


@pytest.mark.parametrize("dim", [1, 2, 5, 8, 9, 16])
def test_block_count_and_receptive_field(dim):
    lde = LatentDensityEstimator(dim, num_mixtures=3, channels=4, max_channels=16)
    expected = math.ceil(math.log2(dim)) + 1 if dim > 1 else 1
    assert len(lde.blocks) == expected
    assert [b.dilation for b in lde.blocks] == [2**i for i in range(expected)]
    assert 2 ** len(lde.blocks) >= dim  # position D - 1 sees the pad and all of z_<D
    assert lde.head.out_channels == 9


def test_autoregressive_property():
    """The parameters of p(z_i | z_<i) do not depend on z_j for j >= i, and do depend on z_<i."""
    torch.manual_seed(0)
    dim = 9
    lde = LatentDensityEstimator(dim, num_mixtures=4, channels=8, max_channels=16).double().eval()
    z = torch.randn(2, dim, dtype=torch.double, requires_grad=True)
    for i in range(dim):
        p = lde(z)
        out = p.logits[:, i].sum() + p.mu[:, i].sum() + p.log_sigma[:, i].sum()
        (grad,) = torch.autograd.grad(out, z)
        assert torch.all(grad[:, i:] == 0), f"dim {i} sees inputs >= {i}"
        if i > 0:
            assert grad[:, :i].abs().sum() > 0, f"dim {i} ignores z_<{i}"


def test_nll_is_finite_and_fitting_lowers_it(digits):
    model = tiny(latent_dim=6)
    trainer = LDETrainer(model, loop_config(), {"lde_lr": 3e-3})
    codes = mixture_codes()
    model.lde.eval()
    before = model.prior_nll(codes).item()
    assert math.isfinite(before)
    model.lde.train()
    losses = [trainer.lde_step(codes[i * 64:(i + 1) * 64], None) for i in range(4) for _ in range(10)]
    model.lde.eval()
    after = model.prior_nll(codes).item()
    assert all(math.isfinite(x) for x in losses)
    assert after < before - 0.1


def test_log_prob_matches_a_direct_mixture_density():
    torch.manual_seed(1)
    lde = LatentDensityEstimator(3, num_mixtures=2, channels=4).double().eval()
    z = torch.randn(4, 3, dtype=torch.double)
    p = lde(z)
    weights = torch.softmax(p.logits, dim=2)
    normal = torch.distributions.Normal(p.mu, p.log_sigma.exp())
    direct = torch.log((weights * normal.log_prob(z.unsqueeze(2)).exp()).sum(dim=2))
    assert torch.allclose(lde.log_prob_per_dim(z), direct, atol=1e-10)


def test_sampling_is_seeded_and_temperature_changes_samples():
    model = tiny()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.lde.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    model.eval()
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    a = model.sample_latents(16, Condition(), g())
    assert torch.equal(a, model.sample_latents(16, Condition(), g()))
    cold = model.sample_latents(16, Condition(), g(), temperature=0.05)
    assert not torch.allclose(a, cold)
    model.config.temperature = 0.05  # the config field is the default temperature
    assert torch.equal(cold, model.sample_latents(16, Condition(), g()))
    with pytest.raises(ValueError, match="temperature"):
        model.sample_latents(2, Condition(), g(), temperature=0)
    with pytest.raises(ValueError, match="temperature"):
        LDEConfig(temperature=-1.0)


def test_bad_variant_is_refused():
    with pytest.raises(ValueError, match="variant"):
        LDEConfig(variant="vae")  # type: ignore[arg-type]


def test_save_load_gives_identical_samples(tmp_path):
    model = tiny(condition="class").eval()
    save_checkpoint(model, tmp_path, dataset="digits", class_names=[str(i) for i in range(10)])
    loaded, info = load_checkpoint(tmp_path)
    assert info.backend == "lde"
    cond = Condition("class", index=3)
    a = model.sample(4, cond, torch.Generator().manual_seed(9))
    b = loaded.sample(4, cond, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["none", "class", "text"])
def test_every_supported_condition_samples(kind):
    model = tiny(condition=kind, text_dim=12).eval()
    request = {"none": Condition(), "class": Condition("class", index=1),
               "text": Condition("text", embedding=torch.randn(12))}[kind]
    assert model.sample(2, request, torch.Generator().manual_seed(0)).shape == (2, 1, 28, 28)
    if kind == "class":  # the condition reaches the estimator
        z = torch.randn(3, 8)
        one_hot = torch.nn.functional.one_hot(torch.tensor([0, 0, 0]), 10).float()
        assert model.prior_nll(z, one_hot) != model.prior_nll(z, one_hot.roll(5, dims=1))


def test_unsupported_condition_is_refused():
    with pytest.raises(ConditionError, match="none, class, text"):
        tiny(condition="cluster")
    model = tiny(condition="text", text_dim=12).eval()
    with pytest.raises(ConditionError):
        model.sample(1, Condition("class", index=0))
    with pytest.raises(ConditionError):
        model.sample(1, Condition("text", embedding=torch.randn(5)))


def test_ae_training_lowers_the_loss_on_a_fixed_batch(digits):
    model = tiny(variant="ae")
    trainer = LDETrainer(model, loop_config())
    batch = digits.batch(torch.arange(32))
    losses = [trainer.train_step(batch.images, None, batch.labels)["rec"] for _ in range(20)]
    assert sum(losses[-3:]) < sum(losses[:3])


def test_iae_active_dims_grow_linearly(digits):
    model = tiny(variant="iae")
    trainer = LDETrainer(model, loop_config(max_steps=100, batch_size=16),
                         {"lde_fraction": 0.2, "lde_steps_per_step": 3, "iae_warmup_fraction": 0.5,
                          "iae_start_dims": 2})
    trainer.prepare(digits)
    assert trainer.split_budget(100) == (80, 60)
    assert trainer.total_steps(digits) == 80  # the shared loop runs stage 1 only
    seen = []
    for step in (0, 10, 20, 40, 79):
        trainer.step = step
        seen.append(trainer.active_dims())
    assert seen == [2, 3, 5, 8, 8]  # 2 + 6 * step / 40, all 8 from step 40 on
    trainer.step = 0
    batch = digits.batch(torch.arange(16))
    assert trainer.train_step(batch.images, None, batch.labels)["active_dims"] == 2
    plain = LDETrainer(tiny(variant="ae"), loop_config(max_steps=100))
    plain.prepare(digits)
    assert plain.active_dims() == 8


def test_masked_dims_do_not_reach_the_decoder(digits):
    model = tiny(variant="iae")
    trainer = LDETrainer(model, loop_config(max_steps=100), {"iae_start_dims": 1})
    trainer.prepare(digits)
    batch = digits.batch(torch.arange(8))
    trainer.train_step(batch.images, None, batch.labels)
    grad = model.encoder.head[-1].weight.grad  # (D, hidden): rows of masked dims get no gradient
    assert grad[1:].abs().sum() == 0 and grad[0].abs().sum() > 0


def test_two_stage_fit_reports_the_held_out_nll(digits, tmp_path):
    model = tiny(condition="class")
    config = loop_config(max_steps=10, batch_size=16)
    hparams = {"lde_fraction": 0.4, "lde_steps_per_step": 1, "lde_batch_size": 32, "lde_max_codes": 200}
    metrics = LDETrainer(model, config, hparams).fit(digits, tmp_path)
    assert metrics["steps"] == 10 and metrics["ae_steps"] == 6 and metrics["lde_steps"] == 4
    assert metrics["lde_codes"] == 180 and metrics["lde_heldout_codes"] == 20
    assert math.isfinite(metrics["lde_test_nll"]) and math.isfinite(metrics["lde_train_nll"])
    assert json.loads((tmp_path / "metrics.json").read_text())["lde_test_nll"] == metrics["lde_test_nll"]
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history] == list(range(1, 11))
    assert all("lde_nll" in row for row in history[6:]) and "rec" in history[0]
    assert all(p.requires_grad for p in model.encoder.parameters())  # unfrozen again after stage 2
    assert (tmp_path / "samples.png").is_file()
    loaded, _ = load_checkpoint(tmp_path)
    assert torch.equal(loaded.lde.head.weight, model.lde.head.weight)


def test_stage_two_leaves_the_autoencoder_alone(digits, tmp_path):
    model = tiny()
    trainer = LDETrainer(model, loop_config(max_steps=2, batch_size=16),
                         {"lde_steps": 3, "lde_batch_size": 16, "lde_max_codes": 64})
    trainer.prepare(digits)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("lde.")}
    lde_before = model.lde.head.weight.clone()
    trainer.finish(digits, None)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert not torch.equal(lde_before, model.lde.head.weight)


@pytest.mark.parametrize("hparams, match", [({"lde_fraction": 1.0}, "lde_fraction"),
                                            ({"lde_holdout": -0.1}, "lde_holdout"),
                                            ({"iae_warmup_fraction": 0}, "iae_warmup_fraction"),
                                            ({"lde_batch_size": 0}, "lde_batch_size")])
def test_bad_hparams_are_refused(hparams, match):
    with pytest.raises(ValueError, match=match):
        LDETrainer(tiny(), loop_config(), hparams)


def test_cpu_budget_bounds_both_stages(tmp_path, digits_train):
    """--max-cpu-minutes covers the density stage too, and loop steps the budget cut off are not handed to it."""
    from generation.registry import build_model
    from training.lde import LDETrainer
    from training.trainer import TrainConfig
    from tests.conftest import tiny_config_values

    model = build_model("lde", **tiny_config_values("lde", condition="class", num_classes=10))
    config = TrainConfig(epochs=50, batch_size=32, device="cpu", sample_every=0, checkpoint_every=0,
                         evaluate=False, progress_bar=False, max_cpu_seconds=2.0)
    trainer = LDETrainer(model, config)
    metrics = trainer.fit(digits_train, tmp_path / "run")
    nominal_ae, nominal_lde = metrics["nominal_ae_steps"], metrics["nominal_lde_steps"]
    assert trainer.step < nominal_ae + nominal_lde  # the budget stopped the run early
    rows = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    lde_updates = sum(1 for row in rows if "lde_nll" in row)
    assert lde_updates <= nominal_lde  # before the fix: nominal_lde + the loop steps the budget cut off
    # metrics.json reports the steps that ran, not the nominal ones the epochs would give
    assert metrics["ae_steps"] == len(rows) - lde_updates and metrics["lde_steps"] == lde_updates
    assert metrics["ae_steps"] + metrics["lde_steps"] == metrics["steps"] == trainer.step
    assert metrics["schedule"]["nominal_loop_steps"] == nominal_ae
    assert "lde_test_nll" in metrics


def random_lde(dim: int, cond_dim: int = 0, seed: int = 3) -> LatentDensityEstimator:
    """A tiny estimator in eval mode with random weights and BatchNorm running statistics (so every part of the
    blocks, condition bias and normalisation included, shapes the mixtures)."""
    torch.manual_seed(seed)
    lde = LatentDensityEstimator(dim, num_mixtures=4, channels=4, max_channels=8, cond_dim=cond_dim)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lde.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        for block in lde.blocks:
            block.norm.running_mean.copy_(torch.randn(block.norm.num_features, generator=gen) * 0.3)
            block.norm.running_var.copy_(torch.rand(block.norm.num_features, generator=gen) + 0.5)
    return lde.eval()


def condition_batch(kind: str, n: int, cond_dim: int) -> torch.Tensor | None:
    gen = torch.Generator().manual_seed(11)
    if kind == "class":
        return torch.nn.functional.one_hot(torch.randint(cond_dim, (n,), generator=gen), cond_dim).float()
    return torch.randn(n, cond_dim, generator=gen) if kind == "text" else None


@pytest.mark.parametrize("dim, kind", [(1, "none"), (8, "none"), (9, "none"), (16, "none"), (9, "class"),
                                       (16, "text")])
def test_fast_sampling_step_parameters_equal_a_full_forward_pass(dim, kind, monkeypatch):
    """The incremental sampler's mixture at step i is the full forward pass's at position i on the same code
    (which, by causality, is the pass on the partial code z_<i with anything after it)."""
    cond_dim = {"none": 0, "class": 10, "text": 12}[kind]
    lde = random_lde(dim, cond_dim)
    cond = condition_batch(kind, 6, cond_dim)
    steps = []
    draw = LatentDensityEstimator._draw

    def recording_draw(logits, mu, log_sigma, generator, temperature):
        steps.append((logits.clone(), mu.clone(), log_sigma.clone()))
        return draw(logits, mu, log_sigma, generator, temperature)

    monkeypatch.setattr(LatentDensityEstimator, "_draw", staticmethod(recording_draw))
    z = lde.sample(6, torch.Generator().manual_seed(0), cond)
    assert len(steps) == dim and z.shape == (6, dim)
    with torch.no_grad():
        full = lde(z, cond)
    for i, (logits, mu, log_sigma) in enumerate(steps):
        for fast, ref in ((logits, full.logits), (mu, full.mu), (log_sigma, full.log_sigma)):
            assert torch.allclose(fast, ref[:, i], atol=1e-5, rtol=1e-5), f"step {i}"


@pytest.mark.parametrize("dim, kind", [(8, "none"), (16, "none"), (9, "class"), (16, "text")])
def test_fast_sampling_draws_the_reference_codes(dim, kind):
    """Same generator calls in the same order as the full-pass sampler, so a seed gives the same codes up to
    float rounding (these seeds hit no near-tie in a component draw, so no component flips)."""
    cond_dim = {"none": 0, "class": 10, "text": 12}[kind]
    lde = random_lde(dim, cond_dim)
    cond = condition_batch(kind, 32, cond_dim)
    for temperature in (1.0, 0.5):
        fast = lde.sample(32, torch.Generator().manual_seed(4), cond, temperature)
        ref = lde._sample_reference(32, torch.Generator().manual_seed(4), cond, temperature)
        assert torch.allclose(fast, ref, atol=1e-5, rtol=1e-5)
    again = lde.sample(32, torch.Generator().manual_seed(4), cond, 0.5)
    assert torch.equal(again, fast)  # deterministic for a fixed seed
    assert not torch.allclose(lde.sample(32, torch.Generator().manual_seed(5), cond), fast)


def test_model_sample_latents_matches_the_reference_with_a_class_condition():
    model = tiny(condition="class", latent_dim=12).eval()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.lde.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    condition = Condition("class", index=4)
    fast = model.sample_latents(8, condition, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    cond = model.condition_vectors(8, condition, g)  # drawn first, from the same generator, as sample_latents does
    ref = model.lde._sample_reference(8, g, cond)
    assert torch.allclose(fast, ref, atol=1e-5, rtol=1e-5)
    other = model.sample_latents(8, Condition("class", index=0), torch.Generator().manual_seed(7))
    assert not torch.allclose(fast, other)  # the condition reaches the incremental path


def test_training_mode_sampling_keeps_the_full_pass():
    """BatchNorm's batch statistics span all positions in training mode, so there the full-pass sampler runs."""
    lde = random_lde(8).train()
    fast = lde.sample(4, torch.Generator().manual_seed(1))
    ref = lde._sample_reference(4, torch.Generator().manual_seed(1))
    assert torch.equal(fast, ref)


def test_fast_sampling_runs_under_autocast():
    lde = random_lde(9, cond_dim=10)
    cond = condition_batch("class", 4, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = lde.sample(4, torch.Generator().manual_seed(0), cond)
    assert z.dtype == torch.float32 and z.shape == (4, 9) and torch.isfinite(z).all()
