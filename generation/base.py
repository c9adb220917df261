"""The interface every generator backend implements.

A backend is an ``nn.Module`` subclass of :class:`GenerativeModel` with a dataclass config. Generation is
always two steps, ``sample_latents`` (noise + condition -> code) then ``decode`` (code -> image), so that a
service can draw each job's latents with its own seeded generator and decode many jobs in one batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, Sequence, get_args

import torch
from torch import Tensor, nn

from generation.layers import ClassGaussianPrior, LatentFlow
from priorforge_spec.conditions import CONDITION_KINDS, ConditionError, ConditionKind  # noqa: F401

# how a CVAE-style backend (vae, pga) draws the code of a class: see ConditionalDecoderMixin
ClassPriorKind = Literal["gaussian", "flow", "standard"]
CLASS_PRIORS: tuple[str, ...] = get_args(ClassPriorKind)


@dataclass(frozen=True)
class Condition:
    """What a caller asks for.

    Args:
        kind: ``none``, ``class`` (supervised label), ``cluster`` (unsupervised cluster id) or ``text``.
        index: class or cluster index, for ``class`` and ``cluster``.
        embedding: the model's condition vector for ``text`` (already projected, shape ``(text_dim,)``).
        prompt: the prompt the embedding came from, kept for metadata.
    """

    kind: ConditionKind = "none"
    index: int | None = None
    embedding: Tensor | None = None
    prompt: str | None = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"condition": self.kind}
        if self.index is not None:
            out["index"] = self.index
        if self.prompt is not None:
            out["prompt"] = self.prompt
        return out


@dataclass
class ModelConfig:
    """Fields every backend config has.

    Args:
        image_shape: ``(channels, height, width)`` of the images; square, 28 or 4 * 2**k pixels.
        condition: the condition the model is trained for.
        num_classes: number of classes (``class``) or clusters (``cluster``); ignored otherwise.
        text_dim: size of the text condition vector (``text``).
        text_encoder: name of the sentence encoder whose embeddings are projected to ``text_dim`` (``text``).
        text_encoder_dim: size of that encoder's embeddings.
    """

    image_shape: tuple[int, int, int] = (1, 28, 28)
    condition: ConditionKind = "none"
    num_classes: int = 10
    text_dim: int = 200
    text_encoder: str = "all-MiniLM-L6-v2"
    text_encoder_dim: int = 384

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown config field(s) {unknown}; valid: {sorted(names)}")
        values = dict(data)
        if "image_shape" in values:
            values["image_shape"] = tuple(values["image_shape"])
        return cls(**values)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @property
    def condition_dim(self) -> int:
        """Width of the condition vector fed to the networks (0 for ``none``)."""
        if self.condition in ("class", "cluster"):
            return self.num_classes
        if self.condition == "text":
            return self.text_dim
        return 0


@dataclass
class EncoderOutput:
    """What ``encode`` returns: the code, plus the posterior's log-variance for stochastic encoders."""

    latents: Tensor  # (B, latent_dim)
    logvar: Tensor | None = None


class GenerativeModel(nn.Module):
    """Base class of every backend.

    Subclasses set ``backend`` (registry name), ``config_class`` and ``supported_conditions`` and
    implement ``sample_latents``, ``decode`` and (for backends with an encoder) ``encode``.
    Images are tensors in [-1, 1], shape ``(B, C, H, W)``.
    """

    backend: ClassVar[str] = ""
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    supported_conditions: ClassVar[tuple[str, ...]] = ("none",)
    #: a class default; an export without its encoder sets it to False on the instance (:meth:`drop_modules`)
    has_encoder: bool = True
    #: submodules that only training (or encoding) uses; an inference-only export drops them
    #: (:mod:`generation.export`), and the backend's ``sample_latents`` + ``decode`` must not touch them
    training_only_modules: ClassVar[tuple[str, ...]] = ("encoder",)
    config: ModelConfig
    # buffers of ``text`` models (registered in __init__; absent otherwise)
    text_projection_mean: Tensor
    text_projection_matrix: Tensor

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.condition not in self.supported_conditions:
            raise ConditionError(
                f"backend {self.backend!r} does not support condition {config.condition!r}; "
                f"supported: {', '.join(self.supported_conditions)}"
            )
        self.config = config
        if config.condition == "text":
            # the fixed projection sentence embedding -> condition vector (PCA fitted on the training
            # captions); buffers, so it is saved with the weights and sampling reproduces training exactly
            self.register_buffer("text_projection_mean", torch.zeros(config.text_encoder_dim))
            self.register_buffer("text_projection_matrix", torch.zeros(config.text_dim, config.text_encoder_dim))

    def project_text(self, sentence_embeddings: Tensor) -> Tensor:
        """Sentence-encoder embeddings ``(B, text_encoder_dim)`` -> condition vectors ``(B, text_dim)``."""
        if self.config.condition != "text":
            raise ConditionError(f"this model is trained with condition {self.config.condition!r}, not text")
        centred = sentence_embeddings.to(self.text_projection_mean) - self.text_projection_mean
        return centred @ self.text_projection_matrix.T

    # -- the uniform API -------------------------------------------------------------------------
    def sample_latents(self, n: int, condition: Condition, generator: torch.Generator) -> Tensor:
        """Draw ``n`` codes for ``condition``; all randomness comes from ``generator`` (a CPU generator)."""
        raise NotImplementedError

    def decode(self, latents: Tensor, condition: Condition | None = None) -> Tensor:
        """Codes ``(B, latent_dim)`` -> images ``(B, C, H, W)`` in [-1, 1]."""
        raise NotImplementedError

    def sample_latents_per_seed(self, seeds: Sequence[int], condition: Condition, pass_size: int) -> Tensor:
        """Codes ``(len(seeds), latent_dim)``, code *i* drawn from a CPU generator seeded ``seeds[i]``, so that a
        code does not depend on the other seeds. A backend may compute them in passes of exactly ``pass_size``
        rows (its networks then see the same batch size whatever the number of seeds); this default draws
        each code on its own."""
        return torch.cat([self.sample_latents(1, condition, torch.Generator().manual_seed(int(seed)))
                          for seed in seeds])

    def encode(self, images: Tensor, condition: Condition | None = None) -> EncoderOutput:
        raise NotImplementedError(f"backend {self.backend!r} has no encoder")

    @torch.no_grad()
    def sample(self, n: int, condition: Condition | None = None, generator: torch.Generator | None = None) -> Tensor:
        """``n`` images for ``condition`` (default: the unconditional/none request)."""
        condition = condition or Condition()
        generator = generator or torch.Generator().manual_seed(0)
        latents = self.sample_latents(n, condition, generator)
        return self.decode(latents.to(self.device), condition)

    # -- inference-only models (exports) -----------------------------------------------------------
    @property
    def inference_only(self) -> bool:
        """True for a model loaded from an inference-only export (some training-only parts are absent)."""
        return bool(getattr(self, "dropped_modules", ()))

    def drop_modules(self, names: list[str] | tuple[str, ...]) -> None:
        """Remove training-only submodules ``names`` (an export's); the model can still sample."""
        unknown = sorted(set(names) - set(self.training_only_modules))
        if unknown:
            raise ValueError(f"{self.backend}: {unknown} are not training-only modules; "
                             f"droppable: {', '.join(self.training_only_modules)}")
        for name in names:
            delattr(self, name)
        self.dropped_modules = tuple(names)
        if "encoder" in names:
            self.has_encoder = False  # instance attribute: latent operations and the evaluation check it

    # -- helpers for subclasses -----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def check_condition(self, condition: Condition) -> None:
        """Raise :class:`ConditionError` unless ``condition`` fits what this model was trained for."""
        trained = self.config.condition
        if condition.kind != trained:
            # an unconditional request on a cluster model is fine: a cluster is drawn at random
            if not (condition.kind == "none" and trained == "cluster"):
                raise ConditionError(
                    f"this {self.backend} model was trained with condition {trained!r}; "
                    f"got a {condition.kind!r} request"
                )
        if condition.kind in ("class", "cluster"):
            if condition.index is None or not 0 <= condition.index < self.config.num_classes:
                raise ConditionError(
                    f"{condition.kind} index {condition.index} out of range 0..{self.config.num_classes - 1}"
                )
        if condition.kind == "text":
            if condition.embedding is None or condition.embedding.shape[-1] != self.config.text_dim:
                raise ConditionError(f"text condition needs an embedding of size {self.config.text_dim}")

    def condition_vectors(self, n: int, condition: Condition, generator: torch.Generator) -> Tensor:
        """The ``(n, condition_dim)`` vector fed to the networks (one-hot for class/cluster)."""
        self.check_condition(condition)
        kind = self.config.condition
        if kind in ("class", "cluster"):
            if condition.index is None:  # cluster model asked for "none": a random cluster per sample
                index = torch.randint(self.config.num_classes, (n,), generator=generator)
            else:
                index = torch.full((n,), condition.index, dtype=torch.long)
            return nn.functional.one_hot(index, self.config.num_classes).float()
        if kind == "text":
            assert condition.embedding is not None
            return condition.embedding.detach().float().cpu().reshape(1, -1).expand(n, -1).clone()
        return torch.zeros(n, 0)


class ClassPriorConfig(Protocol):
    """What :class:`ConditionalDecoderMixin` reads of its model's config (``VAEConfig``, ``PGAConfig``)."""

    @property
    def image_shape(self) -> tuple[int, int, int]: ...
    @property
    def condition(self) -> ConditionKind: ...
    @property
    def num_classes(self) -> int: ...
    @property
    def class_prior(self) -> ClassPriorKind: ...
    @property
    def condition_dim(self) -> int: ...


class ConditionalDecoderMixin:
    """For backends whose decoder (and encoder) take the condition vector (CVAE-style: ``pga``, ``vae``).

    The label alone does not make such a model honour it: the code of a training image already says which
    class it is, so the decoder may learn to ignore the label, and N(0, I) codes then decode to any class
    (13% label accuracy for the VAE, 24% for LPGA). So a ``class`` model also has a class prior
    over codes, chosen by the config field ``class_prior`` (measured in docs/results.md):

    - ``gaussian`` (default): one full-covariance Gaussian per class fitted to the codes of training images
      after training (:class:`generation.layers.ClassGaussianPrior`, ex-post density estimation);
    - ``flow``: a conditional RealNVP flow trained on the stop-gradient codes during training, as GLF's;
    - ``standard``: N(0, I) for every class (the CVAE alone, as before).

    The training objective of the paper is unchanged in every case; unconditional models sample N(0, I).
    Subclasses call :meth:`_build_class_prior` in ``__init__`` and draw codes with :meth:`prior_codes`.
    """

    # what the mixin uses of the GenerativeModel it is mixed into (declarations only, nothing at run time)
    backend: ClassVar[str]
    config: ClassPriorConfig
    class_prior: ClassGaussianPrior | None
    prior_flow: LatentFlow | None
    if TYPE_CHECKING:
        @property
        def device(self) -> torch.device: ...
        def check_condition(self, condition: Condition) -> None: ...
        def condition_vectors(self, n: int, condition: Condition, generator: torch.Generator) -> Tensor: ...

    def _build_class_prior(self, latent_dim: int) -> None:
        c = self.config
        kind = c.class_prior if c.condition == "class" else "standard"
        self.class_prior = ClassGaussianPrior(c.num_classes, latent_dim) if kind == "gaussian" else None
        # the flow is GLF's (4 coupling blocks, coupling nets 64 wide for grey images, 256 for colour)
        width = 64 if c.image_shape[0] == 1 else 256
        self.prior_flow = LatentFlow(latent_dim, 4, width, cond_dim=c.num_classes) if kind == "flow" else None

    def prior_codes(self, noise: Tensor, condition: Condition) -> Tensor:
        """The codes ``(n, latent_dim)`` the class prior gives standard normal ``noise`` for ``condition``."""
        if self.config.condition != "class" or condition.index is None:
            return noise
        index = torch.full((noise.shape[0],), condition.index, dtype=torch.long, device=noise.device)
        if self.class_prior is not None:
            return self.class_prior.sample(index, noise)
        if self.prior_flow is not None:
            return self.prior_flow.inverse(noise, nn.functional.one_hot(index, self.config.num_classes).to(noise))
        return noise

    def prior_nll(self, codes: Tensor, cond: Tensor) -> Tensor:
        """``class_prior="flow"``: the flow's NLL per code ``(B,)`` of (stop-gradient) ``codes``."""
        assert self.prior_flow is not None
        return self.prior_flow.nll(codes, cond)

    def _cond(self, cond: Tensor | None, n: int, like: Tensor) -> Tensor | None:
        """Check training-time condition vectors ``(n, condition_dim)``; None for unconditional models."""
        if self.config.condition_dim == 0:
            return None
        if cond is None or cond.shape != (n, self.config.condition_dim):
            got = None if cond is None else tuple(cond.shape)
            raise ConditionError(f"this {self.backend} model is trained with condition {self.config.condition!r}; it "
                                 f"needs condition vectors of shape ({n}, {self.config.condition_dim}), got {got}")
        return cond.to(like)

    def _condition_vector(self, n: int, condition: Condition | None) -> Tensor | None:
        """The decoder's condition vectors for a request; None for an unconditional model."""
        if self.config.condition == "none":
            if condition is not None and condition.kind != "none":
                self.check_condition(condition)  # raises: wrong kind for an unconditional model
            return None
        if condition is None or condition.kind == "none":
            raise ConditionError(f"this {self.backend} model is trained with condition {self.config.condition!r}; "
                                 f"give a class label")
        return self.condition_vectors(n, condition, torch.Generator()).to(self.device)  # (n, num_classes)


def labels_to_condition_vectors(labels: Tensor, config: ModelConfig) -> Tensor:
    """Training-time helper: integer labels ``(B,)`` -> one-hot ``(B, num_classes)``."""
    return nn.functional.one_hot(labels.long(), config.num_classes).float()


def field_names(config_class: type[ModelConfig]) -> list[str]:
    return [f.name for f in dataclasses.fields(config_class)]


__all__ = [
    "CLASS_PRIORS",
    "CONDITION_KINDS",
    "ClassPriorKind",
    "Condition",
    "ConditionError",
    "ConditionKind",
    "ConditionalDecoderMixin",
    "EncoderOutput",
    "GenerativeModel",
    "ModelConfig",
    "labels_to_condition_vectors",
]
