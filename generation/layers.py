"""Layers shared by several backends: the convolutional encoder/decoder stacks, the RealNVP flow on codes,
and the per-class Gaussian over codes.

DCGAN/InfoGAN pattern (methods.md "Common ground"): stride-2 4x4 convolutions halve the image until it is
7x7 (28-pixel images) or 4x4 (32, 64, 128... pixels), channels doubling each stage from ``base_channels``;
then fully connected layers to the code. The decoder mirrors it.

The flow (:class:`LatentFlow`) is GLF's prior and the optional ``class_prior="flow"`` of the VAE and PGA;
:class:`ClassGaussianPrior` is their default class prior (ex-post density estimation on the codes).
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import Tensor, nn


def downsampling_stages(image_shape: tuple[int, int, int]) -> tuple[int, int]:
    """``(number of stride-2 stages, size of the smallest feature map)`` for an image shape."""
    _, height, width = image_shape
    if height != width:
        raise ValueError(f"images must be square, got {height}x{width}")
    if height == 28:
        return 2, 7
    stages = math.log2(height / 4) if height >= 8 else -1
    if stages < 1 or stages != int(stages):
        raise ValueError(f"unsupported image size {height}: use 28 or 4 * 2**k pixels (8, 16, 32, 64, 128)")
    return int(stages), 4


def stage_channels(num_stages: int, base_channels: int, max_channels: int = 512) -> list[int]:
    return [min(base_channels * 2**i, max_channels) for i in range(num_stages)]


class ConvEncoder(nn.Module):
    """Image ``(B, C, H, W)`` -> vector ``(B, out_dim)``; ``features`` gives the last conv activations."""

    def __init__(self, image_shape: tuple[int, int, int], out_dim: int, base_channels: int = 64,
                 hidden_dim: int = 1024, extra_dim: int = 0):
        super().__init__()
        num_stages, final_size = downsampling_stages(image_shape)
        channels = stage_channels(num_stages, base_channels)
        layers: list[nn.Module] = []
        in_ch = image_shape[0]
        for i, ch in enumerate(channels):
            layers.append(nn.Conv2d(in_ch, ch, 4, 2, 1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(ch))
            layers.append(nn.LeakyReLU(0.2))
            in_ch = ch
        self.conv = nn.Sequential(*layers)
        self.feature_dim = in_ch * final_size * final_size
        # extra_dim: a condition vector concatenated to the flattened features (conditional encoders)
        self.head = nn.Sequential(
            nn.Linear(self.feature_dim + extra_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden_dim, out_dim),
        )

    def features(self, images: Tensor) -> Tensor:
        return self.conv(images)  # (B, C_last, s, s)

    def forward(self, images: Tensor, extra: Tensor | None = None) -> Tensor:
        h = self.features(images).flatten(1)  # (B, feature_dim)
        if extra is not None:
            h = torch.cat([h, extra], dim=1)
        return self.head(h)


UPSAMPLING = ("transpose", "nearest")


class ConvDecoder(nn.Module):
    """Vector ``(B, in_dim)`` -> image ``(B, C, H, W)``; tanh output in [-1, 1] unless ``output="logits"``.

    ``upsample``: ``transpose`` (DCGAN's 4x4 stride-2 transposed convolutions) or ``nearest`` (nearest-neighbour
    up-sampling then a 3x3 convolution, which avoids the checkerboard pattern of uneven kernel overlap,
    Odena et al. 2016, at about twice the decoder's compute).
    """

    def __init__(self, image_shape: tuple[int, int, int], in_dim: int, base_channels: int = 64,
                 hidden_dim: int = 1024, output: str = "tanh", upsample: str = "transpose"):
        super().__init__()
        num_stages, final_size = downsampling_stages(image_shape)
        channels = list(reversed(stage_channels(num_stages, base_channels)))
        self.start_shape = (channels[0], final_size, final_size)
        self.fc = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, channels[0] * final_size * final_size),
            nn.BatchNorm1d(channels[0] * final_size * final_size),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        for i in range(num_stages):
            out_ch = channels[i + 1] if i + 1 < num_stages else image_shape[0]
            if upsample == "transpose":
                layers.append(nn.ConvTranspose2d(channels[i], out_ch, 4, 2, 1))
            elif upsample == "nearest":
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels[i], out_ch, 3, 1, 1)]
            else:
                raise ValueError(f"upsample must be one of {', '.join(UPSAMPLING)}, got {upsample!r}")
            if i + 1 < num_stages:
                layers += [nn.BatchNorm2d(out_ch), nn.ReLU()]
        if output == "tanh":
            layers.append(nn.Tanh())
        elif output != "logits":
            raise ValueError(f"output must be 'tanh' or 'logits', got {output!r}")
        self.deconv = nn.Sequential(*layers)

    def forward(self, latents: Tensor) -> Tensor:
        h = self.fc(latents).view(-1, *self.start_shape)  # (B, C0, s, s)
        return self.deconv(h)  # (B, C, H, W)


def mlp(in_dim: int, hidden: list[int], out_dim: int, activation: type[nn.Module] = nn.LeakyReLU,
        batch_norm: bool = False) -> nn.Sequential:
    """A plain multilayer perceptron; LeakyReLU(0.2) by default."""
    layers: list[nn.Module] = []
    prev = in_dim
    for width in hidden:
        layers.append(nn.Linear(prev, width))
        if batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(activation(0.2) if activation is nn.LeakyReLU else activation())
        prev = width
    layers.append(nn.Linear(prev, out_dim))
    return nn.Sequential(*layers)


class AffineCoupling(nn.Module):
    """RealNVP affine coupling: ``y_a = x_a``, ``y_b = x_b * exp(s(x_a, c)) + t(x_a, c)``, then a fixed permutation.

    ``s`` is soft-clamped to ``(-clamp, clamp)``; log|det J| = sum(s). The coupling net is a 3-layer MLP whose
    last layer starts at zero, so the flow starts as the identity (up to the permutations).
    """

    permutation: Tensor  # buffers
    inverse_permutation: Tensor

    def __init__(self, dim: int, hidden: int, cond_dim: int, clamp: float, permutation: Tensor):
        super().__init__()
        self.split = dim // 2
        self.clamp = clamp
        out = dim - self.split
        last = nn.Linear(hidden, 2 * out)
        self.net = nn.Sequential(
            nn.Linear(self.split + cond_dim, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
            last,
        )
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
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


class ConditionalGaussianBase(nn.Module):
    """Glow's conditional prior on the flow's output: ``u ~ N(mean(c), diag(exp(log_scale(c)))^2)``.

    A small MLP maps the condition vector to the mean and log-scale. Its last layer starts at zero, so the base
    starts as N(0, I) and the flow as an unconditional one. With it the flow can put each condition's codes in
    their own region of u-space instead of having to separate them through the coupling nets alone.
    """

    def __init__(self, cond_dim: int, dim: int, hidden: int, clamp: float):
        super().__init__()
        self.clamp = clamp
        last = nn.Linear(hidden, 2 * dim)
        self.net = nn.Sequential(nn.Linear(cond_dim, hidden), nn.LeakyReLU(0.2), last)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean, log_scale)``, each ``(B, dim)``; the log-scale soft-clamped like the couplings'."""
        mean, log_scale = self.net(cond).chunk(2, dim=1)
        return mean, self.clamp * torch.tanh(log_scale / self.clamp)


class LatentFlow(nn.Module):
    """f: code z -> noise u, ``blocks`` blocks of two affine couplings (methods.md section 4).

    ``conditional_base``: the noise's Gaussian depends on the condition (:class:`ConditionalGaussianBase`)
    instead of being N(0, I) for every condition.
    """

    def __init__(self, dim: int, blocks: int, hidden: int, cond_dim: int = 0, clamp: float = 2.0, seed: int = 0,
                 conditional_base: bool = False, cond_features: int = 0):
        super().__init__()
        if conditional_base and not cond_dim:
            raise ValueError("conditional_base needs a condition (class or text)")
        if cond_features and not cond_dim:
            raise ValueError("cond_features needs a condition (class or text)")
        generator = torch.Generator().manual_seed(seed)
        self.dim = dim
        # cond_features > 0: one shared linear map of the condition to that many features, layer-normalised, is
        # what every coupling net and the base read, instead of the raw condition vector
        self.condition_net = nn.Sequential(nn.Linear(cond_dim, cond_features), nn.LayerNorm(cond_features)) \
            if cond_features else None
        read_dim = cond_features or cond_dim
        self.layers = nn.ModuleList(
            AffineCoupling(dim, hidden, read_dim, clamp, torch.randperm(dim, generator=generator))
            for _ in range(2 * blocks)
        )
        self.base = ConditionalGaussianBase(read_dim, dim, hidden, clamp) if conditional_base else None

    def _read(self, cond: Tensor | None) -> Tensor | None:
        return cond if cond is None or self.condition_net is None else self.condition_net(cond)

    def forward(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``z`` ``(B, D)`` -> ``(u, log|det du/dz|)``."""
        return self._forward(z, self._read(cond))

    def _forward(self, z: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        log_det = torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)
        for layer in self.layers:
            z, ld = layer(z, cond)
            log_det = log_det + ld
        return z, log_det

    def inverse(self, u: Tensor, cond: Tensor | None = None) -> Tensor:
        return self._inverse(u, self._read(cond))

    def _inverse(self, u: Tensor, cond: Tensor | None) -> Tensor:
        for layer in reversed(self.layers):
            u = cast(AffineCoupling, layer).inverse(u, cond)
        return u

    def nll(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        """Negative log-likelihood per code ``(B,)`` by the change of variables (paper Eq. 1)."""
        cond = self._read(cond)
        u, log_det = self._forward(z, cond)
        if self.base is None or cond is None:
            log_pu = -0.5 * (u**2).sum(dim=1)  # N(0, I)
        else:
            mean, log_scale = self.base(cond)
            log_pu = (-0.5 * ((u - mean) * (-log_scale).exp()) ** 2 - log_scale).sum(dim=1)
        return -(log_pu - 0.5 * self.dim * math.log(2 * math.pi) + log_det)

    def standard_noise(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        """The standard normal noise ``(B, D)`` that :meth:`sample` maps to the codes ``z`` under ``cond``."""
        cond = self._read(cond)
        u, _ = self._forward(z, cond)
        if self.base is not None and cond is not None:
            mean, log_scale = self.base(cond)
            u = (u - mean) * (-log_scale).exp()
        return u

    def sample(self, noise: Tensor, cond: Tensor | None = None) -> Tensor:
        """Codes ``(B, D)`` from standard normal ``noise`` ``(B, D)``: through the base's scale and shift, then f^-1."""
        cond = self._read(cond)
        if self.base is not None and cond is not None:
            mean, log_scale = self.base(cond)
            noise = mean + noise * log_scale.exp()
        return self._inverse(noise, cond)


class ClassGaussianPrior(nn.Module):
    """One Gaussian per class over codes, p(z | c) = N(mean_c, L_c L_c^T), fitted to the codes of training images.

    Ex-post density estimation (Ghosh et al. 2020, "From variational to deterministic autoencoders": an RAE with
    a Gaussian mixture fitted to its codes after training; the GLF paper's "RAE + GMM" baseline), here one
    full-covariance component per class: sampling a class draws codes from where that class's training images
    actually encode, so the class is honoured whether the decoder reads the label or not.

    Buffers: ``mean`` ``(K, D)``, ``scale_tril`` ``(K, D, D)`` (Cholesky factors) and ``fitted``. Until
    :meth:`fit` runs (and in a checkpoint saved before this prior existed, see :meth:`_load_from_state_dict`)
    it is unfitted and :meth:`sample` returns the noise itself: the N(0, I) prior.
    """

    mean: Tensor  # buffers
    scale_tril: Tensor
    fitted: Tensor

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_classes, dim))
        self.register_buffer("scale_tril", torch.eye(dim).repeat(num_classes, 1, 1))
        self.register_buffer("fitted", torch.tensor(False))

    def sample(self, index: Tensor, noise: Tensor) -> Tensor:
        """Codes ``(n, D)`` for class indices ``index`` ``(n,)`` from standard normal ``noise`` ``(n, D)``."""
        if not bool(self.fitted):
            return noise
        with torch.autocast(noise.device.type, enabled=False):  # full precision even under a caller's autocast
            scale = self.scale_tril[index]  # (n, D, D)
            return self.mean[index] + (scale @ noise.float().unsqueeze(2)).squeeze(2)  # (n, D)

    @torch.no_grad()
    def fit(self, codes: Tensor, labels: Tensor, ridge: float = 1e-4) -> None:
        """Mean and covariance of each class's ``codes`` ``(N, D)`` (``labels`` ``(N,)``); ``ridge`` (times the
        mean variance) keeps each covariance positive definite. A class with fewer than 2 codes gets the Gaussian
        of all the codes."""
        codes, labels = codes.double(), labels.long()
        for k in range(self.mean.shape[0]):
            pick = labels == k if int((labels == k).sum()) >= 2 else torch.ones_like(labels, dtype=torch.bool)
            z = codes[pick]  # (n_k, D)
            cov = torch.cov(z.T).reshape(z.shape[1], z.shape[1])  # (D, D)
            cov = cov + ridge * cov.diagonal().mean().clamp_min(1e-12) * torch.eye(z.shape[1], dtype=cov.dtype)
            self.mean[k] = z.mean(0).to(self.mean)
            self.scale_tril[k] = torch.linalg.cholesky(cov).to(self.scale_tril)
        self.fitted.fill_(True)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # a checkpoint saved before this prior existed has none of its buffers: load it as unfitted (N(0, I),
        # which is how that model sampled); a checkpoint with only some of them is left to fail as incomplete
        names = [prefix + name for name, _ in self.named_buffers(recurse=False)]
        if not any(name in state_dict for name in names):
            for name, buffer in self.named_buffers(recurse=False):
                state_dict[prefix + name] = buffer.detach().clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
