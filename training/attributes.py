"""Visual attributes read off images, for the built-in captioned data sets and the text-alignment metrics.

Everything works on uint8 batches ``(B, C, H, W)`` (use :func:`training.data.to_float`'s inverse,
:func:`generation.sampling.to_uint8`, for generated images) and is deterministic.

Colour (RGB images, ``cifar10-captions``): the object's dominant colour, one of :data:`COLOR_NAMES`.
  1. Each pixel gets a centre weight ``exp(-r^2 / (2 * sigma^2))``, ``r`` the distance to the image centre
     and ``sigma = CENTRE_SIGMA * side`` (0.2: a pixel at the middle of an edge counts ~4% of the centre), because CIFAR
     objects are centred and the border is mostly background.
  2. Each pixel is converted to HSV (h in degrees, s and v in [0, 1]) and named by these rules, in order:
     - ``v < 0.22`` -> black;
     - ``s < 0.15`` -> white if ``v > 0.78``, else grey (too little colour to name a hue);
     - hue 15..45 deg (orange/brown band) or red hue with ``v < 0.45``: brown if ``v < 0.6`` (dark orange
       is brown), else orange;
     - red hue (345..15 deg): pink if ``s < 0.5 and v > 0.7`` (light, washed-out red), else red;
     - yellow 45..70, green 70..170, blue 170..260, purple 260..290, pink 290..345.
  3. The dominant colour is the name with the largest total weight.

Tone and shape (grey garments on black, ``fashion-mnist-captions``):
  - garment mask: pixels brighter than ``MASK_THRESHOLD`` (40 of 255);
  - tone: mean intensity of the garment's pixels; ``dark`` below ``TONE_THRESHOLD`` (170 of 255), else
    ``light`` (the threshold is close to the median over the Fashion-MNIST training set, so the two
    values are about equally frequent);
  - shape: bounding box of the mask (rows/columns with at least ``BOX_MIN_PIXELS`` mask pixels, which
    ignores stray noise); ``wide`` when width / height is at least ``SHAPE_THRESHOLDS[class]``, else
    ``narrow``. The threshold is the median aspect of the class in the training set, because the aspect
    is mostly set by the class (trousers are always taller than wide): the shape word says whether a
    garment is wider or narrower than usual for its kind. Without a class, ``DEFAULT_SHAPE_THRESHOLD``
    (1.0, square) is used.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

COLOR_NAMES = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "white", "grey", "black")
TONE_NAMES = ("dark", "light")
SHAPE_NAMES = ("narrow", "wide")

CENTRE_SIGMA = 0.2
BLACK_V, GREY_S, WHITE_V = 0.22, 0.15, 0.78
MASK_THRESHOLD = 40
TONE_THRESHOLD = 170.0
BOX_MIN_PIXELS = 2
DEFAULT_SHAPE_THRESHOLD = 1.0
# median width/height of the garment's bounding box per Fashion-MNIST class (training set), see module doc
SHAPE_THRESHOLDS = {
    "T-shirt/top": 0.79,
    "Trouser": 0.39,
    "Pullover": 0.75,
    "Dress": 0.54,
    "Coat": 0.74,
    "Sandal": 1.87,
    "Shirt": 0.75,
    "Sneaker": 2.25,
    "Bag": 1.08,
    "Ankle boot": 1.35,
}


def rgb_to_hsv(rgb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Floats in [0, 1] ``(B, 3, H, W)`` -> hue in degrees [0, 360), saturation, value, each ``(B, H, W)``."""
    r, g, b = rgb.unbind(1)
    v, argmax = rgb.max(1)
    c = v - rgb.min(1).values  # chroma
    s = torch.where(v > 0, c / v.clamp(min=1e-8), torch.zeros_like(v))
    safe = c.clamp(min=1e-8)
    h = torch.where(argmax == 0, ((g - b) / safe) % 6,
                    torch.where(argmax == 1, (b - r) / safe + 2, (r - g) / safe + 4)) * 60.0
    return torch.where(c > 0, h, torch.zeros_like(h)) % 360.0, s, v


def pixel_color_index(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """Index into :data:`COLOR_NAMES` for each pixel (rules in the module docstring)."""
    idx = {name: i for i, name in enumerate(COLOR_NAMES)}
    out = torch.full(h.shape, idx["pink"], dtype=torch.long)  # 290..345 unless overwritten below
    for lo, hi, name in ((45, 70, "yellow"), (70, 170, "green"), (170, 260, "blue"), (260, 290, "purple")):
        out[(h >= lo) & (h < hi)] = idx[name]
    red_hue = (h >= 345) | (h < 15)
    out[red_hue] = torch.where((s[red_hue] < 0.5) & (v[red_hue] > 0.7), idx["pink"], idx["red"])
    orange_band = ((h >= 15) & (h < 45)) | (red_hue & (v < 0.45))
    out[orange_band] = torch.where(v[orange_band] < 0.6, idx["brown"], idx["orange"])
    achromatic = s < GREY_S
    out[achromatic] = torch.where(v[achromatic] > WHITE_V, idx["white"], idx["grey"])
    out[v < BLACK_V] = idx["black"]
    return out


def centre_weights(height: int, width: int) -> Tensor:
    """``(H, W)`` Gaussian weights around the image centre, sigma = CENTRE_SIGMA * side."""
    ys = torch.arange(height, dtype=torch.float32) - (height - 1) / 2
    xs = torch.arange(width, dtype=torch.float32) - (width - 1) / 2
    sigma = CENTRE_SIGMA * max(height, width)
    return torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma ** 2))


def dominant_colors(images: Tensor) -> Tensor:
    """uint8 RGB ``(B, 3, H, W)`` -> ``(B,)`` indices into :data:`COLOR_NAMES`."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"dominant_colors needs RGB images (B, 3, H, W), got shape {tuple(images.shape)}")
    h, s, v = rgb_to_hsv(images.float() / 255.0)
    names = pixel_color_index(h, s, v)  # (B, H, W)
    weights = centre_weights(*images.shape[2:]).expand_as(h)
    votes = torch.zeros(images.shape[0], len(COLOR_NAMES))
    votes.scatter_add_(1, names.flatten(1), weights.flatten(1))
    return votes.argmax(1)


def garment_tone(images: Tensor) -> Tensor:
    """uint8 grey ``(B, 1, H, W)`` -> ``(B,)`` indices into :data:`TONE_NAMES` (0 dark, 1 light)."""
    x = images.float().flatten(1)
    mask = x > MASK_THRESHOLD
    mean = (x * mask).sum(1) / mask.sum(1).clamp(min=1)
    return (mean >= TONE_THRESHOLD).long()


def garment_aspect(images: Tensor) -> Tensor:
    """uint8 grey ``(B, 1, H, W)`` -> ``(B,)`` width / height of the garment's bounding box (0 if none)."""
    mask = images[:, 0] > MASK_THRESHOLD  # (B, H, W)
    rows = mask.sum(2) >= BOX_MIN_PIXELS  # (B, H)
    cols = mask.sum(1) >= BOX_MIN_PIXELS  # (B, W)
    return _extent(cols) / _extent(rows).clamp(min=1)


def _extent(flags: Tensor) -> Tensor:
    """Last - first set position + 1 along dim 1 (0 where none is set)."""
    n = flags.shape[1]
    pos = torch.arange(n).expand_as(flags)
    first = torch.where(flags, pos, n).min(1).values
    last = torch.where(flags, pos, -1).max(1).values
    return (last - first + 1).clamp(min=0).float()


def garment_shape(images: Tensor, class_names: Sequence[str] | None = None) -> Tensor:
    """``(B,)`` indices into :data:`SHAPE_NAMES` (0 narrow, 1 wide); ``class_names`` (one per image) picks
    each image's threshold from :data:`SHAPE_THRESHOLDS`."""
    aspect = garment_aspect(images)
    if class_names is None:
        thresholds = torch.full_like(aspect, DEFAULT_SHAPE_THRESHOLD)
    else:
        if len(class_names) != len(aspect):
            raise ValueError(f"garment_shape: {len(class_names)} class names for {len(aspect)} images")
        thresholds = torch.tensor([SHAPE_THRESHOLDS.get(c, DEFAULT_SHAPE_THRESHOLD) for c in class_names])
    return (aspect >= thresholds).long()
