"""Convolutional encoder/decoder stacks shared by several backends, sized from the image shape.

DCGAN/InfoGAN pattern (methods.md "Common ground"): stride-2 4x4 convolutions halve the image until it is
7x7 (28-pixel images) or 4x4 (32, 64, 128... pixels), channels doubling each stage from ``base_channels``;
then fully connected layers to the code. The decoder mirrors it.
"""

from __future__ import annotations

import math

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
