"""Training of the code-generator AAE: the prior-improvement phase and the AAE phase, alternated every step
(paper Section III.A, Algorithm 1, Fig. 3).

Prior-improvement phase: D_I learns real vs G(CG(z, s)); CG and G learn to fool D_I (Eq. 4) while Q
recovers s from G(CG(z, s)) (mutual-information term, Eq. 7). AAE phase: E and G minimise the reconstruction
error in D_I's feature space (Eq. 6) and E learns to fool D_C, which tells CG's codes from E's (Eq. 5 / 8).
The decoder is updated in both phases (the paper's footnote 2).

Choices the paper leaves open, made here: Adam(beta1=0.5) instead of the reproduction's RMSprop (more
stable at the small batch counts a CPU affords); non-saturating GAN losses; for class models Q is also
trained on real labelled images (as in AC-GAN), which the supervised setting permits and which makes the
label signal reach G much sooner; an optional pixel term next to the feature-space reconstruction.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from generation.aae_cg import CodeGeneratorAAE
from generation.sampling import to_uint8
from training.captions import PHRASINGS, attribute_count, attribute_index
from training.trainer import Trainer


EMA_BATCHNORM_BATCHES = 100  # batches of samples that measure the averaged generator's BatchNorm statistics


def _bce(logits: Tensor, target: float) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


class AAECodeGeneratorTrainer(Trainer):
    """Alternates the two phases on every batch.

    Hyper-parameters:
        rec_feature_weight: weight of the D_I-feature reconstruction (Eq. 6).
        rec_pixel_weight: weight of an extra pixel MSE (0 = the paper's loss only).
        code_adv_weight: weight of the encoder's adversarial loss against D_C (Eq. 5/8).
        info_weight: weight of the mutual-information term (Eq. 7).
        real_q_weight: weight of Q's loss on real labelled images (class models only).
        aux_class_weight: text models with ``aux_classes``: weight of the auxiliary class head's cross-entropy
            (D_I learns it on real images, CG + G on generated ones; TAC-GAN).
        aux_attribute_weight: text models with ``aux_attributes``: weight of the auxiliary attribute head's
            cross-entropy, trained like the class head; the target is the attribute read off the real image
            whose caption conditions the step (CIFAR-10: its dominant colour). Without it the colour word is only
            one of the condition's many directions, and a generator that gets the object right is rarely pushed
            on the colour. About one caption in ten names no colour; for those the image's colour is still the
            target, a small pull towards the class's usual colours.
        diversity_weight: weight of the diversity-sensitive term on CG + G (Yang et al., "Diversity-sensitive
            conditional GANs", 2019): for half the batch a second noise draw with the same condition is
            decoded, and CG + G maximise ``min(mean|G(CG(z1,s)) - G(CG(z2,s))| / mean|z1 - z2|, diversity_cap)``.
            Without it a conditional generator learns to ignore its noise (one image per prompt). 0 = off
            (the paper's objective exactly, and no extra samples).
        diversity_cap: the ratio above which the diversity term stops pushing (its tau): real images of one
            class differ by about 0.3-0.5 per pixel in [-1, 1], noise draws by 1.13, so 0.4 asks for real
            variety and no more.
        text_noise: text models: standard deviation of Gaussian noise added to the condition vector fed to CG
            (StackGAN's conditioning augmentation): nearby sentences map to the same images, so wording never
            seen in training still lands on what it means. 0 = off.
        ema_decay: keep an exponential moving average of CG's and G's weights with this decay (0 = off; 0.999
            averages over about the last thousand steps) and ship the average: a GAN generator's weights jitter
            from step to step with the discriminator, and their average gives steadier, sharper samples
            (Yazici et al., "The unusual effectiveness of averaging in GAN training", ICLR 2019). The average's
            BatchNorm statistics are measured again at the end on its own samples
            (:data:`EMA_BATCHNORM_BATCHES` batches), as the running ones belong to the raw weights.
        beta1: Adam beta1.
    """

    backend = "aae-cg"
    default_lr = 2e-4
    hparam_defaults: ClassVar[dict[str, Any]] = {
        "rec_feature_weight": 1.0,
        "rec_pixel_weight": 1.0,
        "code_adv_weight": 1.0,
        "info_weight": 1.0,
        "real_q_weight": 1.0,
        "aux_class_weight": 1.0,
        "aux_attribute_weight": 1.0,
        "text_noise": 0.0,
        "diversity_weight": 0.0,
        "diversity_cap": 0.4,
        "ema_decay": 0.0,
        "beta1": 0.5,
    }
    model: CodeGeneratorAAE
    _average: AveragedModel | None = None
    _raw_generator: dict[str, Tensor] | None = None  # CG's and G's own weights once the average replaced them
    _attribute_source: tuple[str, list[str]] | None = None  # (data set, class names) the attributes are read for

    # -- the generator's weight average (ema_decay) ---------------------------------------------------
    def _generator(self) -> nn.ModuleDict:
        """CG and G as one module (the model's own, not copies): what the average follows."""
        return nn.ModuleDict({"code_generator": self.model.code_generator, "decoder": self.model.decoder})

    def _new_average(self) -> AveragedModel | None:
        decay = float(self.hparams["ema_decay"])
        if not decay:
            return None
        return AveragedModel(self._generator(), multi_avg_fn=get_ema_multi_avg_fn(decay))

    def extra_state_tensors(self) -> dict[str, Tensor]:
        if self._average is None:
            return {}
        tensors = {f"ema/{k}": v for k, v in self._average.state_dict().items()}
        # a finished run's model holds the average; its raw weights go with the state, so a resumed run
        # carries on from them as if never stopped
        return tensors | {f"raw/{k}": v for k, v in (self._raw_generator or {}).items()}

    def restore_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        def part(prefix: str) -> dict[str, Tensor]:
            return {k[len(prefix):]: v.to(self.device) for k, v in tensors.items() if k.startswith(prefix)}

        if raw := part("raw/"):
            self._generator().load_state_dict(raw)
        self._average = self._new_average()
        if self._average is not None and (saved := part("ema/")):  # else no average saved: it starts now
            self._average.load_state_dict(saved)

    def finish(self, train_data, callback) -> dict[str, Any]:
        """With ``ema_decay``: CG and G take the averaged weights, and their BatchNorms measure the average's
        own statistics on samples of the training conditions."""
        if self._average is None:
            return {}
        self._raw_generator = {k: v.detach().clone() for k, v in self._generator().state_dict().items()}
        self._generator().load_state_dict(self._average.module.state_dict())
        batches = self._recalibrate_batchnorm(train_data)
        return {"ema": {"decay": self.hparams["ema_decay"], "averaged_steps": int(self._average.n_averaged),
                        "batchnorm_batches": batches}}

    @torch.no_grad()
    def _recalibrate_batchnorm(self, train_data) -> int:
        norms = [m for m in self._generator().modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return 0
        momenta = [norm.momentum for norm in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a plain mean over the batches below
        was_training = self.model.training
        self.model.train()
        order = torch.Generator().manual_seed(self.config.seed * 1000 + 999_999)
        count = 0
        for count, batch in enumerate(train_data.batches(self.config.batch_size, order), start=1):
            s, _ = self._draw_conditions(self._conditions(train_data, batch), len(batch.labels))
            noise = self.randn(len(batch.labels), self.model.config.noise_dim or 0)
            self.model.decoder(self.model.code_generator(noise, s))
            if count >= EMA_BATCHNORM_BATCHES:
                break
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        self.model.train(was_training)
        return count

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        m, betas = self.model, (self.hparams["beta1"], 0.999)
        adam = lambda params: torch.optim.Adam(params, lr=self.lr, betas=betas)  # noqa: E731
        return {
            "image_disc": adam(m.image_discriminator.parameters()),
            "code_disc": adam(m.code_discriminator.parameters()),
            "prior": adam([*m.code_generator.parameters(), *m.decoder.parameters()]),
            "autoencoder": adam([*m.encoder.parameters(), *m.decoder.parameters()]),
        }

    def prepare(self, train_data) -> None:
        if self._average is None:  # not restored by a resume
            self._average = self._new_average()
        k = self.model.config.aux_classes
        if k and not bool(((train_data.labels >= 0) & (train_data.labels < k)).all()):
            raise ValueError(f"aux_classes={k} needs a class label in 0..{k - 1} on every training image; "
                             f"data set {train_data.name!r} has other labels (set aux_classes=0)")
        if values := self.model.config.aux_attributes:
            readable = attribute_count(train_data.name)
            if not readable:
                raise ValueError(f"aux_attributes needs a data set whose caption attributes can be read off its "
                                 f"images ({', '.join(PHRASINGS)}); {train_data.name!r} has none "
                                 f"(set aux_attributes=0)")
            if readable != values:
                raise ValueError(f"aux_attributes={values}, but {train_data.name!r} has {readable} attribute "
                                 f"values (set aux_attributes={readable})")
            self._attribute_source = (train_data.name, list(train_data.class_names))

    def _draw_conditions(self, cond: Tensor | None, n: int) -> tuple[Tensor, Tensor | None]:
        """The condition vectors s fed to CG and the class targets for Q (None for text/none)."""
        kind, k = self.model.config.condition, self.model.config.num_classes
        if kind == "class":
            assert cond is not None
            return cond, cond.argmax(1)  # the batch's own label distribution
        if kind == "cluster":
            idx = self.randint(k, n)
            return F.one_hot(idx, k).float(), idx
        if kind == "text":
            assert cond is not None
            return cond, None
        return torch.zeros(n, 0, device=self.device), None

    def _q_loss(self, q: Tensor | None, s: Tensor, targets: Tensor | None) -> Tensor:
        if q is None:
            return torch.zeros((), device=self.device)
        if targets is not None:
            return F.cross_entropy(q, targets)
        return F.mse_loss(q, s)  # text: Gaussian Q with fixed variance (InfoGAN's continuous codes)

    def _attribute_targets(self, images: Tensor, labels: Tensor) -> Tensor | None:
        """The attribute index of each real image (``aux_attributes``), read as its captions were made."""
        if self._attribute_source is None:
            return None
        dataset, class_names = self._attribute_source
        return attribute_index(dataset, to_uint8(images.detach().cpu()), labels.cpu(), class_names).to(self.device)

    def train_step(self, images: Tensor, cond: Tensor | None, labels: Tensor) -> dict[str, float]:
        m, h = self.model, self.hparams
        n = images.shape[0]
        s, q_targets = self._draw_conditions(cond, n)
        text = m.config.condition == "text"
        di_cond = s if text else None
        aux = labels if m.config.aux_classes else None  # TAC-GAN: the caption's image's class
        attribute = self._attribute_targets(images, labels)  # and its attribute (CIFAR-10: colour)
        # conditioning augmentation (text): CG gets a noisy s; D_I, D_C and Q keep the clean one
        s_gen = s + h["text_noise"] * self.randn(*s.shape) if text and h["text_noise"] else s

        # forward passes under self.autocast() (mixed precision when TrainConfig.amp is on; the BCE, CE and MSE
        # losses are computed in fp32 by autocast itself)
        # --- prior-improvement phase: D_I, then CG + G (Eq. 4, Eq. 7) ---
        pairs = n // 2 if h["diversity_weight"] else 0  # rows drawn a second time for the diversity term
        noise_dim = m.config.noise_dim
        assert noise_dim is not None  # AAEConfig.__post_init__ sets it
        with self.autocast():
            noise = self.randn(n + pairs, noise_dim)
            # one CG pass over both draws: the BatchNorm statistics see them together
            z_all = m.code_generator(noise, torch.cat([s_gen, s_gen[:pairs]]))  # (B + pairs, latent_dim)
            fake_all = m.decoder(z_all)  # (B + pairs, C, H, W)
            z_c, fake = z_all[:n], fake_all[:n]
            real_logit, real_q, real_aux, real_attribute = m.image_discriminator.judge(images, di_cond)
            fake_logit, fake_q, _, _ = m.image_discriminator.judge(fake.detach(), di_cond)
            # Q learns to recover s from generated images together with D_I (shared trunk, InfoGAN)
            d_loss = _bce(real_logit, 1.0) + _bce(fake_logit, 0.0) + \
                h["info_weight"] * self._q_loss(fake_q, s, q_targets)
            if m.config.condition == "class":
                d_loss = d_loss + h["real_q_weight"] * self._q_loss(real_q, s, q_targets)
            if text:  # matching-aware: a real image with a mismatched caption counts as fake
                wrong_logit, _ = m.image_discriminator(images, s.roll(1, dims=0))
                d_loss = d_loss + _bce(wrong_logit, 0.0)
            if aux is not None:  # the class head learns from real images only: G cannot agree with it on a
                # private code for the class (AC-GAN's failure mode); its images must look like the class
                assert real_aux is not None  # aux_classes > 0: D_I has a class head
                d_loss = d_loss + h["aux_class_weight"] * F.cross_entropy(real_aux, aux)
            if attribute is not None:  # the same for the attribute head
                assert real_attribute is not None  # aux_attributes > 0: D_I has an attribute head
                d_loss = d_loss + h["aux_attribute_weight"] * F.cross_entropy(real_attribute, attribute)
        self.backward_step(d_loss, "image_disc")

        with self.autocast():
            gen_logit, gen_q, gen_aux, gen_attribute = m.image_discriminator.judge(fake, di_cond)
            info_loss = self._q_loss(gen_q, s, q_targets)
            gen_adv = _bce(gen_logit, 1.0)
            if aux is not None:
                assert gen_aux is not None  # aux_classes > 0: D_I has a class head
                aux_loss = F.cross_entropy(gen_aux, aux)
            else:
                aux_loss = torch.zeros((), device=self.device)
            if attribute is not None:
                assert gen_attribute is not None  # aux_attributes > 0: D_I has an attribute head
                attribute_loss = F.cross_entropy(gen_attribute, attribute)
            else:
                attribute_loss = torch.zeros((), device=self.device)
            diversity = self._diversity(fake_all, noise, n, pairs)
        prior_loss = gen_adv + h["info_weight"] * info_loss + h["aux_class_weight"] * aux_loss + \
            h["aux_attribute_weight"] * attribute_loss
        if pairs:
            prior_loss = prior_loss - h["diversity_weight"] * diversity.clamp(max=h["diversity_cap"])
        self.backward_step(prior_loss, "prior")

        # --- AAE phase: D_C, then E + G (Eq. 5/8, Eq. 6) ---
        dc_cond = s if m.config.condition in ("class", "text") else None
        with self.autocast():
            z_e = m.encoder(images)  # (B, latent_dim)
            codes_real = z_c.detach()
            dc_loss = _bce(m.code_discriminator(codes_real, dc_cond), 1.0) + \
                _bce(m.code_discriminator(z_e.detach(), dc_cond), 0.0)
        self.backward_step(dc_loss, "code_disc")

        with self.autocast():
            recon = m.decoder(z_e)
            target_features = m.image_discriminator.features(images).detach()
            feature_loss = F.mse_loss(m.image_discriminator.features(recon), target_features)
            pixel_loss = F.mse_loss(recon, images)
            enc_adv = _bce(m.code_discriminator(z_e, dc_cond), 1.0)
            ae_loss = h["rec_feature_weight"] * feature_loss + h["rec_pixel_weight"] * pixel_loss + \
                h["code_adv_weight"] * enc_adv
        self.backward_step(ae_loss, "autoencoder")
        m.image_discriminator.zero_grad(set_to_none=True)  # D_I only judges; drop the grads it received

        out = {"d_img": d_loss.item(), "g_adv": gen_adv.item(),
                "info": info_loss.item(), "d_code": dc_loss.item(), "rec_feat": feature_loss.item(),
                "rec_pix": pixel_loss.item(), "e_adv": enc_adv.item()}
        if aux is not None:
            out["aux_cls"] = aux_loss.item()
        if attribute is not None:
            out["aux_attr"] = attribute_loss.item()
        if pairs:
            out["diversity"] = diversity.item()
        if self._average is not None:
            self._average.update_parameters(self._generator())
        return out

    @staticmethod
    def _diversity(fake_all: Tensor, noise: Tensor, n: int, pairs: int) -> Tensor:
        """Mean per-pixel distance of the paired samples over the mean distance of their noise draws (DSGAN's
        ratio; 0 when the generator ignores its noise)."""
        if not pairs:
            return torch.zeros((), device=noise.device)
        image_gap = (fake_all[:pairs].float() - fake_all[n:].float()).abs().flatten(1).mean(1)  # (pairs,)
        noise_gap = (noise[:pairs] - noise[n:]).abs().mean(1)  # (pairs,)
        return (image_gap / noise_gap).mean()
