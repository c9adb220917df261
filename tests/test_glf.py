"""GLF backend: shapes, conditions, the flow's invertibility and log-det, training, checkpoints."""

from __future__ import annotations

import pytest
import torch

from generation.base import Condition, ConditionError
from generation.checkpoint import load_checkpoint, save_checkpoint
from generation.glf import AffineCoupling, GenerativeLatentFlow, GLFConfig, LatentFlow
from generation.registry import build_model
from training.data import load_dataset
from training.glf import GLFTrainer
from training.trainer import TrainConfig

TINY = dict(base_channels=8, hidden_dim=32, latent_dim=8, coupling_hidden=32)


def tiny(**overrides) -> GenerativeLatentFlow:
    torch.manual_seed(0)
    return build_model("glf", **{**TINY, **overrides})


def randomize(module: torch.nn.Module, scale: float = 0.3) -> None:
    """Non-zero weights everywhere (the coupling nets start at the identity)."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", None, "train")


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64)])
def test_sample_shapes(shape):
    model = tiny(image_shape=shape).eval()
    images = model.sample(3, Condition(), torch.Generator().manual_seed(0))
    assert images.shape == (3, *shape)
    assert images.abs().max() <= 1.0
    assert model.encode(images).latents.shape == (3, 8)


def test_defaults_follow_the_reference():
    assert GLFConfig(image_shape=(1, 28, 28)).latent_dim == 20
    assert GLFConfig(image_shape=(1, 28, 28)).coupling_hidden == 64
    assert GLFConfig(image_shape=(3, 32, 32)).latent_dim == 64
    assert GLFConfig(image_shape=(3, 32, 32)).coupling_hidden == 256
    flow = GenerativeLatentFlow(GLFConfig(**TINY)).flow
    assert len(flow.layers) == 8  # 4 blocks of 2 couplings


def test_flow_is_invertible():
    flow = LatentFlow(dim=7, blocks=4, hidden=16, cond_dim=3, clamp=2.0).double()
    randomize(flow)
    z, cond = torch.randn(5, 7, dtype=torch.double), torch.randn(5, 3, dtype=torch.double)
    u, _ = flow(z, cond)
    assert not torch.allclose(u, z)
    assert torch.allclose(flow.inverse(u, cond), z, atol=1e-9)


def test_a_conditional_base_starts_as_the_standard_normal_and_moves_with_the_condition():
    plain = LatentFlow(dim=6, blocks=2, hidden=16, cond_dim=3).double()
    with_base = LatentFlow(dim=6, blocks=2, hidden=16, cond_dim=3, conditional_base=True).double()
    with_base.layers.load_state_dict(plain.layers.state_dict())
    z, cond = torch.randn(5, 6, dtype=torch.double), torch.randn(5, 3, dtype=torch.double)
    assert torch.allclose(with_base.nll(z, cond), plain.nll(z, cond))  # zero-initialised: N(0, I)
    randomize(with_base)
    noise = torch.randn(5, 6, dtype=torch.double)
    codes = with_base.sample(noise, cond)
    assert torch.allclose(with_base.standard_noise(codes, cond), noise, atol=1e-9)  # sample and its inverse
    other = with_base.sample(noise, torch.randn(5, 3, dtype=torch.double))
    assert not torch.allclose(codes, other)
    # the NLL is the change of variables through the base's affine map: N(mean, scale^2) of f(z)
    u, log_det = with_base(z, cond)
    mean, log_scale = with_base.base(cond)
    expected = -torch.distributions.Normal(mean, log_scale.exp()).log_prob(u).sum(dim=1) - log_det
    assert torch.allclose(with_base.nll(z, cond), expected)


def test_a_conditional_base_needs_a_condition():
    with pytest.raises(ValueError, match="conditional_base needs a class or text condition"):
        tiny(conditional_base=True)
    model = tiny(condition="class", conditional_base=True)
    assert model.flow.base is not None


def test_log_det_matches_brute_force_jacobian():
    flow = LatentFlow(dim=4, blocks=4, hidden=16, clamp=2.0).double()
    randomize(flow, 0.5)
    z = torch.randn(3, 4, dtype=torch.double)
    _, log_det = flow(z)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda x: flow(x.unsqueeze(0))[0].squeeze(0), z[i])  # (4, 4)
        assert torch.allclose(log_det[i], torch.linalg.slogdet(jac).logabsdet, atol=1e-8)


def test_scales_are_soft_clamped():
    layer = AffineCoupling(4, 8, 0, clamp=2.0, permutation=torch.arange(4))
    with torch.no_grad():
        layer.net[-1].bias.fill_(50.0)  # would be exp(50) without the clamp
    _, log_det = layer(torch.zeros(2, 4))
    assert torch.all(log_det <= 2 * 2.0)


def test_permutations_are_saved_and_restored(tmp_path):
    model = tiny(permutation_seed=5)
    save_checkpoint(model, tmp_path, dataset="digits", class_names=[str(i) for i in range(10)])
    loaded, _ = load_checkpoint(tmp_path)
    perms = [layer.permutation for layer in model.flow.layers]
    assert any(not torch.equal(p, torch.arange(8)) for p in perms)
    assert all(torch.equal(a.permutation, b) for a, b in zip(loaded.flow.layers, perms))


def test_save_load_gives_identical_samples(tmp_path):
    model = tiny(condition="class")
    randomize(model.flow, 0.1)
    model.eval()
    save_checkpoint(model, tmp_path, dataset="digits", class_names=[str(i) for i in range(10)])
    loaded, info = load_checkpoint(tmp_path)
    assert info.backend == "glf"
    cond = Condition("class", index=4)
    a = model.sample(4, cond, torch.Generator().manual_seed(11))
    b = loaded.sample(4, cond, torch.Generator().manual_seed(11))
    assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["none", "class", "text"])
def test_every_supported_condition_samples(kind):
    model = tiny(condition=kind, text_dim=12)
    randomize(model.flow, 0.1)
    model.eval()
    request = {"none": Condition(), "class": Condition("class", index=1),
               "text": Condition("text", embedding=torch.randn(12))}[kind]
    images = model.sample(2, request, torch.Generator().manual_seed(0))
    assert images.shape == (2, 1, 28, 28)
    if kind == "class":  # the condition reaches the flow
        g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
        other = model.sample_latents(2, Condition("class", index=7), g())
        assert not torch.allclose(model.sample_latents(2, request, g()), other)


def test_unsupported_condition_is_refused():
    with pytest.raises(ConditionError, match="none, class, text"):
        tiny(condition="cluster")
    model = tiny(condition="class").eval()
    with pytest.raises(ConditionError):
        model.sample(1, Condition())
    with pytest.raises(ConditionError):
        model.sample(1, Condition("class", index=10))


def _batch(digits, n=32):
    batch = digits.batch(torch.arange(n))
    return batch.images, torch.nn.functional.one_hot(batch.labels, 10).float(), batch.labels


def test_training_lowers_the_loss_on_a_fixed_batch(digits):
    model = tiny(condition="class")
    trainer = GLFTrainer(model, TrainConfig(device="cpu", progress_bar=False))
    images, cond, labels = _batch(digits)
    losses = [trainer.train_step(images, cond, labels) for _ in range(20)]
    first = sum(step["rec"] + step["nll"] for step in losses[:3]) / 3
    last = sum(step["rec"] + step["nll"] for step in losses[-3:]) / 3
    assert last < first
    assert losses[-1]["nll"] < losses[0]["nll"]


@pytest.mark.parametrize("regularized", [False, True])
def test_stop_gradient_keeps_the_nll_out_of_the_encoder(digits, regularized):
    """The encoder's update is the same with and without the flow NLL exactly when the gradient is stopped."""
    images, _, labels = _batch(digits, 16)
    updates = {}
    for nll_weight in (0.0, 1.0):
        model = tiny(regularized=regularized)
        randomize(model.flow, 0.1)
        trainer = GLFTrainer(model, TrainConfig(device="cpu", progress_bar=False), {"nll_weight": nll_weight})
        trainer.train_step(images, None, labels)
        updates[nll_weight] = torch.cat([p.detach().flatten() for p in model.encoder.parameters()])
    same = torch.allclose(updates[0.0], updates[1.0])
    assert same != regularized


def test_fit_writes_a_checkpoint(digits, tmp_path):
    model = tiny(condition="class")
    config = TrainConfig(max_steps=3, batch_size=16, device="cpu", progress_bar=False, sample_every=0,
                         checkpoint_every=0, evaluate=False)
    metrics = GLFTrainer(model, config).fit(digits.subset(64), tmp_path)
    assert metrics["steps"] == 3
    assert (tmp_path / "samples.png").is_file()
    loaded, _ = load_checkpoint(tmp_path)
    assert loaded.config.condition == "class"


def test_bad_hparam_is_refused():
    with pytest.raises(ValueError, match="flow_betas"):
        GLFTrainer(tiny(), TrainConfig(device="cpu"), {"flow_betas": [0.8]})
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        GLFTrainer(tiny(), TrainConfig(device="cpu"), {"nope": 1})


@pytest.mark.parametrize("condition", ["text", "class"])
def test_text_noise_moves_the_flow_of_text_models_only(digits, condition):
    """Conditioning augmentation: with text_noise the flow of a text model reads a noisy condition, so its
    update differs from the same step without; a class model's one-hot condition is left alone."""
    images, onehot, labels = _batch(digits, 16)
    cond = torch.randn(16, 12) if condition == "text" else onehot
    after = []
    for noise in (0.0, 0.5):
        model = tiny(condition=condition, **({"text_dim": 12} if condition == "text" else {}))
        trainer = GLFTrainer(model, TrainConfig(device="cpu", progress_bar=False), {"text_noise": noise})
        trainer.train_step(images, cond, labels)
        after.append(torch.cat([p.detach().flatten() for p in model.flow.parameters()]))
    assert torch.equal(after[0], after[1]) == (condition == "class")
    with pytest.raises(ValueError, match="text_noise must be 0 or more"):
        GLFTrainer(tiny(), TrainConfig(device="cpu"), {"text_noise": -0.1})


def test_the_codes_class_head_learns_the_classes_and_only_text_models_have_it(digits):
    with pytest.raises(ValueError, match="aux_classes is for text models"):
        tiny(condition="class", aux_classes=10)
    with pytest.raises(ValueError, match="aux_classes must be 0 or more"):
        tiny(condition="text", text_dim=12, aux_classes=-1)
    model = tiny(condition="text", text_dim=12, aux_classes=10)
    trainer = GLFTrainer(model, TrainConfig(device="cpu", progress_bar=False))
    images, _, labels = _batch(digits)
    cond = torch.randn(len(labels), 12)
    losses = [trainer.train_step(images, cond, labels)["aux_cls"] for _ in range(15)]
    assert losses[-1] < losses[0]  # the head and the encoder under it learn the classes
    head = model.class_head
    assert head is not None and head.weight.grad is not None
    without = tiny(condition="text", text_dim=12)
    assert without.class_head is None and "aux_cls" not in GLFTrainer(
        without, TrainConfig(device="cpu", progress_bar=False)).train_step(images, cond, labels)


def test_a_conditioning_network_feeds_every_coupling_and_the_base():
    flow = LatentFlow(dim=6, blocks=2, hidden=16, cond_dim=10, conditional_base=True, cond_features=4).double()
    randomize(flow)
    assert all(layer.net[0].in_features == 3 + 4 for layer in flow.layers)  # half the code + the features
    z, cond = torch.randn(5, 6, dtype=torch.double), torch.randn(5, 10, dtype=torch.double)
    features = flow.condition_net(cond)
    # every public method reads the features, never the raw vector: the same as a flow fed the features
    plain = LatentFlow(dim=6, blocks=2, hidden=16, cond_dim=4, conditional_base=True).double()
    plain.layers.load_state_dict(flow.layers.state_dict())
    plain.base.load_state_dict(flow.base.state_dict())
    assert torch.allclose(flow.nll(z, cond), plain.nll(z, features))
    assert torch.allclose(flow(z, cond)[0], plain(z, features)[0])
    noise = torch.randn(5, 6, dtype=torch.double)
    codes = flow.sample(noise, cond)
    assert torch.allclose(codes, plain.sample(noise, features))
    assert torch.allclose(flow.standard_noise(codes, cond), noise, atol=1e-9)
    assert torch.allclose(flow.inverse(flow(z, cond)[0], cond), z, atol=1e-9)
    assert not torch.allclose(codes, flow.sample(noise, torch.randn(5, 10, dtype=torch.double)))
    with pytest.raises(ValueError, match="cond_features needs a condition"):
        LatentFlow(dim=6, blocks=1, hidden=8, cond_features=4)


def test_the_conditioning_network_learns_with_the_flow_and_is_saved(digits, tmp_path):
    with pytest.raises(ValueError, match="condition_features needs a class or text condition"):
        tiny(condition_features=8)
    with pytest.raises(ValueError, match="condition_features must be 0 or more"):
        tiny(condition="text", text_dim=12, condition_features=-1)
    model = tiny(condition="text", text_dim=12, condition_features=8)
    assert tiny(condition="text", text_dim=12).flow.condition_net is None  # off by default: old checkpoints load
    before = [p.detach().clone() for p in model.flow.condition_net.parameters()]
    trainer = GLFTrainer(model, TrainConfig(device="cpu", progress_bar=False))
    images, _, labels = _batch(digits, 16)
    for _ in range(3):  # the coupling nets' last layers start at zero: the condition net moves from step 2
        trainer.train_step(images, torch.randn(16, 12), labels)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.flow.condition_net.parameters()))
    save_checkpoint(model.eval(), tmp_path, dataset="digits-captions", class_names=[str(i) for i in range(10)])
    loaded, _ = load_checkpoint(tmp_path)
    assert loaded.config.condition_features == 8
    embedding = torch.randn(12)
    condition = Condition(kind="text", embedding=embedding)
    assert torch.equal(loaded.sample(3, condition, torch.Generator().manual_seed(1)),
                       model.sample(3, condition, torch.Generator().manual_seed(1)))
