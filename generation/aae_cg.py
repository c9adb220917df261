"""Code-generator adversarial autoencoder (Wang, Peng, Ko, "Learning priors for adversarial autoencoders").

Parts: encoder E, decoder G, code generator CG (noise [+ condition s] -> code z_c), image discriminator D_I
with an auxiliary head Q (predicts s from an image), code discriminator D_C (optionally given s).
Generation is G(CG(z, s)). Training lives in ``training/aae_cg.py``.

Encoder/decoder follow the DCGAN pattern of ``generation/layers.py`` (methods.md "Common ground") rather
than the appendix's residual stacks: same role, far cheaper on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn

from generation.base import Condition, EncoderOutput, GenerativeModel, ModelConfig
from generation.layers import ConvDecoder, ConvEncoder, downsampling_stages, mlp, stage_channels
from generation.precision import to_device

# paper defaults: supervised 10 + 54 -> 64, unsupervised 10 + 90, text 200 + 100
DEFAULT_NOISE_DIM = {"class": 54, "cluster": 90, "text": 100, "none": 64}
CODE_NORMS = ("batch", "layer")


@dataclass
class AAEConfig(ModelConfig):
    """Config of the code-generator AAE.

    Args:
        latent_dim: size of the code z_c (paper: 64 supervised; 8 for unsupervised MNIST). None: 64, or 8
            for a ``cluster`` model on 1-channel images.
        noise_dim: Gaussian noise fed to CG (None: the paper's 54 class / 90 cluster / 100 text / 64 none).
        base_channels: channels of the first conv stage of E, G and D_I (doubling per stage).
        hidden_dim: width of the fully connected layers of E and G.
        disc_hidden: width of D_I's fully connected layer (paper: 1000).
        code_disc_hidden: widths of D_C's hidden layers (paper: 1000, 500, 200).
        aux_classes: text models only: an auxiliary class head on D_I with this many classes, trained on the
            labels that the captioned images carry (TAC-GAN, Dash et al. 2017); 0 = none. It is a training aid:
            sampling never reads it, and an exported model drops it with the discriminators.
        aux_attributes: text models only: an auxiliary attribute head on D_I with this many values (the caption's
            attribute read off the image, e.g. CIFAR-10's 11 colours; the trainer reads it off each real image
            as the captions were made), trained like ``aux_classes``; 0 = none.
        upsample: how the decoder doubles its feature maps: ``transpose`` (DCGAN) or ``nearest`` (up-sampling +
            3x3 convolution; no checkerboard pattern, about twice the decoder's compute).
        code_norm: normalisation in CG: ``batch`` (the paper's BatchNorm) or ``layer`` (LayerNorm on the hidden
            layers, a plain linear output). BatchNorm trains on a batch's statistics and serves on running ones,
            so the diversity term, computed in training mode, overstates what a served model varies; LayerNorm
            behaves the same in both modes.
    """

    latent_dim: int | None = None
    noise_dim: int | None = None
    base_channels: int = 64
    hidden_dim: int = 1024
    disc_hidden: int = 1000
    code_disc_hidden: tuple[int, ...] = (1000, 500, 200)
    aux_classes: int = 0
    aux_attributes: int = 0
    upsample: str = "transpose"
    code_norm: str = "batch"

    def __post_init__(self) -> None:
        if self.aux_classes and self.condition != "text":
            raise ValueError(f"aux_classes is for text models (a class-conditional model's Q already predicts "
                             f"the label); got condition {self.condition!r}")
        if self.code_norm not in CODE_NORMS:
            raise ValueError(f"code_norm must be one of {', '.join(CODE_NORMS)}, got {self.code_norm!r}")
        if self.aux_classes < 0:
            raise ValueError(f"aux_classes must be 0 or more, got {self.aux_classes}")
        if self.aux_attributes and self.condition != "text":
            raise ValueError(f"aux_attributes is for text models (only a caption names attributes); got "
                             f"condition {self.condition!r}")
        if self.aux_attributes < 0:
            raise ValueError(f"aux_attributes must be 0 or more, got {self.aux_attributes}")
        if self.latent_dim is None:
            self.latent_dim = 8 if self.condition == "cluster" and self.image_shape[0] == 1 else 64
        if self.noise_dim is None:
            self.noise_dim = DEFAULT_NOISE_DIM[self.condition]
        self.code_disc_hidden = tuple(self.code_disc_hidden)
        self.image_shape = tuple(self.image_shape)  # type: ignore[assignment]


class CodeGenerator(nn.Module):
    """CG: ``(noise, s)`` -> code; FC 2*noise (BN, ReLU), FC code (BN) as in the paper's appendix.

    ``norm="layer"`` swaps the hidden BatchNorms for LayerNorms and drops the output one: a sample's code then
    depends on its own noise and condition alone, in training as when served.
    """

    def __init__(self, noise_dim: int, condition_dim: int, latent_dim: int, norm: str = "batch"):
        super().__init__()
        hidden = 2 * noise_dim
        if norm == "batch":
            self.net = nn.Sequential(
                nn.Linear(noise_dim + condition_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                nn.Linear(hidden, latent_dim), nn.BatchNorm1d(latent_dim),
            )
        elif norm == "layer":
            self.net = nn.Sequential(
                nn.Linear(noise_dim + condition_dim, hidden), nn.LayerNorm(hidden), nn.ReLU(),
                nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.ReLU(),
                nn.Linear(hidden, latent_dim),
            )
        else:
            raise ValueError(f"norm must be one of {', '.join(CODE_NORMS)}, got {norm!r}")

    def forward(self, noise: Tensor, cond: Tensor) -> Tensor:
        return self.net(torch.cat([noise, cond], dim=1))  # (B, latent_dim)


class Judgement(NamedTuple):
    """What D_I says of a batch of images."""

    logit: Tensor  # (B,) real/fake
    q: Tensor | None  # (B, q_dim) Q's estimate of the condition
    class_logits: Tensor | None  # (B, aux_classes)
    attribute_logits: Tensor | None  # (B, aux_attributes)


class ImageDiscriminator(nn.Module):
    """D_I: conv 4x4/s2 stages with LeakyReLU, FC ``disc_hidden``, FC 1; Q: FC ``q_dim``.

    ``features`` (the last conv layer) is the learned similarity metric used for reconstruction. For text
    models the condition vector is concatenated to the flattened features for the real/fake decision (a
    conditional, matching-aware D_I); Q and the optional auxiliary class and attribute heads (``aux_classes``,
    ``aux_attributes``, TAC-GAN) then read the image alone, through a trunk of their own: a head that saw the caption could read the answer off
    it, and the generator would learn nothing from it. Class and cluster models have no condition input, so
    Q shares the one trunk (the paper's layout).
    """

    def __init__(self, image_shape: tuple[int, int, int], base_channels: int, hidden: int, cond_dim: int,
                 q_dim: int, aux_classes: int = 0, aux_attributes: int = 0):
        super().__init__()
        num_stages, final_size = downsampling_stages(image_shape)
        layers: list[nn.Module] = []
        in_ch = image_shape[0]
        for ch in stage_channels(num_stages, base_channels):
            layers += [nn.Conv2d(in_ch, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
            in_ch = ch
        self.conv = nn.Sequential(*layers)
        self.cond_dim = cond_dim
        feature_dim = in_ch * final_size**2
        self.trunk = nn.Sequential(nn.Linear(feature_dim + cond_dim, hidden), nn.LeakyReLU(0.2))
        self.real_fake = nn.Linear(hidden, 1)
        # conditional D_I: the heads that predict the condition get an image-only trunk
        self.image_trunk = (nn.Sequential(nn.Linear(feature_dim, hidden), nn.LeakyReLU(0.2))
                            if cond_dim and (q_dim or aux_classes or aux_attributes) else None)
        self.q_head = nn.Linear(hidden, q_dim) if q_dim else None
        self.class_head = nn.Linear(hidden, aux_classes) if aux_classes else None
        self.attribute_head = nn.Linear(hidden, aux_attributes) if aux_attributes else None

    def features(self, images: Tensor) -> Tensor:
        return self.conv(images).flatten(1)  # (B, C_last * s * s)

    def forward(self, images: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """-> (real/fake logit ``(B,)``, Q output ``(B, q_dim)`` or None)."""
        judgement = self.judge(images, cond)
        return judgement.logit, judgement.q

    def judge(self, images: Tensor, cond: Tensor | None = None) -> Judgement:
        """The real/fake logit and every head's output (None for a head the model does not have)."""
        features = self.features(images)  # (B, feature_dim)
        if self.cond_dim:
            assert cond is not None
            h = self.trunk(torch.cat([features, cond], dim=1))
        else:
            h = self.trunk(features)
        heads = self.image_trunk(features) if self.image_trunk is not None else h  # image only
        q = self.q_head(heads) if self.q_head is not None else None
        aux = self.class_head(heads) if self.class_head is not None else None
        attribute = self.attribute_head(heads) if self.attribute_head is not None else None
        return Judgement(self.real_fake(h).squeeze(1), q, aux, attribute)


class CodeDiscriminator(nn.Module):
    """D_C: FC 1000/500/200 LeakyReLU, FC 1; gets the condition too for class/text models (Eq. 8)."""

    def __init__(self, latent_dim: int, cond_dim: int, hidden: tuple[int, ...]):
        super().__init__()
        self.net = mlp(latent_dim + cond_dim, list(hidden), 1)

    def forward(self, codes: Tensor, cond: Tensor | None = None) -> Tensor:
        x = codes if cond is None else torch.cat([codes, cond], dim=1)
        return self.net(x).squeeze(1)  # (B,)


class CodeGeneratorAAE(GenerativeModel):
    """The code-generator AAE; conditions ``none``, ``class`` (supervised), ``cluster`` (unsupervised) and
    ``text`` (sentence-embedding condition).

    Args:
        config: an :class:`AAEConfig`.
    """

    backend = "aae-cg"
    config_class = AAEConfig
    supported_conditions = ("none", "class", "cluster", "text")
    training_only_modules = ("encoder", "image_discriminator", "code_discriminator")
    config: AAEConfig

    def __init__(self, config: AAEConfig):
        super().__init__(config)
        c = config
        assert c.latent_dim is not None and c.noise_dim is not None
        cond_dim = c.condition_dim
        self.encoder = ConvEncoder(c.image_shape, c.latent_dim, c.base_channels, c.hidden_dim)
        self.decoder = ConvDecoder(c.image_shape, c.latent_dim, c.base_channels, c.hidden_dim, upsample=c.upsample)
        self.code_generator = CodeGenerator(c.noise_dim, cond_dim, c.latent_dim, c.code_norm)
        # D_I sees the condition only in the text setting; for labels/clusters Q recovers it (Eq. 7)
        self.image_discriminator = ImageDiscriminator(
            c.image_shape, c.base_channels, c.disc_hidden, cond_dim if c.condition == "text" else 0,
            q_dim=cond_dim, aux_classes=c.aux_classes, aux_attributes=c.aux_attributes)
        # D_C is label-free in the unsupervised setting (paper Fig. 5)
        self.code_discriminator = CodeDiscriminator(
            c.latent_dim, cond_dim if c.condition in ("class", "text") else 0, c.code_disc_hidden)

    def generate_codes(self, noise: Tensor, cond: Tensor) -> Tensor:
        return self.code_generator(noise, cond)

    def sample_latents(self, n: int, condition: Condition, generator: torch.Generator) -> Tensor:
        cond = self.condition_vectors(n, condition, generator)  # (n, condition_dim)
        noise_dim = self.config.noise_dim
        assert noise_dim is not None  # AAEConfig.__post_init__ sets it
        noise = torch.randn(n, noise_dim, generator=generator)  # (n, noise_dim)
        return self.code_generator(to_device(noise, self.device), to_device(cond, self.device))  # (n, latent_dim)

    def sample_latents_per_seed(self, seeds: Sequence[int], condition: Condition, pass_size: int) -> Tensor:
        """Each seed's condition and noise drawn as ``sample_latents(1, ...)`` draws them, then CG over all the
        rows in passes of exactly ``pass_size`` (the last padded with zeros): one CG call per pass instead of
        one per image. Rows are independent in CG (BatchNorm in eval mode, or LayerNorm), and a pass of fixed
        size gives a row the same floats at any position and with any other rows (tests/test_sampling.py)."""
        if pass_size < 1:
            raise ValueError(f"pass_size must be at least 1, got {pass_size}")
        noise_dim = self.config.noise_dim
        assert noise_dim is not None  # AAEConfig.__post_init__ sets it
        conds, noises = [], []
        for seed in seeds:
            generator = torch.Generator().manual_seed(int(seed))
            conds.append(self.condition_vectors(1, condition, generator))  # (1, condition_dim)
            noises.append(torch.randn(1, noise_dim, generator=generator))  # (1, noise_dim)
        cond, noise = torch.cat(conds), torch.cat(noises)
        codes = []
        for start in range(0, len(noise), pass_size):
            rows = min(pass_size, len(noise) - start)
            part_noise, part_cond = noise[start:start + pass_size], cond[start:start + pass_size]
            if rows < pass_size:
                part_noise = torch.cat([part_noise, part_noise.new_zeros(pass_size - rows, noise_dim)])
                part_cond = torch.cat([part_cond, part_cond.new_zeros(pass_size - rows, cond.shape[1])])
            out = self.code_generator(to_device(part_noise, self.device), to_device(part_cond, self.device))
            codes.append(out[:rows])
        return torch.cat(codes)  # (len(seeds), latent_dim)

    def decode(self, latents: Tensor, condition: Condition | None = None) -> Tensor:
        return self.decoder(latents)

    def encode(self, images: Tensor, condition: Condition | None = None) -> EncoderOutput:
        return EncoderOutput(self.encoder(images))

    @torch.no_grad()
    def predict_condition(self, images: Tensor) -> Tensor:
        """Q's output on images: class/cluster logits ``(B, K)`` or the predicted text vector."""
        if self.config.condition == "none":
            raise ValueError("an unconditional model has no Q head")
        if "image_discriminator" in getattr(self, "dropped_modules", ()):
            raise ValueError("this inference-only export has no image discriminator, so no Q head")
        cond = None
        if self.config.condition == "text":  # D_I's real/fake half wants a condition; Q does not read it
            cond = torch.zeros(images.shape[0], self.config.text_dim, device=images.device)
        _, q = self.image_discriminator(images, cond)
        return q
