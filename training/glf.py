"""Training of the generative latent flow: one stage, reconstruction + flow NLL of the stopped-gradient codes
(paper Eq. 2; methods.md section 4).

Reference optimisers: Adam for the autoencoder (lr 1e-3); Adam betas (0.8, 0.9) with weight decay 2e-5 for
the flow; both learning rates halved every 50 epochs. The reconstruction is the pixel MSE (the paper's
perceptual-loss variant needs VGG weights, not available offline).

The halvings keep their place in the run when a CPU budget cuts it short: the steps the budget buys
(``Trainer.planned_steps``) are stretched over the nominal epochs, so ``--epochs 100`` with a budget that buys
4 epochs halves the learning rates after 2 of them, as the full run would after 50 of its 100.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from generation.glf import GenerativeLatentFlow
from training.trainer import Trainer


class GLFTrainer(Trainer):
    """Both parts step on every batch.

    Hyper-parameters:
        nll_weight: weight of the flow NLL (per code dim) in the loss; only matters when ``regularized``.
        flow_lr: learning rate of the flow (None: the same as the autoencoder's).
        flow_betas: Adam betas of the flow.
        flow_weight_decay: weight decay of the flow's Adam.
        lr_halve_epochs: halve both learning rates every this many epochs (0: never).
        aux_class_weight: text models with ``aux_classes``: weight of the codes' class head's cross-entropy in
            the autoencoder's loss.
        text_noise: text models: standard deviation of Gaussian noise added to the condition vector the flow
            reads in training (StackGAN's conditioning augmentation, as the code-generator AAE's): without it the
            flow fits each training sentence's exact embedding, and a wording it never saw lands between them.
            0 = off (the paper's flow).
    """

    backend = "glf"
    default_lr = 1e-3
    hparam_defaults: ClassVar[dict[str, Any]] = {
        "nll_weight": 1.0,
        "flow_lr": None,
        "flow_betas": [0.8, 0.9],
        "flow_weight_decay": 2e-5,
        "lr_halve_epochs": 50,
        "aux_class_weight": 1.0,
        "text_noise": 0.0,
    }
    model: GenerativeLatentFlow

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        m, h = self.model, self.hparams
        betas = tuple(float(b) for b in h["flow_betas"])
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"glf: hparam flow_betas must be two numbers in [0, 1), got {h['flow_betas']!r}")
        if float(h["text_noise"]) < 0:
            raise ValueError(f"glf: hparam text_noise must be 0 or more, got {h['text_noise']!r}")
        self._base_lrs = {"autoencoder": self.lr, "flow": float(h["flow_lr"] or self.lr)}
        return {
            "autoencoder": torch.optim.Adam([*m.encoder.parameters(), *m.decoder.parameters(),
                                             *(m.class_head.parameters() if m.class_head is not None else [])],
                                            lr=self.lr),
            "flow": torch.optim.Adam(m.flow.parameters(), lr=self._base_lrs["flow"], betas=betas,
                                     weight_decay=float(h["flow_weight_decay"])),
        }

    def prepare(self, train_data) -> None:
        k = self.model.config.aux_classes
        if k and not bool(((train_data.labels >= 0) & (train_data.labels < k)).all()):
            raise ValueError(f"aux_classes={k} needs a class label in 0..{k - 1} on every training image; "
                             f"data set {train_data.name!r} has other labels (set aux_classes=0)")

    def schedule_epoch(self) -> int:
        """Epochs into the run on the nominal run's scale: the epochs done, or, when a CPU budget plans fewer
        steps than the nominal run, the plan's progress times the nominal run's epochs."""
        planned, nominal = self.planned_steps(), self._nominal
        if planned is None or nominal is None or planned >= nominal:
            return self.epoch
        return int(self.step * nominal / planned) // self._per_epoch

    def _apply_lr_schedule(self) -> None:
        halve = int(self.hparams["lr_halve_epochs"] or 0)
        factor = 0.5 ** (self.schedule_epoch() // halve) if halve > 0 else 1.0
        for name, opt in self.optimizers.items():
            for group in opt.param_groups:
                group["lr"] = self._base_lrs[name] * factor

    def train_step(self, images: Tensor, cond: Tensor | None, labels: Tensor) -> dict[str, float]:
        m = self.model
        self._apply_lr_schedule()
        with self.autocast():  # the conv autoencoder in mixed precision when amp is on
            z = m.encoder(images).float()  # (B, latent_dim)
            recon = m.decoder(z)  # (B, C, H, W)
            rec_loss = F.mse_loss(recon, images)
        # the flow's NLL (log-determinants, Gaussian log-density) stays fp32: a small MLP, precision-sensitive
        flow_in = z if m.config.regularized else z.detach()  # stop_gradient(E(x)) unless regularized
        latent_dim = m.config.latent_dim
        assert latent_dim is not None  # GLFConfig.__post_init__ sets it
        if cond is not None and m.config.condition == "text" and self.hparams["text_noise"]:
            cond = cond + float(self.hparams["text_noise"]) * self.randn(*cond.shape)
        nll = m.prior_nll(flow_in, cond).mean() / latent_dim  # per code dim
        loss = rec_loss + self.hparams["nll_weight"] * nll
        out = {}
        if m.class_head is not None:  # the codes learn the images' classes (aux_classes)
            class_loss = F.cross_entropy(m.class_head(z), labels)
            loss = loss + self.hparams["aux_class_weight"] * class_loss
            out["aux_cls"] = class_loss.item()
        self.backward_step(loss, *self.optimizers)
        return {"rec": rec_loss.item(), "nll": nll.item(), "z_std": z.detach().std().item(), **out}
