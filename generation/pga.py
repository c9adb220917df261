"""Perceptual generative autoencoder (Zhang et al., "Perceptual generative autoencoders"; methods.md section 3).

A standard autoencoder, encoder f = E and decoder g = G, whose composition h(z) = E(G(z)) is trained to map
the prior N(0, I) onto the distribution of the data codes; by the paper's Theorem 1 G then maps N(0, I) onto
the (projected) data distribution. Two variants:

- ``lpga`` (maximum likelihood, Eq. 7): a deterministic encoder; the log-determinant of h's Jacobian is
  estimated with finite differences along random directions (Eq. 6).
- ``vpga`` (VAE-based, Eq. 11): a Gaussian posterior q(z|x) = N(mu(x), diag(sigma^2(x))) with p(z_hat | z) =
  N(h(z), sigma^2 I) in the latent space.

Generation is the same for both: z ~ N(0, I), x = G(z). The losses live in ``training/pga.py``.

Conditions beyond the paper (``class``): a CVAE-style conditional autoencoder. The one-hot label is
concatenated to the code at the decoder input, G(z, c), and to the encoder's flattened conv features,
E(x, c); so h(z, c) = E(G(z, c), c), and every PGA loss keeps its form (prior N(0, I)) with c carried along.
Generation draws the code of a class from a class prior over codes (``class_prior``, default ``gaussian``: a
Gaussian per class fitted to the training codes after training; see ``generation.base.ConditionalDecoderMixin``),
because with N(0, I) codes the decoder ignores the label.

Encoder and decoder are the DCGAN-style stacks of ``generation/layers.py`` (methods.md "Common ground": the PGA
reference uses the same InfoGAN/DCGAN pattern, with a 1024-unit FC layer for MNIST).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from generation.base import (CLASS_PRIORS, ClassPriorKind, Condition, ConditionalDecoderMixin, EncoderOutput,
                             GenerativeModel, ModelConfig)
from generation.layers import ConvDecoder, ConvEncoder
from generation.precision import to_device

PGAVariant = Literal["lpga", "vpga"]
PGA_VARIANTS: tuple[str, ...] = get_args(PGAVariant)

# reference code sizes (zj10/PGA): LPGA MNIST 12, VPGA MNIST 32, CIFAR-10 128
DEFAULT_LATENT_DIM = {("lpga", 1): 12, ("vpga", 1): 32}
DEFAULT_COLOUR_LATENT_DIM = 128


@dataclass
class PGAConfig(ModelConfig):
    """Config of the perceptual generative autoencoder.

    Args:
        variant: ``lpga`` (maximum-likelihood PGA) or ``vpga`` (variational PGA).
        latent_dim: size of the code z. None: the reference's 12 (LPGA) / 32 (VPGA) for 1-channel images,
            128 for colour images.
        base_channels: channels of the first conv stage of E and G (doubling per stage, up to 512).
        hidden_dim: width of the fully connected layer of E and G.
        class_prior: ``class`` models: how a class's code is drawn: ``gaussian`` (a Gaussian per class fitted
            to the training codes), ``flow`` (a conditional flow trained on them) or ``standard`` (N(0, I)).
    """

    variant: PGAVariant = "lpga"
    latent_dim: int | None = None
    base_channels: int = 64
    hidden_dim: int = 1024
    class_prior: ClassPriorKind = "gaussian"

    def __post_init__(self) -> None:
        self.image_shape = tuple(self.image_shape)  # type: ignore[assignment]
        if self.variant not in PGA_VARIANTS:
            raise ValueError(f"pga: variant (--variant) must be one of {', '.join(PGA_VARIANTS)}; got {self.variant!r}")
        if self.latent_dim is None:
            channels = self.image_shape[0]
            self.latent_dim = DEFAULT_LATENT_DIM.get((self.variant, channels), DEFAULT_COLOUR_LATENT_DIM)
        for name in ("latent_dim", "base_channels", "hidden_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"pga: {name} must be a positive integer, got {value!r}")
        if self.class_prior not in CLASS_PRIORS:
            raise ValueError(f"pga: class_prior must be one of {', '.join(CLASS_PRIORS)}, got {self.class_prior!r}")


class PerceptualGenerativeAE(ConditionalDecoderMixin, GenerativeModel):
    """LPGA / VPGA; conditions ``none`` and ``class`` (conditional encoder and decoder, CVAE-style, with a class
    prior over codes).

    Args:
        config: a :class:`PGAConfig`.
    """

    backend = "pga"
    config_class = PGAConfig
    supported_conditions = ("none", "class")
    config: PGAConfig

    def __init__(self, config: PGAConfig):
        super().__init__(config)
        c = config
        assert c.latent_dim is not None
        cond_dim = c.condition_dim
        # VPGA's encoder outputs the posterior mean and log-variance side by side
        out_dim = 2 * c.latent_dim if c.variant == "vpga" else c.latent_dim
        self.encoder = ConvEncoder(c.image_shape, out_dim, c.base_channels, c.hidden_dim, extra_dim=cond_dim)
        self.decoder = ConvDecoder(c.image_shape, c.latent_dim + cond_dim, c.base_channels, c.hidden_dim)
        self._build_class_prior(c.latent_dim)

    # -- networks on condition vectors (what the trainer calls) ------------------------------------------
    def generate(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        """G(z, c): codes ``(B, latent_dim)`` -> images ``(B, C, H, W)`` in [-1, 1]."""
        c = self._cond(cond, z.shape[0], z)
        return self.decoder(z if c is None else torch.cat([z, c], dim=1))

    def encode_params(self, images: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """E(x, c) -> ``(code or posterior mean (B, latent_dim), log-variance (B, latent_dim) or None)``."""
        out = self.encoder(images, self._cond(cond, images.shape[0], images))
        if self.config.variant == "vpga":
            mu, logvar = out.chunk(2, dim=1)
            return mu, logvar
        return out, None

    def h(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        """h(z) = E(G(z)) (the posterior mean for VPGA): ``(B, latent_dim)`` -> ``(B, latent_dim)``."""
        return self.encode_params(self.generate(z, cond), cond)[0]

    # -- the uniform API ---------------------------------------------------------------------------------
    def sample_latents(self, n: int, condition: Condition, generator: torch.Generator) -> Tensor:
        self.check_condition(condition)
        latent_dim = self.config.latent_dim
        assert latent_dim is not None  # PGAConfig.__post_init__ sets it
        noise = to_device(torch.randn(n, latent_dim, generator=generator), self.device)  # (n, latent_dim)
        return self.prior_codes(noise, condition)  # N(0, I), or the class prior's codes for a class model

    def decode(self, latents: Tensor, condition: Condition | None = None) -> Tensor:
        return self.generate(latents, self._condition_vector(latents.shape[0], condition))  # (B, C, H, W)

    def encode(self, images: Tensor, condition: Condition | None = None) -> EncoderOutput:
        mu, logvar = self.encode_params(images, self._condition_vector(images.shape[0], condition))
        return EncoderOutput(mu, logvar)
