"""Training of the perceptual generative autoencoder (paper Eq. 7 for LPGA, Eq. 11 for VPGA; methods.md
section 3).

Encoder (phi) and decoder (theta) get different terms, as in the paper and its reference code (zj10/PGA):

- both: L_r, the pixel reconstruction of G(E(x)) (Eq. 1);
- encoder only: alpha * L_lr,N (Eq. 2, latent reconstruction h(z) ~ z on prior samples z ~ N(0, I)) and
  beta * L_lr,H (Eq. 3, the same on the data codes, stop-gradient); for LPGA gamma * L_nll(enc) = 0.5 ||E(x)||^2
  (Eq. 5); for VPGA vkld * KL(q(z|x) || N(0, I));
- decoder only: for LPGA gamma * L_nll(dec) = (H/2) log(||h(z + d) - h(z)||^2 / ||d||^2), z = stop_gradient(E(x)),
  d uniform on the sphere of radius 1e-2 * sqrt(H) (Eq. 6, a finite-difference estimate of log|det dh/dz|);
- VPGA's latent likelihood vrec * ||h(mu) - h(mu + sigma * eps)||^2 (Eq. 10, ẑ = h(mu) = E(G(E(x))) is the code
  of the reconstruction, h(mu + sigma * eps) its mean under p(ẑ | z)) trains the decoder and, through the
  reparameterisation noise sigma * eps, the encoder's variance; E's weights get no gradient through h there.

"Only encoder" is exact: the decoder output fed to E is detached for the encoder-only terms, and the
decoder-only terms are differentiated w.r.t. the decoder's parameters alone (``torch.autograd.grad``).

Normalisation (the reference code's, so that its weights apply unchanged): every term is the methods.md
quantity per dimension - squared errors are mean squared errors over pixels (L_r) or code dims (L_lr, vrec),
the NLL terms are divided by H, the KL is averaged over code dims. VPGA's vrec is measured in units of the
per-dim RMS of the batch's codes (stop-gradient), the reference's choice of the scale sigma of p(ẑ | z).

Warm-up: the latent terms (alpha, beta, gamma; VPGA's vrec and vkld) are off for the first steps, which
trains a plain autoencoder first: ``warmup_steps`` steps (reference 3,000, of a run of tens of thousands), or
``warmup_fraction`` of the planned run when that is fewer (``Trainer.planned_steps``: a run of a few hundred
steps, or one a CPU budget cuts short, still gets its latent terms). Under a CPU budget the plan is made from
the cheap warm-up steps, so the warm-up is about ``warmup_fraction`` of the budget's CPU time (about twice that
share of the steps, since a step with the latent terms costs about 2.5 warm-up steps).

Class models: the class prior over codes (``ClassPriorTraining``): by default a Gaussian per class fitted after
the loop to the codes E(x, c) of training images.

Optimiser: one optimiser over E and G. The reference's SGD with momentum 0.9 (lr 0.1) is ``optimizer="sgd"``;
the default is Adam (lr 1e-3), which reaches a usable autoencoder within the few hundred steps a CPU affords
(see the ``optimizer`` hyper-parameter).
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from generation.pga import PerceptualGenerativeAE
from training.trainer import ClassPriorTraining, Trainer
from training.vae import gaussian_kl

LPGA_ONLY = ("gamma", "radius_scale")
VPGA_ONLY = ("vrec", "vkld")
OPTIMIZERS = ("sgd", "adam")
DEFAULT_LRS = {"sgd": 0.1, "adam": 1e-3}


def sphere_directions(noise: Tensor, radius: float) -> Tensor:
    """Gaussian ``noise`` ``(B, H)`` -> directions uniform on the sphere of ``radius`` (normalised Gaussians)."""
    return noise / noise.norm(dim=1, keepdim=True).clamp_min(1e-12) * radius


def finite_difference_log_det(h: Callable[[Tensor], Tensor], z: Tensor, d: Tensor) -> Tensor:
    """Paper Eq. 6 per code: ``(H/2) log(||h(z + d) - h(z)||^2 / ||d||^2)`` ``(B,)``.

    For small ``d`` uniform on a sphere its expectation is an upper bound on log|det dh/dz| (Jensen), tight when
    the Jacobian is a scaled orthogonal matrix. ``h`` sees ``z`` and ``z + d`` in one batch, so batch-norm
    layers normalise both halves alike and the difference is due to ``d`` alone.
    """
    dim = z.shape[1]
    both = h(torch.cat([z, z + d]))  # (2B, H)
    h0, h1 = both.chunk(2)
    ratio = (h1 - h0).pow(2).sum(1) / d.pow(2).sum(1)  # (B,)
    return 0.5 * dim * torch.log(ratio.clamp_min(1e-30))


class PGATrainer(ClassPriorTraining, Trainer):
    """LPGA / VPGA, one optimiser step over E and G per batch.

    Hyper-parameters:
        warmup_steps: steps before the latent terms switch on (reference 3,000).
        warmup_fraction: at most this share of the planned run is warm-up (0: the latent terms from the start).
        alpha: weight of the latent reconstruction on prior samples (Eq. 2). None: the reference's 6e-2 for
            1-channel images, 3e-2 for colour (LPGA CIFAR-10).
        beta: weight of the latent reconstruction on data codes (Eq. 3); 0 (the reference default) skips it.
        gamma: LPGA: weight of the two NLL terms (Eq. 5 and 6).
        radius_scale: LPGA: the finite-difference radius is ``radius_scale * sqrt(latent_dim)``.
        vrec: VPGA: weight of the latent likelihood term (Eq. 10; gamma / (2 sigma^2) in the paper's terms).
        vkld: VPGA: weight of the KL term (Eq. 10).
        optimizer: ``adam`` (default) or ``sgd`` (momentum, the reference); the default lr is 1e-3 resp. 0.1.
            Adam is the default because SGD(0.1, momentum 0.9) leaves the batch-normalised networks at the
            mean image for hundreds of steps (pixel MSE 0.40 after 300 MNIST steps, vs 0.15 after 80 with Adam).
        momentum: SGD momentum.
        prior_codes: class models, ``class_prior="gaussian"``: training images encoded to fit the class prior.
        prior_lr: class models, ``class_prior="flow"``: learning rate of the flow.
    """

    backend = "pga"
    default_lr = DEFAULT_LRS["adam"]
    hparam_defaults: ClassVar[dict[str, Any]] = {
        "warmup_steps": 3000,
        "warmup_fraction": 0.1,
        "alpha": None,
        "beta": 0.0,
        "gamma": 1.5e-2,
        "radius_scale": 1e-2,
        "vrec": 1e-2,
        "vkld": 2e-2,
        "optimizer": "adam",
        "momentum": 0.9,
        "prior_codes": 10000,
        "prior_lr": 1e-3,
    }
    model: PerceptualGenerativeAE

    def __init__(self, model: PerceptualGenerativeAE, config, hparams: dict[str, Any] | None = None):
        variant = model.config.variant
        wrong = LPGA_ONLY if variant == "vpga" else VPGA_ONLY
        misplaced = sorted(set(hparams or {}) & set(wrong))
        if misplaced:
            raise ValueError(f"pga: hyper-parameter(s) {misplaced} do not apply to variant {variant!r} "
                             f"(lpga: {', '.join(LPGA_ONLY)}; vpga: {', '.join(VPGA_ONLY)})")
        super().__init__(model, config, hparams)
        self._latent_on = False

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        h = self.hparams
        self._check_hparams()
        if self.config.lr is None:
            self.lr = DEFAULT_LRS[h["optimizer"]]
        params = [*self.model.encoder.parameters(), *self.model.decoder.parameters()]
        if h["optimizer"] == "adam":
            return {"pga": torch.optim.Adam(params, lr=self.lr), **self.prior_optimizers()}
        return {"pga": torch.optim.SGD(params, lr=self.lr, momentum=float(h["momentum"])), **self.prior_optimizers()}

    def _check_hparams(self) -> None:
        h = self.hparams
        if h["optimizer"] not in OPTIMIZERS:
            raise ValueError(f"pga: hparam optimizer must be one of {', '.join(OPTIMIZERS)}, got {h['optimizer']!r}")
        if not isinstance(h["warmup_steps"], int) or h["warmup_steps"] < 0:
            raise ValueError(f"pga: hparam warmup_steps must be a non-negative integer, got {h['warmup_steps']!r}")
        if h["alpha"] is None:
            h["alpha"] = 6e-2 if self.model.config.image_shape[0] == 1 else 3e-2
        for name in ("alpha", "beta", "gamma", "vrec", "vkld", "momentum"):
            if not isinstance(h[name], int | float) or h[name] < 0:
                raise ValueError(f"pga: hparam {name} must be a non-negative number, got {h[name]!r}")
        if not isinstance(h["radius_scale"], int | float) or h["radius_scale"] <= 0:
            raise ValueError(f"pga: hparam radius_scale must be positive, got {h['radius_scale']!r}")
        if not isinstance(h["warmup_fraction"], int | float) or not 0 <= h["warmup_fraction"] <= 1:
            raise ValueError(f"pga: hparam warmup_fraction must be in [0, 1], got {h['warmup_fraction']!r}")
        if not isinstance(h["prior_codes"], int) or h["prior_codes"] < 2:
            raise ValueError(f"pga: hparam prior_codes must be an integer >= 2, got {h['prior_codes']!r}")
        if not isinstance(h["prior_lr"], int | float) or h["prior_lr"] <= 0:
            raise ValueError(f"pga: hparam prior_lr must be a positive number, got {h['prior_lr']!r}")

    def warmup(self) -> int:
        """Warm-up steps: ``warmup_steps``, or ``warmup_fraction`` of the planned run when that is fewer."""
        steps = int(self.hparams["warmup_steps"])
        planned = self.planned_steps()
        if planned is None:  # train_step driven by hand: no run length
            return steps
        return min(steps, math.ceil(float(self.hparams["warmup_fraction"]) * planned))

    def latent_terms_active(self) -> bool:
        """Whether the step about to run (``self.step``, 0-based) uses the latent terms. Under a CPU budget, once
        on they stay on: the plan shrinks after the switch, since a step with the latent terms costs more."""
        on = self.step >= self.warmup()
        if self.config.max_cpu_seconds:
            on = self._latent_on = on or self._latent_on
        return on

    # -- loss terms -----------------------------------------------------------------------------------
    def _latent_reconstruction(self, z: Tensor, cond: Tensor | None) -> Tensor:
        """Eq. 2/3: ``||E(stop_gradient(G(z))) - z||^2`` per code dim; gradient to the encoder only."""
        m = self.model
        with self.autocast():  # mixed precision when amp is on
            z_rec, _ = m.encode_params(m.generate(z, cond).detach(), cond)  # (B, H)
            return F.mse_loss(z_rec, z)

    def _lpga_terms(self, mu: Tensor, cond: Tensor | None) -> tuple[dict[str, Tensor], Tensor]:
        """LPGA's NLL terms: (encoder-side terms, the decoder-only term). fp32 whatever ``amp`` (called outside
        autocast): the finite difference h(z + d) - h(z) is about 1e-2 of h, so bf16 rounding (2^-8 of h) would
        be a sizeable share of it."""
        m, dim = self.model, mu.shape[1]
        nll_enc = 0.5 * mu.pow(2).sum(1).mean() / dim  # Eq. 5 per code dim
        d = sphere_directions(self.randn(*mu.shape), self.hparams["radius_scale"] * dim**0.5)  # (B, H)
        cond2 = None if cond is None else torch.cat([cond, cond])
        nll_dec = finite_difference_log_det(lambda z: m.h(z, cond2), mu.detach(), d).mean() / dim  # Eq. 6
        return {"nll_enc": nll_enc}, nll_dec

    def _vpga_terms(self, mu: Tensor, logvar: Tensor,
                    cond: Tensor | None) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor]:
        """VPGA's terms: (encoder-side terms, vrec, the noise leaf, the noise tensor in the encoder graph). fp32
        whatever ``amp`` (called outside autocast): vrec compares h at two codes sigma apart."""
        m = self.model
        kl = gaussian_kl(mu, logvar).mean() / mu.shape[1]  # per code dim
        noise = torch.exp(0.5 * logvar) * self.randn(*mu.shape)  # sigma * eps, (B, H)
        noise_leaf = noise.detach().requires_grad_(True)
        z = mu.detach()
        cond2 = None if cond is None else torch.cat([cond, cond])
        h_mu, h_z = m.h(torch.cat([z, z + noise_leaf]), cond2).chunk(2)  # (B, H) each
        scale = z.pow(2).mean(0).sqrt().clamp_min(1e-6)  # per-dim RMS of the codes, (H,)
        vrec = F.mse_loss(h_mu / scale, h_z / scale)  # -log p(ẑ | z) up to constants, Eq. 10
        return {"vkld": kl}, vrec, noise_leaf, noise

    # -- the step -------------------------------------------------------------------------------------
    def train_step(self, images: Tensor, cond: Tensor | None, labels: Tensor) -> dict[str, float]:
        m, h = self.model, self.hparams
        vpga = m.config.variant == "vpga"
        active = self.latent_terms_active()
        with self.autocast():  # mixed precision when amp is on; the latent-likelihood terms below stay fp32
            mu, logvar = m.encode_params(images, cond)  # (B, H) each (logvar None for LPGA)
            rec = F.mse_loss(m.generate(mu, cond), images)  # Eq. 1, both networks
        mu, logvar = mu.float(), None if logvar is None else logvar.float()
        shared = rec
        logged: dict[str, Tensor] = {"rec": rec}
        dec_only: Tensor | None = None
        noise_leaf = noise = None
        if active:
            zn_rec = self._latent_reconstruction(self.randn(*mu.shape), cond)
            shared = shared + h["alpha"] * zn_rec
            logged["zn_rec"] = zn_rec
            if h["beta"] > 0:
                zh_rec = self._latent_reconstruction(mu.detach(), cond)
                shared = shared + h["beta"] * zh_rec
                logged["zh_rec"] = zh_rec
            if vpga:
                assert logvar is not None
                enc_terms, vrec, noise_leaf, noise = self._vpga_terms(mu, logvar, cond)
                shared = shared + h["vkld"] * enc_terms["vkld"]
                dec_only = h["vrec"] * vrec
                logged |= enc_terms | {"vrec": vrec}
            else:
                enc_terms, nll_dec = self._lpga_terms(mu, cond)
                shared = shared + h["gamma"] * enc_terms["nll_enc"]
                dec_only = h["gamma"] * nll_dec
                logged |= enc_terms | {"nll_dec": nll_dec}
        self._backward(shared, dec_only, noise_leaf, noise)
        self.step_optimizers("pga")
        out = {k: v.item() for k, v in logged.items()}
        out["latent_on"] = float(active)
        return out | self.prior_flow_step(mu, cond)  # class_prior="flow": the flow on the stop-gradient codes

    def _backward(self, shared: Tensor, dec_only: Tensor | None, noise_leaf: Tensor | None,
                  noise: Tensor | None) -> None:
        """Gradients: ``shared`` to whatever it reaches; ``dec_only`` to the decoder's parameters only (plus,
        for VPGA, to the encoder's variance through the reparameterisation noise). Both losses are multiplied by
        the fp16 loss scale (:meth:`scale`), so every gradient below carries it once and the GradScaler's
        unscale in :meth:`step_optimizers` is exact."""
        opt = self.optimizers["pga"]
        opt.zero_grad(set_to_none=True)
        shared = self.scale(shared)
        dec_only = None if dec_only is None else self.scale(dec_only)
        dec_params = [p for p in self.model.decoder.parameters() if p.requires_grad]
        dec_grads: list[Tensor | None] = []
        if dec_only is not None:
            inputs = dec_params + ([noise_leaf] if noise_leaf is not None else [])
            grads = torch.autograd.grad(dec_only, inputs, allow_unused=True)
            dec_grads = list(grads[:len(dec_params)])
            if noise_leaf is not None and noise is not None and grads[-1] is not None:
                shared = shared + (noise * grads[-1]).sum()  # chain rule into sigma(x) = exp(0.5 logvar)
        shared.backward()
        for p, g in zip(dec_params, dec_grads):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
