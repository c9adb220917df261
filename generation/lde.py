"""Autoencoder (AE or IAE) + latent density estimator (Yoo, Lee, Kwak, "Unpriortized autoencoder for image
generation"; methods.md section 2).

Parts: a deterministic encoder E and decoder G, trained first on the reconstruction loss (the IAE variant
masks all but the first k code dims, k growing over the first part of training), and the LDE: an
autoregressive mixture density network over the D code dims, p(z) = prod_i p(z_i | z_<i) (Eq. 2), each
factor a mixture of K univariate Gaussians (Eq. 3), fitted by maximum likelihood on the frozen encoder's
codes (Eq. 4). Generation samples z one dim after the other from the LDE, then decodes it.

Conditions beyond the paper (methods.md "Conditioning beyond the papers"): for ``class`` and ``text`` the
condition vector enters every causal block of the LDE as a per-channel bias (WaveNet-style global
conditioning), so the prior is conditional while the autoencoder stays shared and unconditional.
Training lives in ``training/lde.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from generation.base import Condition, EncoderOutput, GenerativeModel, ModelConfig
from generation.layers import ConvDecoder, ConvEncoder

LOG_SIGMA_RANGE = (-7.0, 5.0)  # numerical guard on log sigma; wide enough to never bind on sane codes


@dataclass
class LDEConfig(ModelConfig):
    """Config of the AE/IAE + LDE model.

    Args:
        variant: ``ae`` (plain autoencoder) or ``iae`` (incremental latent learning, paper Section 3.4).
        latent_dim: size D of the code; None: 16 for 1-channel images, 64 otherwise.
        base_channels: channels of the first conv stage of E and G (doubling per stage).
        hidden_dim: width of the fully connected layers of E and G.
        num_mixtures: K, Gaussians per code dim (reference script: 30).
        lde_channels: channels of the first causal block; they double per block (16, 32, 64, ...).
        lde_max_channels: cap on the causal blocks' channels.
        temperature: softmax temperature of the mixture weights pi at sampling time (1 = the fitted model;
            below 1 favours the dominant component). Can be changed on a loaded model, or passed to
            ``sample_latents``.
    """

    variant: Literal["ae", "iae"] = "iae"
    latent_dim: int | None = None
    base_channels: int = 64
    hidden_dim: int = 1024
    num_mixtures: int = 30
    lde_channels: int = 16
    lde_max_channels: int = 128
    temperature: float = 1.0

    def __post_init__(self) -> None:
        self.image_shape = tuple(self.image_shape)  # type: ignore[assignment]
        if self.variant not in ("ae", "iae"):
            raise ValueError(f"variant must be 'ae' or 'iae', got {self.variant!r}")
        if self.latent_dim is None:
            self.latent_dim = 16 if self.image_shape[0] == 1 else 64
        for name in ("latent_dim", "num_mixtures", "lde_channels", "lde_max_channels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


class CausalBlock(nn.Module):
    """Causal dilated Conv1d (kernel 2), BN, LeakyReLU; plus an optional condition bias per channel."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int, cond_dim: int):
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Conv1d(in_ch, out_ch, kernel_size=2, dilation=dilation)
        self.norm = nn.BatchNorm1d(out_ch)
        self.cond = nn.Linear(cond_dim, out_ch, bias=False) if cond_dim else None

    def forward(self, h: Tensor, cond: Tensor | None) -> Tensor:
        h = self.conv(F.pad(h, (self.dilation, 0)))  # left pad: position t sees inputs <= t; (B, C, L)
        if self.cond is not None:
            assert cond is not None
            h = h + self.cond(cond).unsqueeze(2)  # (B, C, 1) broadcast over positions
        return F.leaky_relu(self.norm(h), 0.2)


@dataclass
class MixtureParams:
    """Per-dim mixture parameters, each ``(B, D, K)``: mixture logits, means, log standard deviations."""

    logits: Tensor
    mu: Tensor
    log_sigma: Tensor


class LatentDensityEstimator(nn.Module):
    """Autoregressive mixture density network over a D-dim code (paper Fig. 4).

    The input has 2 channels (value, mask=1) and is left-padded with one zero vector (mask=0), so the
    sequence is ``[p, z_1..z_D]``; ``ceil(log2 D) + 1`` causal blocks of dilation 1, 2, 4, ... give a receptive
    field of at least D + 1, and the features at position i - 1 (which see ``p, z_1..z_{i-1}``) parameterise
    ``p(z_i | z_<i)`` through a 1x1 conv with 3K outputs.
    """

    def __init__(self, latent_dim: int, num_mixtures: int, channels: int = 16, max_channels: int = 128,
                 cond_dim: int = 0):
        super().__init__()
        self.latent_dim, self.num_mixtures = latent_dim, num_mixtures
        num_blocks = math.ceil(math.log2(latent_dim)) + 1 if latent_dim > 1 else 1
        blocks, in_ch = [], 2
        for i in range(num_blocks):
            out_ch = min(channels * 2**i, max_channels)
            blocks.append(CausalBlock(in_ch, out_ch, dilation=2**i, cond_dim=cond_dim))
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv1d(in_ch, 3 * num_mixtures, kernel_size=1)

    def forward(self, z: Tensor, cond: Tensor | None = None) -> MixtureParams:
        """Mixture parameters of ``p(z_i | z_<i)`` for every i, from codes ``z`` ``(B, D)``."""
        b, d = z.shape
        values = F.pad(z, (1, 0))  # (B, D + 1): the zero vector p, then z
        mask = F.pad(torch.ones_like(z), (1, 0))  # (B, D + 1): 0 for p, 1 for z
        h = torch.stack([values, mask], dim=1)  # (B, 2, D + 1)
        for block in self.blocks:
            h = block(h, cond)
        out = self.head(h[:, :, :d])  # position i - 1 sees z_<i; (B, 3K, D)
        out = out.view(b, 3, self.num_mixtures, d).permute(1, 0, 3, 2)  # (3, B, D, K)
        log_sigma = out[2].clamp(*LOG_SIGMA_RANGE)  # sigma = exp(log_sigma) (paper: exponential activation)
        return MixtureParams(logits=out[0], mu=out[1], log_sigma=log_sigma)

    def log_prob_per_dim(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        """``log p(z_i | z_<i)`` ``(B, D)`` (Eq. 3)."""
        p = self.forward(z, cond)
        x = z.unsqueeze(2)  # (B, D, 1)
        log_normal = -0.5 * ((x - p.mu) / p.log_sigma.exp()) ** 2 - p.log_sigma - 0.5 * math.log(2 * math.pi)
        return torch.logsumexp(F.log_softmax(p.logits, dim=2) + log_normal, dim=2)  # (B, D)

    def nll(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        """Mean negative log-likelihood per dim and per code (Eq. 4, averaged over the batch)."""
        return -self.log_prob_per_dim(z, cond).mean()

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, cond: Tensor | None = None,
               temperature: float = 1.0) -> Tensor:
        """``n`` codes ``(n, D)``, drawn one dim after the other; all randomness from the CPU ``generator``.

        Incremental ("fast WaveNet") generation, linear in D: drawing ``z_i`` needs only the features at
        sequence position i, so each step pushes that one position through the blocks, reading the input at
        position i - dilation of every block from a cache of that block's past inputs. This is exact, not an
        approximation: in eval mode every block is a kernel-2 conv on positions (t - d, t) (zero for t < d,
        as the left pad), then per-channel affine maps (condition bias, BatchNorm with running statistics) and
        a pointwise LeakyReLU, none of which mixes positions; the head is 1x1. So position i's mixture
        parameters equal those of :meth:`forward` on the partial code (tests/test_lde.py). The generator is
        consumed as before (multinomial, then randn, per dim), so a seed gives the same codes as the full-pass
        :meth:`_sample_reference`. In training mode BatchNorm normalises with statistics over all positions,
        which is not causal, so that case keeps the full-pass sampler.
        """
        blocks = [cast(CausalBlock, b) for b in self.blocks]
        if self.training or any(b.norm.training or not b.norm.track_running_stats for b in blocks):
            return self._sample_reference(n, generator, cond, temperature)
        device = self.head.weight.device
        z = torch.zeros(n, self.latent_dim, device=device)
        # conv weights (out, in, 2) as one (out, 2 * in) matrix for the input pair [x(t - d), x(t)]
        weights = [b.conv.weight.transpose(1, 2).reshape(b.conv.out_channels, -1) for b in blocks]
        if any(b.cond is not None for b in blocks):
            assert cond is not None
        cond_bias = [b.cond(cond) if b.cond is not None else None for b in blocks]  # (n, C), position-free
        head_weight = self.head.weight.squeeze(2)  # (3K, C)
        history: list[list[Tensor]] = [[] for _ in blocks]  # inputs of each block at positions 0..i-1
        k = self.num_mixtures
        for i in range(self.latent_dim):
            if i == 0:  # sequence position 0 is the pad vector p: value 0, mask 0
                h = torch.zeros(n, 2, device=device)
            else:  # position i holds z_{i-1} with mask 1
                h = torch.stack([z[:, i - 1], torch.ones(n, device=device)], dim=1)  # (n, 2)
            for block, weight, bias, past in zip(blocks, weights, cond_bias, history):
                past.append(h)
                prev = past[i - block.dilation] if i >= block.dilation else torch.zeros_like(h)  # left pad
                h = F.linear(torch.cat([prev, h], dim=1), weight, block.conv.bias)  # (n, C)
                if bias is not None:
                    h = h + bias
                h = F.leaky_relu(block.norm(h), 0.2)
            out = F.linear(h, head_weight, self.head.bias)  # (n, 3K), the same layout as forward's head
            logits, mu, log_sigma = out[:, :k], out[:, k:2 * k], out[:, 2 * k:].clamp(*LOG_SIGMA_RANGE)
            z[:, i] = self._draw(logits, mu, log_sigma, generator, temperature).to(device)
        return z

    @staticmethod
    def _draw(logits: Tensor, mu: Tensor, log_sigma: Tensor, generator: torch.Generator,
              temperature: float) -> Tensor:
        """One value per row from the mixtures ``(n, K)``: a component (multinomial), then a Gaussian draw."""
        logits, mu, sigma = (t.float().cpu() for t in (logits, mu, log_sigma.exp()))  # (n, K)
        component = torch.multinomial(F.softmax(logits / temperature, dim=1), 1, generator=generator)  # (n, 1)
        eps = torch.randn(logits.shape[0], generator=generator)
        return mu.gather(1, component).squeeze(1) + sigma.gather(1, component).squeeze(1) * eps  # (n,)

    @torch.no_grad()
    def _sample_reference(self, n: int, generator: torch.Generator, cond: Tensor | None = None,
                          temperature: float = 1.0) -> Tensor:
        """The full-pass sampler (D forward passes over all dims): the reference the tests hold :meth:`sample`
        to, and the sampler in training mode (batch statistics in BatchNorm)."""
        device = self.head.weight.device
        z = torch.zeros(n, self.latent_dim, device=device)  # dims >= i are never seen when drawing dim i
        for i in range(self.latent_dim):
            p = self.forward(z, cond)
            z[:, i] = self._draw(p.logits[:, i], p.mu[:, i], p.log_sigma[:, i], generator, temperature).to(device)
        return z


class LatentDensityAE(GenerativeModel):
    """AE/IAE + LDE; conditions ``none``, ``class`` and ``text`` (conditional LDE, shared autoencoder).

    Args:
        config: an :class:`LDEConfig`.
    """

    backend = "lde"
    config_class = LDEConfig
    supported_conditions = ("none", "class", "text")
    config: LDEConfig

    def __init__(self, config: LDEConfig):
        super().__init__(config)
        c = config
        assert c.latent_dim is not None
        self.encoder = ConvEncoder(c.image_shape, c.latent_dim, c.base_channels, c.hidden_dim)
        self.decoder = ConvDecoder(c.image_shape, c.latent_dim, c.base_channels, c.hidden_dim)
        self.lde = LatentDensityEstimator(c.latent_dim, c.num_mixtures, c.lde_channels, c.lde_max_channels,
                                          cond_dim=c.condition_dim)

    def prior_nll(self, codes: Tensor, cond: Tensor | None = None) -> Tensor:
        """The LDE's mean NLL per dim of ``codes`` (``cond``: condition vectors for class/text models)."""
        return self.lde.nll(codes, cond if self.config.condition_dim else None)

    @torch.no_grad()
    def sample_latents(self, n: int, condition: Condition, generator: torch.Generator,
                       temperature: float | None = None) -> Tensor:
        cond = self.condition_vectors(n, condition, generator)  # (n, condition_dim)
        temperature = self.config.temperature if temperature is None else temperature
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        cond_in = cond.to(self.device) if self.config.condition_dim else None
        return self.lde.sample(n, generator, cond_in, temperature)  # (n, latent_dim)

    def decode(self, latents: Tensor, condition: Condition | None = None) -> Tensor:
        return self.decoder(latents)  # (B, C, H, W)

    def encode(self, images: Tensor, condition: Condition | None = None) -> EncoderOutput:
        return EncoderOutput(self.encoder(images))  # (B, latent_dim)
