"""Generative latent flow (Xiao, Yan, Amit, "Generative latent flow"; methods.md section 4).

Parts: a deterministic encoder E and decoder G, and a RealNVP normalizing flow f mapping codes z to
u = f(z) ~ N(0, I). All three are trained together in one stage on
reconstruction(x, G(E(x))) + NLL_f(stop_gradient(E(x))) (paper Eq. 2); generation is u ~ N(0, I),
z = f^{-1}(u), x = G(z). Without the stop-gradient (``regularized=True``) the NLL also trains the encoder,
which shrinks the codes (the paper's unstable "regularized GLF", Section 3.3).

Conditions beyond the paper: for ``class`` and ``text`` the condition vector is concatenated to the input
of every coupling net, which makes f (and so the prior on z) conditional; with ``conditional_base`` the
flow's Gaussian also depends on the condition (Glow's class-conditional prior, Kingma & Dhariwal 2018). The
autoencoder is shared and unconditional; with ``aux_classes`` (text models) a linear head on the codes learns
the images' classes with it, so that the codes separate what the prompts name. Training lives in ``training/glf.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from generation.base import Condition, EncoderOutput, GenerativeModel, ModelConfig
# the flow lives in generation/layers.py (the VAE's and PGA's optional class prior is the same flow)
from generation.layers import AffineCoupling, ConvDecoder, ConvEncoder, LatentFlow
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
        conditional_base: for class and text models, the flow's noise is N(mean(c), diag(scale(c))^2) from a
            small MLP of the condition (Glow's conditional prior) instead of N(0, I) for every condition.
        aux_classes: text models only: a linear class head on the codes with this many classes, trained on the
            images' class labels with the reconstruction, so that the codes separate the classes the prompts
            name (the decoder does not read the condition: the flow can only follow a prompt's class as far as
            the codes carry it). 0: none (the paper's autoencoder).
        condition_features: class and text models: the flow reads the condition through one shared linear map
            to this many features and a LayerNorm (a conditioning network, as in conditional invertible networks)
            instead of the raw vector concatenated to every coupling net's input. Why: a sentence embedding is a
            unit vector of 384 small entries, which at initialisation weighs little beside the codes in a
            coupling net's first layer. 0: the raw vector.
    """

    latent_dim: int | None = None
    base_channels: int = 64
    hidden_dim: int = 1024
    regularized: bool = False
    flow_blocks: int = 4
    coupling_hidden: int | None = None
    scale_clamp: float = 2.0
    permutation_seed: int = 0
    conditional_base: bool = False
    aux_classes: int = 0
    condition_features: int = 0

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
        if self.conditional_base and self.condition == "none":
            raise ValueError("conditional_base needs a class or text condition")
        if self.aux_classes < 0:
            raise ValueError(f"aux_classes must be 0 or more, got {self.aux_classes}")
        if self.condition_features < 0:
            raise ValueError(f"condition_features must be 0 or more, got {self.condition_features}")
        if self.condition_features and self.condition == "none":
            raise ValueError("condition_features needs a class or text condition")
        if self.aux_classes and self.condition != "text":
            raise ValueError("aux_classes is for text models (a class model's flow reads the class itself)")


class GenerativeLatentFlow(GenerativeModel):
    """Deterministic AE + latent RealNVP flow; conditions ``none``, ``class``, ``text`` (conditional flow).

    Args:
        config: a :class:`GLFConfig`.
    """

    backend = "glf"
    config_class = GLFConfig
    supported_conditions = ("none", "class", "text")
    config: GLFConfig

    def __init__(self, config: GLFConfig):
        super().__init__(config)
        c = config
        assert c.latent_dim is not None and c.coupling_hidden is not None
        self.encoder = ConvEncoder(c.image_shape, c.latent_dim, c.base_channels, c.hidden_dim)
        self.decoder = ConvDecoder(c.image_shape, c.latent_dim, c.base_channels, c.hidden_dim)
        self.flow = LatentFlow(c.latent_dim, c.flow_blocks, c.coupling_hidden, c.condition_dim, c.scale_clamp,
                               c.permutation_seed, conditional_base=c.conditional_base,
                               cond_features=c.condition_features)
        # training only: the codes' class head (aux_classes); sampling never reads it
        self.class_head = torch.nn.Linear(c.latent_dim, c.aux_classes) if c.aux_classes else None

    def _flow_cond(self, cond: Tensor | None) -> Tensor | None:
        return cond if self.config.condition_dim else None

    def prior_nll(self, codes: Tensor, cond: Tensor | None = None) -> Tensor:
        """Flow NLL per code ``(B,)`` (``cond``: condition vectors for class/text models)."""
        return self.flow.nll(codes, self._flow_cond(cond))

    @torch.no_grad()
    def sample_latents(self, n: int, condition: Condition, generator: torch.Generator) -> Tensor:
        cond = self.condition_vectors(n, condition, generator)  # (n, condition_dim)
        latent_dim = self.config.latent_dim
        assert latent_dim is not None  # GLFConfig.__post_init__ sets it
        u = torch.randn(n, latent_dim, generator=generator)  # (n, latent_dim)
        return self.flow.sample(to_device(u, self.device), self._flow_cond(to_device(cond, self.device)))  # (n, latent_dim)

    def decode(self, latents: Tensor, condition: Condition | None = None) -> Tensor:
        return self.decoder(latents)  # (B, C, H, W)

    def encode(self, images: Tensor, condition: Condition | None = None) -> EncoderOutput:
        return EncoderOutput(self.encoder(images))  # (B, latent_dim)


__all__ = ["AffineCoupling", "GLFConfig", "GenerativeLatentFlow", "LatentFlow"]
