"""priorforge: conditional image generation with autoencoder-based models."""

__version__ = "0.1.0"
