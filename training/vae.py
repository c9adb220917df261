"""Training of the residual VAE (methods.md section 5; the STL-10 write-up's Eq. 4-5).

Loss = BCE-with-logits(decoder logits, (x + 1) / 2) + kl_weight * KL(q(z | x) || N(0, I)), with the
reparameterisation z = mu + exp(logvar / 2) * eps (eps from the trainer's seeded noise). Normalisation:
PyTorch's default for the BCE (the mean over pixels, as the write-up's ``binary_cross_entropy_with_logits``)
and the KL averaged over code dims, so that the write-up's 0.01 weighs the KL per image like a beta-VAE with
beta = 0.01 * pixels / latent_dim (about 0.25 at the default sizes: 784 / 32, 3072 / 128, 12288 / 512).

Optimiser: Adam, lr 4e-4 annealed linearly over the run (towards ``final_lr_fraction`` of it at the end); the
run is the one planned (``Trainer.planned_steps``): under a CPU budget, the steps the budget buys.

Class models: the class prior over codes (``ClassPriorTraining``): by default a Gaussian per class fitted after
the loop to the codes (posterior means) of training images.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from generation.vae import ResidualVAE
from training.trainer import ClassPriorTraining, Trainer


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per row ``(B,)`` (Kingma & Welling, appendix B)."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)


def vae_loss(logits: Tensor, images: Tensor, mu: Tensor, logvar: Tensor, kl_weight: float) -> dict[str, Tensor]:
    """``{"rec", "kl", "loss"}``: BCE-with-logits against ``images`` mapped from [-1, 1] to [0, 1] (mean over
    pixels), the KL per code dim, and ``rec + kl_weight * kl`` (the write-up's Eq. 5)."""
    targets = (images + 1) / 2
    rec = F.binary_cross_entropy_with_logits(logits, targets)
    kl = gaussian_kl(mu, logvar).mean() / mu.shape[1]
    return {"rec": rec, "kl": kl, "loss": rec + kl_weight * kl}


class VAETrainer(ClassPriorTraining, Trainer):
    """One Adam step per batch on the negative (weighted) ELBO.

    Hyper-parameters:
        kl_weight: weight of the KL term (the write-up: 0.01).
        lr_anneal: anneal the learning rate linearly over the run (needs the run length: the shared loop's
            plan gives it; ``train_step`` called on its own keeps the lr constant).
        final_lr_fraction: the lr at the end of the run, as a fraction of the initial one.
        prior_codes: class models, ``class_prior="gaussian"``: training images encoded to fit the class prior.
        prior_lr: class models, ``class_prior="flow"``: learning rate of the flow.
    """

    backend = "vae"
    default_lr = 4e-4
    hparam_defaults: ClassVar[dict[str, Any]] = {
        "kl_weight": 0.01,
        "lr_anneal": True,
        "final_lr_fraction": 0.0,
        "prior_codes": 10000,
        "prior_lr": 1e-3,
    }
    model: ResidualVAE

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        h = self.hparams
        if not isinstance(h["kl_weight"], int | float) or h["kl_weight"] < 0:
            raise ValueError(f"vae: hparam kl_weight must be a non-negative number, got {h['kl_weight']!r}")
        if not isinstance(h["final_lr_fraction"], int | float) or not 0 <= h["final_lr_fraction"] <= 1:
            raise ValueError(f"vae: hparam final_lr_fraction must be in [0, 1], got {h['final_lr_fraction']!r}")
        if not isinstance(h["lr_anneal"], bool):
            raise ValueError(f"vae: hparam lr_anneal must be true or false, got {h['lr_anneal']!r}")
        if not isinstance(h["prior_codes"], int) or h["prior_codes"] < 2:
            raise ValueError(f"vae: hparam prior_codes must be an integer >= 2, got {h['prior_codes']!r}")
        if not isinstance(h["prior_lr"], int | float) or h["prior_lr"] <= 0:
            raise ValueError(f"vae: hparam prior_lr must be a positive number, got {h['prior_lr']!r}")
        networks = [*self.model.encoder.parameters(), *self.model.decoder.parameters()]
        return {"vae": torch.optim.Adam(networks, lr=self.lr), **self.prior_optimizers()}

    def current_lr(self) -> float:
        """The lr of the step about to run: linear from ``lr`` at step 0 towards ``final_lr_fraction * lr`` at
        the end of the planned run (reached one step after the last, so that every step moves the weights)."""
        progress = self.run_fraction()
        if not self.hparams["lr_anneal"] or progress is None:
            return self.lr
        return self.lr * (1 - (1 - self.hparams["final_lr_fraction"]) * progress)

    def train_step(self, images: Tensor, cond: Tensor | None, labels: Tensor) -> dict[str, float]:
        m, opt = self.model, self.optimizers["vae"]
        # the networks in mixed precision when amp is on; the reparameterisation and the loss in fp32
        with self.autocast():
            mu, logvar = (t.float() for t in m.posterior(images, cond))  # (B, D) each
        z = mu + torch.exp(0.5 * logvar) * self.randn(*mu.shape)  # reparameterisation
        with self.autocast():
            logits = m.decode_logits(z, cond).float()
        losses = vae_loss(logits, images, mu, logvar, float(self.hparams["kl_weight"]))
        lr = self.current_lr()
        for group in opt.param_groups:
            group["lr"] = lr
        self.backward_step(losses["loss"], "vae")
        prior = self.prior_flow_step(z, cond)  # class_prior="flow": the flow on the stop-gradient codes
        return {k: v.item() for k, v in losses.items()} | {"lr": lr} | prior
