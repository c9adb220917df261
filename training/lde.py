"""Training of AE/IAE + LDE in two stages within one ``priorforge train`` run (methods.md section 2).

Stage 1 (the shared loop): the autoencoder learns the pixel MSE (the paper's optional VGG perceptual term
needs weights that are not available offline). IAE: only the first k code dims reach the decoder, the rest
are masked to 0; k grows linearly from ``iae_start_dims`` to D over the first ``iae_warmup_fraction`` of
stage 1 (paper Section 3.4).

Stage 2 (``finish``): the autoencoder is frozen; the codes of (up to ``lde_max_codes``) training images are
encoded once with the eval-mode encoder, ``lde_holdout`` of them are held out, and the LDE is fitted by
maximum likelihood (Eq. 4) on the rest with batches of ``lde_batch_size``. The held-out codes give
``lde_test_nll`` (mean NLL per code dim, in nats) in ``metrics.json``. Stage 2 happens in ``finish`` rather
than in ``train_step`` because encoding once is cheaper than re-encoding every batch and because the held-out
codes must never reach the LDE.

The step budget (``--max-steps``, or epochs x batches per epoch) is split: ``lde_fraction`` of it goes to
stage 2, the rest to stage 1, and each budget step of stage 2 is ``lde_steps_per_step`` LDE updates (an
update on precomputed codes costs a small fraction of an autoencoder step); or, with ``lde_steps`` set,
stage 1 gets the whole budget and stage 2 exactly ``lde_steps`` updates. A CPU budget
(``--max-cpu-minutes``) is split the same way, ``1 - lde_fraction`` of it for stage 1 and the rest for
stage 2 (with or without ``lde_steps``); the IAE's code growth is planned over the autoencoder steps that
share buys (``Trainer.planned_steps``), and ``metrics.json`` reports the steps that ran (``ae_steps``,
``lde_steps``) next to the nominal ones (``nominal_ae_steps``, ``nominal_lde_steps``). Reference optimisers: AE Adam 1e-3
(beta1 0.5); LDE Adam 2e-4 (beta1 0.5), batch 128. The LDE's default learning rate here is 1e-3: at the
few hundred updates a CPU run affords, 2e-4 leaves the conditional LDE visibly under-fitted (pass
``--hparam lde_lr=2e-4`` for long runs).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from generation.lde import LatentDensityAE
from training.data import ImageData
from training.trainer import HISTORY_FILE, ProgressCallback, Trainer, TrainingCancelled, TrainingEvent


class LDETrainer(Trainer):
    """Stage 1 in the shared loop, stage 2 in ``finish``.

    Hyper-parameters:
        lde_fraction: share of the step budget given to the LDE stage (0 <= f < 1).
        lde_steps_per_step: LDE updates per budget step of the LDE stage.
        lde_steps: LDE updates; when set, overrides ``lde_fraction`` and the AE gets the whole budget.
        lde_lr: learning rate of the LDE.
        lde_batch_size: codes per LDE step.
        lde_max_codes: at most this many training images are encoded for stage 2.
        lde_holdout: share of those codes held out to measure ``lde_test_nll``.
        iae_warmup_fraction: share of stage 1 over which the IAE's active dims grow to D.
        iae_start_dims: active dims at the start of an IAE's training.
        beta1: Adam beta1 of both optimisers.
    """

    backend = "lde"
    default_lr = 1e-3
    hparam_defaults: ClassVar[dict[str, Any]] = {
        "lde_fraction": 0.25,
        "lde_steps_per_step": 8,
        "lde_steps": None,
        "lde_lr": 1e-3,
        "lde_batch_size": 128,
        "lde_max_codes": 20000,
        "lde_holdout": 0.1,
        "iae_warmup_fraction": 0.5,
        "iae_start_dims": 1,
        "beta1": 0.5,
    }
    model: LatentDensityAE

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        self._check_hparams()
        m, h = self.model, self.hparams
        betas = (float(h["beta1"]), 0.999)
        self._ae_steps: int | None = None  # nominal: from the step budget
        self._lde_steps = 0
        self._ae_ran: int | None = None  # the autoencoder steps that ran (set when stage 2 starts)
        return {
            "autoencoder": torch.optim.Adam([*m.encoder.parameters(), *m.decoder.parameters()], lr=self.lr,
                                            betas=betas),
            "lde": torch.optim.Adam(m.lde.parameters(), lr=float(h["lde_lr"]), betas=betas),
        }

    def _check_hparams(self) -> None:
        h = self.hparams
        if not 0 <= float(h["lde_fraction"]) < 1:
            raise ValueError(f"lde: hparam lde_fraction must be in [0, 1), got {h['lde_fraction']!r}")
        if h["lde_steps"] is not None and int(h["lde_steps"]) < 0:
            raise ValueError(f"lde: hparam lde_steps must be >= 0, got {h['lde_steps']!r}")
        if not 0 <= float(h["lde_holdout"]) < 1:
            raise ValueError(f"lde: hparam lde_holdout must be in [0, 1), got {h['lde_holdout']!r}")
        if not 0 < float(h["iae_warmup_fraction"]) <= 1:
            raise ValueError(f"lde: hparam iae_warmup_fraction must be in (0, 1], got {h['iae_warmup_fraction']!r}")
        for name in ("lde_batch_size", "lde_max_codes", "iae_start_dims", "lde_steps_per_step"):
            if int(h[name]) < 1:
                raise ValueError(f"lde: hparam {name} must be at least 1, got {h[name]!r}")

    # -- the step budget ---------------------------------------------------------------------------
    def split_budget(self, budget: int) -> tuple[int, int]:
        """``(AE steps, LDE updates)`` for a loop budget of ``budget`` steps."""
        if self.hparams["lde_steps"] is not None:
            return budget, int(self.hparams["lde_steps"])
        lde = int(round(budget * float(self.hparams["lde_fraction"])))
        ae = max(1, budget - lde)
        return ae, (budget - ae) * int(self.hparams["lde_steps_per_step"])

    def total_steps(self, train_data: ImageData) -> int:
        """The shared loop runs stage 1 only (and not again when a run resumed in stage 2 had a shorter one)."""
        if self._ae_ran is not None:
            return self._ae_ran
        return self.split_budget(super().total_steps(train_data))[0]

    def fit(self, train_data: ImageData, out_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
        self._out = Path(out_dir)
        self._fit_start = time.perf_counter()
        return super().fit(train_data, out_dir, **kwargs)

    def prepare(self, train_data: ImageData) -> None:
        self._ae_steps, self._lde_steps = self.split_budget(super().total_steps(train_data))

    # -- stage 1 -----------------------------------------------------------------------------------
    def active_dims(self) -> int:
        """How many leading code dims reach the decoder at the current step (all of them for ``ae``)."""
        d = self.model.config.latent_dim
        assert d is not None
        if self.model.config.variant == "ae" or self._ae_steps is None:
            return d
        start = min(int(self.hparams["iae_start_dims"]), d)
        planned = self.planned_steps() or self._ae_steps  # the AE steps the CPU budget buys, when fewer
        warmup = max(1.0, float(self.hparams["iae_warmup_fraction"]) * planned)
        return min(d, start + int((d - start) * self.step / warmup))

    def train_step(self, images: Tensor, cond: Tensor | None, labels: Tensor) -> dict[str, float]:
        m = self.model
        k = self.active_dims()
        with self.autocast():  # mixed precision when amp is on
            z = m.encoder(images)  # (B, D)
            if k < z.shape[1]:
                mask = (torch.arange(z.shape[1], device=z.device) < k).to(z.dtype)  # (D,): first k dims on
                z = z * mask
            recon = m.decoder(z)  # (B, C, H, W)
            loss = F.mse_loss(recon, images)
        self.backward_step(loss, "autoencoder")
        return {"rec": loss.item(), "active_dims": float(k)}

    # -- stage 2 -----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_codes(self, data: ImageData, index: Tensor, batch_size: int = 256) -> Tensor:
        """Codes ``(N, D)`` of the images ``index`` from the frozen, eval-mode encoder (on the CPU)."""
        self.model.encoder.eval()
        chunks = [self.model.encoder(data.batch(index[i:i + batch_size]).images.to(self.device)).float().cpu()
                  for i in range(0, len(index), batch_size)]
        return torch.cat(chunks)

    def _cond_for(self, data: ImageData, index: Tensor) -> Tensor | None:
        kind = self.model.config.condition
        if kind == "class":
            return F.one_hot(data.labels[index], self.model.config.num_classes).float().to(self.device)
        if kind == "text":
            return data.text_conditions(index, self.noise).to(self.device)
        return None

    def lde_step(self, codes: Tensor, cond: Tensor | None) -> float:
        """One maximum-likelihood step of the LDE on ``codes`` ``(B, D)``; returns the NLL per dim.

        Always fp32, whatever ``amp``: the mixture log-likelihood (log, exp, logsumexp) is precision-sensitive,
        and CPU autocast would run those ops in bf16."""
        nll = self.model.prior_nll(codes, cond)
        self.backward_step(nll, "lde")
        return nll.item()

    @torch.no_grad()
    def lde_nll(self, data: ImageData, index: Tensor, codes: Tensor, batch_size: int = 1024) -> float:
        """Mean NLL per code dim of ``codes`` (rows ``index`` of ``data``) under the eval-mode LDE."""
        self.model.lde.eval()
        total = 0.0
        for i in range(0, len(index), batch_size):
            chunk = codes[i:i + batch_size].to(self.device)
            total += self.model.prior_nll(chunk, self._cond_for(data, index[i:i + batch_size])).item() * len(chunk)
        return total / max(1, len(index))

    def loop_cpu_budget(self) -> float | None:
        """The autoencoder stage gets ``1 - lde_fraction`` of a CPU budget, the LDE stage the rest (also with
        ``lde_steps`` set: otherwise the autoencoder would spend the whole budget and leave the LDE nothing)."""
        budget = self.config.max_cpu_seconds
        if not budget:
            return budget
        return budget * (1.0 - float(self.hparams["lde_fraction"]))

    def extra_progress(self) -> dict[str, Any]:
        return {} if self._ae_ran is None else {"ae_steps_run": self._ae_ran}

    def restore_progress(self, progress: dict[str, Any]) -> None:
        if "ae_steps_run" in progress:
            self._ae_ran = int(progress["ae_steps_run"])

    def finish(self, train_data: ImageData, callback: ProgressCallback | None) -> dict[str, Any]:
        h, m = self.hparams, self.model
        if self._ae_steps is None:
            self.prepare(train_data)
        assert self._ae_steps is not None
        if self._ae_ran is None:  # (a resumed run saved during or after stage 2 has it from its training state)
            # the loop's steps: fewer than nominal when a CPU budget stopped it (those are not handed to the LDE);
            # a run saved by an earlier version past stage 1 counts its nominal autoencoder steps
            self._ae_ran = min(self.step, self._ae_steps)
        done = self.step - self._ae_ran  # LDE updates already made (a run resumed inside or after stage 2)
        grand_total = self._ae_ran + self._lde_steps
        # stage 2's batch order and captions: seeded from where stage 1 ended, so a resumed stage replays them
        self.noise.manual_seed(self.config.seed * 1_000_003 + self._ae_ran)
        for p in [*m.encoder.parameters(), *m.decoder.parameters()]:
            p.requires_grad_(False)  # the autoencoder is frozen for stage 2
        try:
            rows = torch.randperm(len(train_data), generator=torch.Generator().manual_seed(self.config.seed + 7))
            rows = rows[:int(h["lde_max_codes"])]
            n_hold = int(round(len(rows) * float(h["lde_holdout"])))
            fit_rows, hold_rows = rows[n_hold:], rows[:n_hold]
            if len(fit_rows) == 0:
                raise ValueError("lde: no codes left to fit the LDE; lower hparam lde_holdout")
            fit_codes = self.encode_codes(train_data, fit_rows)
            self._run_lde_stage(train_data, fit_rows, fit_codes, done, grand_total, callback)
            metrics: dict[str, Any] = {
                "ae_steps": self._ae_ran, "lde_steps": self.step - self._ae_ran,  # what ran
                "nominal_ae_steps": self._ae_steps, "nominal_lde_steps": self._lde_steps,
                "lde_train_nll": round(self.lde_nll(train_data, fit_rows, fit_codes), 4),
                "lde_codes": len(fit_rows), "lde_heldout_codes": len(hold_rows),
            }
            if len(hold_rows):
                hold_codes = self.encode_codes(train_data, hold_rows)
                metrics["lde_test_nll"] = round(self.lde_nll(train_data, hold_rows, hold_codes), 4)
        finally:
            for p in [*m.encoder.parameters(), *m.decoder.parameters()]:
                p.requires_grad_(True)
        return metrics

    def _run_lde_stage(self, data: ImageData, rows: Tensor, codes: Tensor, done: int, grand_total: int,
                       callback: ProgressCallback | None) -> None:
        """The LDE updates ``done`` .. ``_lde_steps`` (the first ``done`` draw their batches without training,
        so that a resumed stage goes on exactly as an uninterrupted one), while the CPU budget lasts."""
        batch_size = min(int(self.hparams["lde_batch_size"]), len(rows))
        bar = tqdm(total=max(0, self._lde_steps - done), disable=not self.config.progress_bar,
                   desc=f"{self.backend} (density)", dynamic_ncols=True)
        self.model.lde.train()
        order = torch.randperm(len(rows), generator=self.noise)
        cursor = 0
        budget = self.config.max_cpu_seconds  # the whole run's CPU budget bounds stage 2 too
        for i in range(self._lde_steps):
            if i >= done and budget and self.cpu_seconds() >= budget:
                break
            if cursor + batch_size > len(rows):
                order, cursor = torch.randperm(len(rows), generator=self.noise), 0
            pick = order[cursor:cursor + batch_size]
            cursor += batch_size
            cond = self._cond_for(data, rows[pick])  # (text: draws a caption per code from self.noise)
            if i < done:
                continue
            nll = self.lde_step(codes[pick].to(self.device), cond)
            self.step += 1
            bar.update(1)
            bar.set_postfix({"lde_nll": f"{nll:.3g}"}, refresh=False)
            self._log_lde_step(nll, grand_total, callback)
        bar.close()

    def _log_lde_step(self, nll: float, grand_total: int, callback: ProgressCallback | None) -> None:
        elapsed = time.perf_counter() - getattr(self, "_fit_start", time.perf_counter())
        out = getattr(self, "_out", None)
        if out is not None:
            with open(out / HISTORY_FILE, "a") as f:
                f.write(json.dumps({"step": self.step, "epoch": self.epoch, "elapsed": round(elapsed, 2),
                                    "lde_nll": nll}) + "\n")
        if callback is not None:
            try:
                callback(TrainingEvent(self.step, grand_total, self.epoch, {"lde_nll": nll}, elapsed,
                                       extra={"stage": "lde"}))
            except TrainingCancelled:
                if out is not None:
                    self.save(out, elapsed)
                raise
