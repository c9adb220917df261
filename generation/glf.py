"""Generative latent flow (Xiao, Yan, Amit, "Generative latent flow"; methods.md section 4).

Parts: a deterministic encoder E and decoder G, and a RealNVP normalizing flow f mapping codes z to
u = f(z) ~ N(0, I). All three are trained together in one stage on
reconstruction(x, G(E(x))) + NLL_f(stop_gradient(E(x))) (paper Eq. 2); generation is u ~ N(0, I),
z = f^{-1}(u), x = G(z). Without the stop-gradient (``regularized=True``) the NLL also trains the encoder,
which shrinks the codes (the paper's unstable "regularized GLF", Section 3.3).

Conditions beyond the paper: for ``class`` and ``text`` the condition vector is concatenated to the input
of every coupling net, which makes f (and so the prior on z) conditional; the autoencoder is shared and
unconditional. Training lives in ``training/glf.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from generation.base import Condition, EncoderOutput, GenerativeModel, ModelConfig
from generation.layers import ConvDecoder, ConvEncoder
from generation.precision import to_device


@dataclass
class GLFConfig(ModelConfig):
    """Config of the generative latent flow.

    Args:
        latent_dim: size of the code; None: 20 for 1-channel images (MNIST, Fashion), 64 otherwise.
        base_channels: channels of the first conv stage of E and G (doubling per stage).
        hidden_dim: width of the fully connected layers of E and G.
        regularized: let the flow's NLL reach the encoder (no stop-gradient): the paper's unstable variant.
        flow_blocks: coupling blocks, each two affine coupling layers with a fixed permutation after each.
        coupling_hidden: width of the 3-layer coupling MLPs; None: 64 for 1-channel images, 256 otherwise.
        scale_clamp: soft clamp of the log-scales, ``c * tanh(s / c)``.
        permutation_seed: seed of the fixed random permutations (stored in the checkpoint as buffers).
    """

    latent_dim: int | None = None
    base_channels: int = 64
    hidden_dim: int = 1024
    regularized: bool = False
    flow_blocks: int = 4
    coupling_hidden: int | None = None
    scale_clamp: float = 2.0
    permutation_seed: int = 0

    def __post_init__(self) -> None:
        self.image_shape = tuple(self.image_shape)  # type: ignore[assignment]
        if self.latent_dim is None:
            self.latent_dim = 20 if self.image_shape[0] == 1 else 64
        if self.coupling_hidden is None:
            self.coupling_hidden = 64 if self.image_shape[0] == 1 else 256
        if self.latent_dim < 2:
            raise ValueError(f"latent_dim must be at least 2 for a coupling flow, got {self.latent_dim}")
        for name in ("flow_blocks", "coupling_hidden"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.scale_clamp > 0:
            raise ValueError(f"scale_clamp must be positive, got {self.scale_clamp}")


class AffineCoupling(nn.Module):
    """RealNVP affine coupling: ``y_a = x_a``, ``y_b = x_b * exp(s(x_a, c)) + t(x_a, c)``, then a fixed permutation.

    ``s`` is soft-clamped to ``(-clamp, clamp)``; log|det J| = sum(s). The coupling net is a 3-layer MLP whose
    last layer starts at zero, so the flow starts as the identity (up to the permutations).
    """

    def __init__(self, dim: int, hidden: int, cond_dim: int, clamp: float, permutation: Tensor):
        super().__init__()
        self.split = dim // 2
        self.clamp = clamp
        out = dim - self.split
        self.net = nn.Sequential(
            nn.Linear(self.split + cond_dim, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, 2 * out),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.register_buffer("permutation", permutation)
        self.register_buffer("inverse_permutation", torch.argsort(permutation))

    def _scale_shift(self, x_a: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        h = x_a if cond is None else torch.cat([x_a, cond], dim=1)
        s, t = self.net(h).chunk(2, dim=1)  # (B, dim - split) each
        return self.clamp * torch.tanh(s / self.clamp), t

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x`` ``(B, dim)`` -> ``(y, log|det dy/dx|)`` with ``y`` ``(B, dim)`` and the log-det ``(B,)``."""
        x_a, x_b = x[:, :self.split], x[:, self.split:]
        s, t = self._scale_shift(x_a, cond)
        y = torch.cat([x_a, x_b * s.exp() + t], dim=1)
        return y[:, self.permutation], s.sum(dim=1)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> Tensor:
        y = y[:, self.inverse_permutation]
        y_a, y_b = y[:, :self.split], y[:, self.split:]
        s, t = self._scale_shift(y_a, cond)
        return torch.cat([y_a, (y_b - t) * (-s).exp()], dim=1)


class LatentFlow(nn.Module):
    """f: code z -> noise u, ``blocks`` blocks of two affine couplings (methods.md section 4)."""

    def __init__(self, dim: int, blocks: int, hidden: int, cond_dim: int = 0, clamp: float = 2.0, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.layers = nn.ModuleList(
            AffineCoupling(dim, hidden, cond_dim, clamp, torch.randperm(dim, generator=generator))
            for _ in range(2 * blocks)
        )

    def forward(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``z`` ``(B, D)`` -> ``(u, log|det du/dz|)``."""
        log_det = torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)
        for layer in self.layers:
            z, ld = layer(z, cond)
            log_det = log_det + ld
        return z, log_det

    def inverse(self, u: Tensor, cond: Tensor | None = None) -> Tensor:
        for layer in reversed(self.layers):
            u = layer.inverse(u, cond)
        return u

    def nll(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        """Negative log-likelihood per code ``(B,)`` by the change of variables (paper Eq. 1)."""
        u, log_det = self.forward(z, cond)
        log_pu = -0.5 * (u**2).sum(dim=1) - 0.5 * self.dim * math.log(2 * math.pi)  # N(0, I)
        return -(log_pu + log_det)


class GenerativeLatentFlow(GenerativeModel):
    """Deterministic AE + latent RealNVP flow; conditions ``none``, ``class``, ``text`` (conditional flow).

    Args:
        config: a :class:`GLFConfig`.
    """

    backend = "glf"
    config_class = GLFConfig
    supported_conditions = ("none", "class", "text")

    def __init__(self, config: GLFConfig):
        super().__init__(config)
        c = config
        assert c.latent_dim is not None and c.coupling_hidden is not None
        self.encoder = ConvEncoder(c.image_shape, c.latent_dim, c.base_channels, c.hidden_dim)
        self.decoder = ConvDecoder(c.image_shape, c.latent_dim, c.base_channels, c.hidden_dim)
        self.flow = LatentFlow(c.latent_dim, c.flow_blocks, c.coupling_hidden, c.condition_dim, c.scale_clamp,
                               c.permutation_seed)

    def _flow_cond(self, cond: Tensor | None) -> Tensor | None:
        return cond if self.config.condition_dim else None

    def prior_nll(self, codes: Tensor, cond: Tensor | None = None) -> Tensor:
        """Flow NLL per code ``(B,)`` (``cond``: condition vectors for class/text models)."""
        return self.flow.nll(codes, self._flow_cond(cond))

    @torch.no_grad()
    def sample_latents(self, n: int, condition: Condition, generator: torch.Generator) -> Tensor:
        cond = self.condition_vectors(n, condition, generator)  # (n, condition_dim)
        u = torch.randn(n, self.config.latent_dim, generator=generator)  # (n, latent_dim)
        return self.flow.inverse(to_device(u, self.device), self._flow_cond(to_device(cond, self.device)))  # (n, latent_dim)

    def decode(self, latents: Tensor, condition: Condition | None = None) -> Tensor:
        return self.decoder(latents)  # (B, C, H, W)

    def encode(self, images: Tensor, condition: Condition | None = None) -> EncoderOutput:
        return EncoderOutput(self.encoder(images))  # (B, latent_dim)
