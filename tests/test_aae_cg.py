"""The code-generator AAE follows the paper: sizes, what each phase updates, how conditions are wired."""

from __future__ import annotations

import json

import pytest
import torch

from generation.aae_cg import AAEConfig, CodeGeneratorAAE
from generation.base import Condition, ConditionError
from tests.conftest import build_tiny
from training.attributes import COLOR_NAMES
from training.captions import attribute_count, attribute_index
from training.data import CIFAR10_CLASSES, ImageData
from training.aae_cg import AAECodeGeneratorTrainer
from training.trainer import TrainConfig


@pytest.mark.parametrize("condition, noise, latent", [("class", 54, 64), ("cluster", 90, 8), ("text", 100, 64),
                                                      ("none", 64, 64)])
def test_paper_default_sizes(condition, noise, latent):
    config = AAEConfig(condition=condition)
    assert (config.noise_dim, config.latent_dim) == (noise, latent)
    assert AAEConfig(condition="cluster", image_shape=(3, 32, 32)).latent_dim == 64


def test_code_discriminator_gets_the_label_only_when_supervised():
    sup = build_tiny("aae-cg", condition="class", num_classes=10)
    unsup = build_tiny("aae-cg", condition="cluster", num_classes=10)
    assert sup.code_discriminator.net[0].in_features == 8 + 10
    assert unsup.code_discriminator.net[0].in_features == 8
    # Q predicts the label / cluster from an image in both settings
    assert sup.image_discriminator.q_head.out_features == 10
    assert unsup.image_discriminator.q_head.out_features == 10


def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_phases_update_the_parts_the_paper_says(digits_train):
    model = build_tiny("aae-cg", condition="class", num_classes=10)
    trainer = AAECodeGeneratorTrainer(model, TrainConfig(batch_size=16, device="cpu", progress_bar=False))
    images, labels, _ = digits_train.batch(torch.arange(16))
    cond = torch.nn.functional.one_hot(labels, 10).float()
    parts = {name: snapshot(getattr(model, name)) for name in
             ("encoder", "decoder", "code_generator", "image_discriminator", "code_discriminator")}
    model.train()
    losses = trainer.train_step(images, cond, labels)
    assert set(losses) == {"d_img", "g_adv", "info", "d_code", "rec_feat", "rec_pix", "e_adv"}
    for name, before in parts.items():  # every part trains in one iteration of Algorithm 1
        assert changed(before, getattr(model, name)), name


def test_prior_phase_alone_leaves_the_encoder_and_aae_phase_leaves_cg(digits_train):
    """Zeroing a phase's loss weights isolates which parameters the other phase moves."""
    model = build_tiny("aae-cg", condition="class", num_classes=10)
    hp = {"rec_feature_weight": 0.0, "rec_pixel_weight": 0.0, "code_adv_weight": 0.0}
    trainer = AAECodeGeneratorTrainer(model, TrainConfig(batch_size=16, device="cpu", progress_bar=False), hp)
    images, labels, _ = digits_train.batch(torch.arange(16))
    cond = torch.nn.functional.one_hot(labels, 10).float()
    encoder_before = snapshot(model.encoder)
    model.train()
    trainer.train_step(images, cond, labels)
    assert not changed(encoder_before, model.encoder)  # E is only trained in the AAE phase


def test_cluster_model_samples_a_random_cluster_for_an_unconditional_request():
    model = build_tiny("aae-cg", condition="cluster", num_classes=5).eval()
    images = model.sample(4, Condition("none"), torch.Generator().manual_seed(0))
    assert images.shape == (4, 1, 28, 28)
    with pytest.raises(ConditionError, match="out of range"):
        model.sample(1, Condition("cluster", index=5))


def test_class_model_refuses_other_kinds_of_request():
    model = build_tiny("aae-cg", condition="class", num_classes=3).eval()
    with pytest.raises(ConditionError, match="trained with condition 'class'"):
        model.sample(1, Condition("none"))
    with pytest.raises(ConditionError, match="out of range"):
        model.sample(1, Condition("class", index=3))


def test_text_model_uses_the_condition_in_the_image_discriminator():
    model = build_tiny("aae-cg", condition="text", text_dim=12)
    assert isinstance(model, CodeGeneratorAAE)
    assert model.image_discriminator.cond_dim == 12
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    a, _ = model.image_discriminator(x, torch.zeros(2, 12))
    b, _ = model.image_discriminator(x, torch.ones(2, 12))
    assert not torch.allclose(a, b)


def test_samples_differ_between_classes():
    model = build_tiny("aae-cg", condition="class", num_classes=3).eval()
    a = model.sample(2, Condition("class", index=0), torch.Generator().manual_seed(0))
    b = model.sample(2, Condition("class", index=1), torch.Generator().manual_seed(0))
    assert not torch.equal(a, b)


def test_text_model_aux_class_head_learns_the_labels_and_is_text_only(digits_train):
    """TAC-GAN: with aux_classes, D_I's class head is trained on the captioned images' labels (real and
    generated) and CG + G are pushed towards the caption's class; class models refuse the option."""
    model = build_tiny("aae-cg", condition="text", text_dim=12, aux_classes=10)
    assert model.image_discriminator.class_head.out_features == 10
    trainer = AAECodeGeneratorTrainer(model, TrainConfig(batch_size=16, device="cpu", progress_bar=False),
                                      {"text_noise": 0.3})
    images, labels, _ = digits_train.batch(torch.arange(16))
    cond = torch.randn(16, 12)
    head_before, cg_before = snapshot(model.image_discriminator.class_head), snapshot(model.code_generator)
    model.train()
    losses = trainer.train_step(images, cond, labels)
    assert "aux_cls" in losses and losses["aux_cls"] > 0
    assert changed(head_before, model.image_discriminator.class_head) and changed(cg_before, model.code_generator)
    unlabelled = digits_train.select(torch.arange(64))
    unlabelled.labels = torch.full((64,), -1)
    with pytest.raises(ValueError, match="aux_classes=10 needs a class label"):
        trainer.prepare(unlabelled)
    with pytest.raises(ValueError, match="aux_classes is for text models"):
        AAEConfig(condition="class", aux_classes=10)


def solid_colour_photos(colours: list[tuple[int, int, int]]) -> ImageData:
    """32x32 RGB images, each one flat colour, as a ``cifar10-captions`` split (class i % 10)."""
    pixels = torch.tensor(colours, dtype=torch.uint8)[:, :, None, None].expand(-1, 3, 32, 32).contiguous()
    return ImageData("cifar10-captions", pixels, torch.arange(len(colours)) % 10, list(CIFAR10_CLASSES))


RED, BLUE, YELLOW, WHITE = (220, 30, 30), (30, 60, 220), (230, 220, 40), (250, 250, 250)


def test_the_attribute_index_reads_each_image_as_its_captions_were_made():
    photos = solid_colour_photos([RED, BLUE, YELLOW, WHITE])
    index = attribute_index("cifar10-captions", photos.images, photos.labels, photos.class_names)
    assert [COLOR_NAMES[i] for i in index] == ["red", "blue", "yellow", "white"]
    assert attribute_count("cifar10-captions") == len(COLOR_NAMES)
    garments = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    garments[0, :, 4:24, 2:26] = 90  # dark and wide (aspect 1.2 > a T-shirt's 0.79)
    garments[1, :, 2:26, 10:18] = 230  # light and narrow
    labels = torch.zeros(2, dtype=torch.long)
    combined = attribute_index("fashion-mnist-captions", garments, labels, ["T-shirt/top"])
    assert combined.tolist() == [0 * 2 + 1, 1 * 2 + 0]  # tone x 2 + shape
    assert attribute_count("fashion-mnist-captions") == 4 and attribute_count("mnist") == 0


def test_the_attribute_head_learns_the_real_images_colour_and_pushes_the_generator_towards_it(monkeypatch):
    """aux_attributes: D_I's attribute head learns each real image's colour, and CG + G are pushed towards the
    colour of the image whose caption they were given. With D_I held still, other target colours for the same
    images and captions move CG otherwise: the targets reach the generator."""
    photos = solid_colour_photos([RED, BLUE] * 4)
    images, labels, _ = photos.batch(torch.arange(8))
    after = []
    for permuted in (False, True):
        model = build_tiny("aae-cg", condition="text", text_dim=12, image_shape=(3, 32, 32),
                           aux_attributes=len(COLOR_NAMES))
        trainer = AAECodeGeneratorTrainer(model, TrainConfig(batch_size=8, device="cpu", progress_bar=False), {})
        trainer.prepare(photos)
        model.train()
        head_before = snapshot(model.image_discriminator.attribute_head)
        trainer.train_step(images, torch.ones(8, 12), labels)
        assert changed(head_before, model.image_discriminator.attribute_head)
        trainer.optimizers["image_disc"].param_groups[0]["lr"] = 0.0  # D_I the same in both arms from here
        if permuted:
            targets = trainer._attribute_targets
            monkeypatch.setattr(trainer, "_attribute_targets", lambda x, y, read=targets: read(x, y).roll(1))
        losses = trainer.train_step(images, torch.ones(8, 12), labels)
        assert losses["aux_attr"] > 0
        after.append(snapshot(model.code_generator))
    assert any(not torch.allclose(a, b) for a, b in zip(*after))


def test_the_attribute_head_needs_attributes_it_can_read(digits_train):
    model = build_tiny("aae-cg", condition="text", text_dim=12, aux_attributes=11)
    trainer = AAECodeGeneratorTrainer(model, TrainConfig(batch_size=8, device="cpu", progress_bar=False), {})
    with pytest.raises(ValueError, match="aux_attributes needs a data set whose caption attributes"):
        trainer.prepare(digits_train)
    wrong = build_tiny("aae-cg", condition="text", text_dim=12, image_shape=(3, 32, 32), aux_attributes=4)
    with pytest.raises(ValueError, match=r"'cifar10-captions' has 11 attribute values \(set aux_attributes=11\)"):
        AAECodeGeneratorTrainer(wrong, TrainConfig(batch_size=8, device="cpu", progress_bar=False),
                                {}).prepare(solid_colour_photos([RED] * 8))
    with pytest.raises(ValueError, match="aux_attributes is for text models"):
        AAEConfig(condition="class", aux_attributes=11)


def test_text_noise_changes_only_what_the_code_generator_sees(digits_train):
    """Conditioning augmentation: the same step with text_noise > 0 moves CG differently from text_noise 0."""
    images, labels, _ = digits_train.batch(torch.arange(16))
    cond = torch.randn(16, 12)
    after = []
    for noise in (0.0, 0.5):
        model = build_tiny("aae-cg", condition="text", text_dim=12)
        trainer = AAECodeGeneratorTrainer(model, TrainConfig(batch_size=16, device="cpu", progress_bar=False),
                                          {"text_noise": noise})
        model.train()
        trainer.train_step(images, cond, labels)
        after.append(snapshot(model.code_generator))
    assert any(not torch.equal(a, b) for a, b in zip(*after))


def test_nearest_upsampling_decoder_has_no_transposed_convolutions():
    model = build_tiny("aae-cg", condition="class", num_classes=3, image_shape=(3, 32, 32), upsample="nearest")
    kinds = {type(m).__name__ for m in model.decoder.modules()}
    assert "ConvTranspose2d" not in kinds and {"Upsample", "Conv2d"} <= kinds
    assert model.sample(2, Condition("class", index=1)).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="upsample must be one of transpose, nearest"):
        build_tiny("aae-cg", condition="class", upsample="bicubic")


def test_layer_norm_code_generator_codes_each_sample_on_its_own_in_training_as_served():
    model = build_tiny("aae-cg", condition="text", text_dim=8, code_norm="layer")
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in model.code_generator.modules())
    noise, cond = torch.randn(6, model.config.noise_dim), torch.randn(6, 8)
    model.code_generator.train()
    alone = model.code_generator(noise[:1], cond[:1])  # a batch of one: BatchNorm could not even run it
    in_batch = model.code_generator(noise, cond)[:1]
    model.code_generator.eval()
    served = model.code_generator(noise[:1], cond[:1])
    assert torch.allclose(alone, in_batch, atol=1e-6) and torch.allclose(alone, served, atol=1e-6)
    batch_norm = build_tiny("aae-cg", condition="text", text_dim=8)
    batch_norm.code_generator.train()
    assert not torch.allclose(batch_norm.code_generator(noise, cond)[:1],
                              batch_norm.code_generator(noise[:3], cond[:3])[:1], atol=1e-4)
    with pytest.raises(ValueError, match="code_norm must be one of batch, layer"):
        build_tiny("aae-cg", condition="text", text_dim=8, code_norm="group")


def test_text_models_q_and_class_head_read_the_image_alone():
    """A head that saw the caption could read its answer off the caption, and G would learn nothing from it."""
    model = build_tiny("aae-cg", condition="text", text_dim=12, aux_classes=10).eval()
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    logit_a, q_a, aux_a, _ = model.image_discriminator.judge(x, torch.zeros(3, 12))
    logit_b, q_b, aux_b, _ = model.image_discriminator.judge(x, torch.randn(3, 12))
    assert torch.equal(q_a, q_b) and torch.equal(aux_a, aux_b)
    assert not torch.allclose(logit_a, logit_b)  # the real/fake decision is matching-aware


def test_the_class_head_learns_from_real_images_only(digits_train):
    """D_I's class head is updated from real images alone: the same step with other generated images (another
    noise seed) leaves it with the same weights (no collusion with G on a private code for the class)."""
    images, labels, _ = digits_train.batch(torch.arange(16))
    cond = torch.randn(16, 12)
    heads = []
    for seed in (0, 1):
        model = build_tiny("aae-cg", condition="text", text_dim=12, aux_classes=10)
        trainer = AAECodeGeneratorTrainer(model, TrainConfig(batch_size=16, device="cpu", progress_bar=False,
                                                             seed=seed), {"info_weight": 0.0})
        model.train()
        trainer.train_step(images, cond, labels)
        heads.append(snapshot(model.image_discriminator.class_head))
        if seed:
            assert changed(heads[0], model.image_discriminator.class_head) is False
    assert all(torch.equal(a, b) for a, b in zip(*heads))


def noise_share_of_codes(model, cond: torch.Tensor, draws: int = 32) -> float:
    """Share of the code variance that the noise explains, for one condition vector."""
    model.eval()
    with torch.no_grad():
        codes = model.code_generator(torch.randn(draws, model.config.noise_dim), cond.expand(draws, -1))
    model.train()
    return float(codes.var(0).sum())


def test_diversity_term_makes_a_noise_blind_code_generator_use_its_noise(digits_train):
    """The diversity-sensitive term: a CG that ignores its noise (its noise weights zeroed) learns to use it
    when the term is on, and not (or far less) in the same steps without it."""
    images, labels, _ = digits_train.batch(torch.arange(16))
    cond = torch.randn(16, 12)
    spread = {}
    for weight in (0.0, 4.0):
        torch.manual_seed(0)
        model = build_tiny("aae-cg", condition="text", text_dim=12)
        first = model.code_generator.net[0]
        with torch.no_grad():
            first.weight[:, :model.config.noise_dim] = 0  # noise-blind
        trainer = AAECodeGeneratorTrainer(model, TrainConfig(batch_size=16, device="cpu", progress_bar=False),
                                          {"diversity_weight": weight})
        model.train()
        for _ in range(15):
            out = trainer.train_step(images, cond, labels)
        assert ("diversity" in out) == (weight > 0)
        spread[weight] = noise_share_of_codes(model, cond[:1])
    assert spread[4.0] > 3 * spread[0.0]


def test_diversity_ratio_is_zero_for_copies_and_capped_in_the_loss():
    fake = torch.zeros(6, 1, 2, 2)
    noise = torch.randn(6, 5)
    assert AAECodeGeneratorTrainer._diversity(fake, noise, n=4, pairs=2).item() == 0.0
    fake[4:] = 1.0  # the second draws differ by 1 per pixel from the first
    ratio = AAECodeGeneratorTrainer._diversity(fake, noise, n=4, pairs=2)
    expected = (1.0 / (noise[:2] - noise[4:]).abs().mean(1)).mean()
    assert ratio.item() == pytest.approx(expected.item())


def ema_trainer(steps: int, decay: float = 0.9) -> AAECodeGeneratorTrainer:
    torch.manual_seed(0)
    model = build_tiny("aae-cg", condition="class", num_classes=10)
    return AAECodeGeneratorTrainer(model, TrainConfig(max_steps=steps, batch_size=16, device="cpu", evaluate=False,
                                                      progress_bar=False), {"ema_decay": decay})


def test_the_weight_average_is_what_ships_with_its_own_batchnorm_statistics(tmp_path, digits_train):
    trainer = ema_trainer(5)
    trainer.fit(digits_train, tmp_path / "run")
    model, average = trainer.model, trainer._average
    assert average is not None and int(average.n_averaged) == 5
    shipped = {**{f"code_generator.{k}": v for k, v in model.code_generator.state_dict().items()},
               **{f"decoder.{k}": v for k, v in model.decoder.state_dict().items()}}
    raw = trainer._raw_generator
    assert raw is not None
    averaged = dict(average.module.named_parameters())
    for name, value in averaged.items():  # the average, not the last step's weights
        assert torch.equal(shipped[name], value.detach()), name
    assert any(not torch.equal(raw[name], value.detach()) for name, value in averaged.items())
    means = [k for k in shipped if k.endswith("running_mean")]
    assert means and any(not torch.equal(shipped[k], raw[k]) for k in means)  # measured again, not the raw ones
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    batches = min(100, len(digits_train) // 16)  # one pass at most
    assert metrics["ema"] == {"decay": 0.9, "averaged_steps": 5, "batchnorm_batches": batches}


def test_a_resumed_run_with_a_weight_average_matches_an_uninterrupted_one(tmp_path, digits_train):
    from generation.checkpoint import load_checkpoint

    ema_trainer(6).fit(digits_train, tmp_path / "straight")
    ema_trainer(3).fit(digits_train, tmp_path / "split")  # finished: its model holds the average
    ema_trainer(6).fit(digits_train, tmp_path / "split", resume=True)  # carries on from the raw weights
    a, _ = load_checkpoint(tmp_path / "straight")
    b, _ = load_checkpoint(tmp_path / "split")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.allclose(pa.float(), pb.float(), atol=1e-5), name


def test_codes_per_seed_draw_what_a_lone_draw_draws_random_clusters_included():
    """``sample_latents_per_seed`` draws each seed's cluster and noise as ``sample_latents(1)`` does (a cluster
    model asked for no cluster picks one per seed), and batches only the code generator."""
    model = build_tiny("aae-cg", condition="cluster", num_classes=6).eval()
    seeds = [3, 11, 12, 40, 41, 42, 43, 44, 45, 99]
    with torch.no_grad():
        batched = model.sample_latents_per_seed(seeds, Condition(), pass_size=4)
        alone = torch.cat([model.sample_latents(1, Condition(), torch.Generator().manual_seed(s))
                           for s in seeds])
    assert batched.shape == alone.shape and torch.allclose(batched, alone, atol=1e-5)
    with pytest.raises(ValueError, match="pass_size must be at least 1"):
        model.sample_latents_per_seed(seeds, Condition(), pass_size=0)
