"""Residual VAE (the STL-10 64x64 write-up, "Using variational autoencoders as generative models"; methods.md
section 5; reference LukeDitria/CNN-VAE).

Encoder: a 3x3 conv stem, then residual down-sampling blocks until the feature map is 7x7 (28-pixel images)
or 4x4 (4 * 2**k pixels), channels doubling from ``base_channels`` up to ``max_channels`` (512); a linear layer
gives the Gaussian posterior's mean and log-variance. Decoder: the mirror, with nearest-neighbour up-sampling
in its residual blocks, ending in a 3x3 conv that gives per-pixel Bernoulli logits. ``decode`` returns
``2 * sigmoid(logits) - 1``, i.e. images in [-1, 1]. Generation: z ~ N(0, I) -> decode. Training (BCE-with-logits
reconstruction + ``kl_weight`` * KL) lives in ``training/vae.py``.

Each residual block is conv, BN, non-linearity, conv, BN plus a (1x1-conv) skip path, then the non-linearity:
the write-up's "each residual skips one convolution, two batch norms and one non-linearity".

Conditions beyond the paper (``class``): a CVAE. The one-hot label is concatenated to the flattened encoder
features (q(z | x, c)) and to the code at the decoder input (p(x | z, c)); the training objective keeps the
N(0, I) prior. Generation draws the code of a class from a class prior over codes (``class_prior``, default
``gaussian``: a Gaussian per class fitted to the training codes after training; see
``generation.base.ConditionalDecoderMixin``), because with N(0, I) codes the decoder ignores the label.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from generation.base import (CLASS_PRIORS, ClassPriorKind, Condition, ConditionalDecoderMixin, EncoderOutput,
                             GenerativeModel, ModelConfig)
from generation.layers import downsampling_stages
from generation.precision import to_device


@dataclass
class VAEConfig(ModelConfig):
    """Config of the residual VAE.

    Args:
        latent_dim: size of the code. None: 32 for 1-channel images, 128 for colour images up to 32 pixels,
            512 (the write-up's) for larger ones.
        base_channels: channels of the stem and of the first residual stage (doubling per stage).
        max_channels: the channel cap (the write-up: 512).
        class_prior: ``class`` models: how a class's code is drawn: ``gaussian`` (a Gaussian per class fitted
            to the training codes), ``flow`` (a conditional flow trained on them) or ``standard`` (N(0, I)).
    """

    latent_dim: int | None = None
    base_channels: int = 64
    max_channels: int = 512
    class_prior: ClassPriorKind = "gaussian"

    def __post_init__(self) -> None:
        self.image_shape = tuple(self.image_shape)  # type: ignore[assignment]
        downsampling_stages(self.image_shape)  # unsupported sizes fail here, with the rule in the message
        if self.latent_dim is None:
            channels, size = self.image_shape[0], self.image_shape[1]
            self.latent_dim = 32 if channels == 1 else (128 if size <= 32 else 512)
        for name in ("latent_dim", "base_channels", "max_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"vae: {name} must be a positive integer, got {value!r}")
        if self.class_prior not in CLASS_PRIORS:
            raise ValueError(f"vae: class_prior must be one of {', '.join(CLASS_PRIORS)}, got {self.class_prior!r}")


class ResidualBlock(nn.Module):
    """``(B, in, s, s)`` -> ``(B, out, s', s')`` with s' = s/2 (``down``), 2s (``up``, nearest neighbour) or s.

    Main path: conv3x3, BN, LeakyReLU, conv3x3, BN; skip: a 1x1 conv (identity when shapes match); then LeakyReLU
    on the sum. Down-sampling is the first conv's stride 2 (skip: the same stride); up-sampling happens first.
    """

    def __init__(self, in_ch: int, out_ch: int, resample: str = "none"):
        super().__init__()
        if resample not in ("down", "up", "none"):
            raise ValueError(f"resample must be 'down', 'up' or 'none', got {resample!r}")
        stride = 2 if resample == "down" else 1
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest") if resample == "up" else nn.Identity()
        self.main = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch), nn.LeakyReLU(0.2),
            nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch),
        )
        self.skip = (nn.Identity() if in_ch == out_ch and stride == 1
                     else nn.Conv2d(in_ch, out_ch, 1, stride, 0, bias=False))
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.upsample(x)
        return self.act(self.main(x) + self.skip(x))


def residual_channels(image_shape: tuple[int, int, int], base_channels: int, max_channels: int) -> list[int]:
    """Channels after the stem and after each down-sampling stage: ``[base, 2 base, ..., <= max]``."""
    num_stages, _ = downsampling_stages(image_shape)
    return [min(base_channels * 2**i, max_channels) for i in range(num_stages + 1)]


class ResidualEncoder(nn.Module):
    """Image ``(B, C, H, W)`` (+ condition ``(B, extra_dim)``) -> ``(mu, logvar)``, each ``(B, latent_dim)``."""

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int, base_channels: int, max_channels: int,
                 extra_dim: int = 0):
        super().__init__()
        _, final_size = downsampling_stages(image_shape)
        chans = residual_channels(image_shape, base_channels, max_channels)
        self.stem = nn.Sequential(nn.Conv2d(image_shape[0], chans[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(chans[0]), nn.LeakyReLU(0.2))
        self.blocks = nn.Sequential(*(ResidualBlock(a, b, "down") for a, b in zip(chans[:-1], chans[1:])))
        self.head = nn.Linear(chans[-1] * final_size**2 + extra_dim, 2 * latent_dim)

    def forward(self, images: Tensor, extra: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self.blocks(self.stem(images)).flatten(1)  # (B, C_last * s * s)
        if extra is not None:
            h = torch.cat([h, extra], dim=1)
        mu, logvar = self.head(h).chunk(2, dim=1)
        return mu, logvar


class ResidualDecoder(nn.Module):
    """Code ``(B, in_dim)`` -> per-pixel logits ``(B, C, H, W)``."""

    def __init__(self, image_shape: tuple[int, int, int], in_dim: int, base_channels: int, max_channels: int):
        super().__init__()
        _, final_size = downsampling_stages(image_shape)
        chans = list(reversed(residual_channels(image_shape, base_channels, max_channels)))
        self.start_shape = (chans[0], final_size, final_size)
        self.fc = nn.Sequential(nn.Linear(in_dim, chans[0] * final_size**2, bias=False),
                                nn.BatchNorm1d(chans[0] * final_size**2), nn.LeakyReLU(0.2))
        self.blocks = nn.Sequential(*(ResidualBlock(a, b, "up") for a, b in zip(chans[:-1], chans[1:])))
        self.out = nn.Conv2d(chans[-1], image_shape[0], 3, 1, 1)

    def forward(self, latents: Tensor) -> Tensor:
        h = self.fc(latents).view(-1, *self.start_shape)  # (B, C0, s, s)
        return self.out(self.blocks(h))  # (B, C, H, W) logits


class ResidualVAE(ConditionalDecoderMixin, GenerativeModel):
    """Residual VAE; conditions ``none`` and ``class`` (CVAE with a class prior over codes).

    Args:
        config: a :class:`VAEConfig`.
    """

    backend = "vae"
    config_class = VAEConfig
    supported_conditions = ("none", "class")
    config: VAEConfig

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        c = config
        assert c.latent_dim is not None
        self.encoder = ResidualEncoder(c.image_shape, c.latent_dim, c.base_channels, c.max_channels,
                                       extra_dim=c.condition_dim)
        self.decoder = ResidualDecoder(c.image_shape, c.latent_dim + c.condition_dim, c.base_channels,
                                       c.max_channels)
        self._build_class_prior(c.latent_dim)

    # -- networks on condition vectors (what the trainer calls) ------------------------------------------
    def decode_logits(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        """p(x | z, c) as Bernoulli logits ``(B, C, H, W)`` (pixels mapped to [0, 1])."""
        c = self._cond(cond, z.shape[0], z)
        return self.decoder(z if c is None else torch.cat([z, c], dim=1))

    def posterior(self, images: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """q(z | x, c): ``(mu, logvar)``, each ``(B, latent_dim)``."""
        return self.encoder(images, self._cond(cond, images.shape[0], images))

    # -- the uniform API ---------------------------------------------------------------------------------
    def sample_latents(self, n: int, condition: Condition, generator: torch.Generator) -> Tensor:
        self.check_condition(condition)
        latent_dim = self.config.latent_dim
        assert latent_dim is not None  # VAEConfig.__post_init__ sets it
        noise = to_device(torch.randn(n, latent_dim, generator=generator), self.device)  # (n, latent_dim)
        return self.prior_codes(noise, condition)  # N(0, I), or the class prior's codes for a class model

    def decode(self, latents: Tensor, condition: Condition | None = None) -> Tensor:
        logits = self.decode_logits(latents, self._condition_vector(latents.shape[0], condition))
        return torch.sigmoid(logits) * 2 - 1  # (B, C, H, W) in [-1, 1]

    def encode(self, images: Tensor, condition: Condition | None = None) -> EncoderOutput:
        mu, logvar = self.posterior(images, self._condition_vector(images.shape[0], condition))
        return EncoderOutput(mu, logvar)
