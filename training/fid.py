"""The Fréchet distance between two feature sets (FID's formula), shared by :mod:`training.evaluate` and
:mod:`training.text_eval` (its own module so that neither imports the other)."""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg
from torch import Tensor


def frechet_distance(features_a: Tensor | np.ndarray, features_b: Tensor | np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(N, D)`` and ``(M, D)``.

    ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` (Heusel et al. 2017, Eq. 6), with the
    matrix square root from :func:`scipy.linalg.sqrtm`; a tiny ridge is added when the product is singular.
    """
    a, b = as_float64(features_a), as_float64(features_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (N, D) and (M, D), got {a.shape} and {b.shape}")
    if min(len(a), len(b)) < 2:
        raise ValueError("the Fréchet distance needs at least 2 feature vectors per set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = _sqrtm(sigma_a @ sigma_b)
    if not np.isfinite(covmean).all():
        offset = np.eye(a.shape[1]) * eps
        covmean = _sqrtm((sigma_a + offset) @ (sigma_b + offset))
    covmean = covmean.real  # imaginary parts are round-off (both factors are PSD)
    diff = mu_a - mu_b
    value = diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.trace(covmean)
    return float(max(value, 0.0))


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # singular products warn; the caller checks finiteness instead
        warnings.simplefilter("ignore")
        return np.asarray(linalg.sqrtm(matrix))


def as_float64(features: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(features, Tensor):
        return features.detach().double().cpu().numpy()
    return np.asarray(features, dtype=np.float64)
