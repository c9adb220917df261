"""The training loop every backend shares: batching, progress bar, periodic samples and checkpoints,
resuming, the final evaluation. A backend's trainer implements ``build_optimizers`` and ``train_step``.

Mixed precision (``TrainConfig.amp``): a backend runs its networks' forward passes inside ``self.autocast()``
and updates through ``self.backward_step(loss, *optimizer_names)``, which scales the loss for fp16 (one
``torch.amp.GradScaler`` shared by all the optimizers, updated after each step) and is exactly
``zero_grad; backward; step`` with amp off. Precision-sensitive terms (log-likelihoods, finite differences)
are computed outside ``self.autocast()``, on ``.float()`` network outputs.

Schedules and the CPU budget. Step-based schedules (IAE code growth, the LDE stage split, PGA's warm-up, the
VAE's lr annealing, GLF's lr halving) are planned over :meth:`Trainer.planned_steps`: the loop's nominal step
count (``epochs`` x batches, or ``max_steps``), or, with ``max_cpu_seconds``, the steps the budget will buy
when that is fewer: the CPU time per step is measured over the last :data:`PLAN_WINDOW` steps and the plan
re-estimated after every step. Without a CPU budget the plan is the nominal count, fixed, so schedules (and a
``--resume``) are exactly reproducible. ``metrics.json`` reports the steps that ran (``steps``) and, under a
budget, the nominal count and the final plan.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from generation.base import Condition, EncoderOutput, GenerativeModel, ModelConfig
from generation.checkpoint import (SAMPLES_FILE, CheckpointError, load_training_state, read_checkpoint_config,
                                   save_checkpoint, save_training_state, write_json_atomic)
from generation.device import resolve_device
from generation.precision import autocast, resolve_amp
from generation.sampling import save_png
from training.data import Batch, ImageData

HISTORY_FILE = "history.jsonl"
PLAN_WINDOW = 50  # steps over which the CPU time per step is measured for the plan
PLAN_SKIP = 2  # the first steps of a process (allocations, caches) are left out of that measurement
CLASS_PRIOR_CPU_SHARE = 0.03  # of a CPU budget, kept back from the loop to encode codes for a class prior
CLASS_PRIOR_CHUNK = 64  # codes encoded per class per round when fitting a class prior


class TrainingCancelled(Exception):
    """Raised by a progress callback to stop training; the loop saves a checkpoint first."""


@dataclass
class TrainConfig:
    """Loop settings shared by all backends.

    Args:
        epochs: passes over the training set (ignored once ``max_steps`` is reached).
        max_steps: stop after this many optimisation steps (None: run all epochs).
        batch_size: images per step.
        lr: learning rate; None uses the backend's default.
        seed: seeds the weights, the batch order and the noise.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        sample_every / checkpoint_every: steps between sample grids / checkpoints (0: only at the end).
        evaluate: run the evaluation at the end and store it in ``metrics.json``.
        eval_samples: generated images used by the evaluation.
        progress_bar: show a tqdm bar with the losses.
        amp: mixed precision of the forward passes: ``off`` (fp32, bit-reproducible), ``bf16`` (CPU or CUDA; no
            loss scaling needed) or ``fp16`` (CUDA only; with a GradScaler whose state is saved for resuming).
            Sampling grids, the final evaluation and the metrics always run in fp32.
        max_cpu_seconds: stop once this process has used this much CPU time (user + system, all threads):
            a budget that means the same on a busy and an idle machine.
    """

    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 64
    lr: float | None = None
    seed: int = 0
    device: str = "auto"
    sample_every: int = 500
    checkpoint_every: int = 1000
    evaluate: bool = True
    eval_samples: int = 2000
    progress_bar: bool = True
    amp: str = "off"
    max_cpu_seconds: float | None = None


@dataclass
class TrainingEvent:
    """What a progress callback receives after each step (and ``kind="sample"`` after each grid)."""

    step: int
    total_steps: int
    epoch: int
    losses: dict[str, float]
    elapsed: float
    kind: str = "step"
    sample_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[TrainingEvent], None]


class Trainer:
    """Base trainer. Subclasses set ``backend`` and ``default_lr`` and implement the two hooks.

    ``hparams`` are backend-specific training hyper-parameters (loss weights, phases...); unknown names
    are refused with the list of valid ones (``hparam_defaults``).
    """

    backend: ClassVar[str] = ""
    default_lr: ClassVar[float] = 2e-4
    hparam_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, model: GenerativeModel, config: TrainConfig, hparams: dict[str, Any] | None = None):
        unknown = sorted(set(hparams or {}) - set(self.hparam_defaults))
        if unknown:
            raise ValueError(f"{self.backend}: unknown hyper-parameter(s) {unknown}; "
                             f"valid: {sorted(self.hparam_defaults)}")
        self.hparams = {**self.hparam_defaults, **(hparams or {})}
        self.model = model
        self.config = config
        self.device = resolve_device(config.device)
        self.model.to(self.device)
        self.lr = config.lr if config.lr is not None else self.default_lr
        self.amp = resolve_amp(config.amp, self.device)  # off, bf16 or fp16
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None
        self.noise = torch.Generator().manual_seed(config.seed + 1)  # CPU generator for all training noise
        self.optimizers = self.build_optimizers()
        self.step = 0
        self.epoch = 0
        self._nominal: int | None = None  # the loop's step count from epochs / max_steps (set by fit)
        self._planned: int | None = None  # what the schedules plan over (see planned_steps)
        self._cpu_marks: deque[tuple[int, float]] = deque(maxlen=PLAN_WINDOW + 1)  # (step, CPU s) of recent steps
        self._process_steps = 0  # steps run by this process (a resumed run measures its own)
        self._per_epoch = 1

    # -- hooks ------------------------------------------------------------------------------------
    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def train_step(self, images: Tensor, cond: Tensor | None, labels: Tensor) -> dict[str, float]:
        """One optimisation step on a batch; returns the losses to log.

        Args:
            images: ``(B, C, H, W)`` in [-1, 1] on the training device.
            cond: the condition vectors ``(B, condition_dim)`` for ``class``/``text`` models, else None.
            labels: the integer labels (for logging; -1 where unknown).
        """
        raise NotImplementedError

    def prepare(self, train_data: ImageData) -> None:
        """Called once before the loop (e.g. to set data-dependent statistics)."""

    def finish(self, train_data: ImageData, callback: ProgressCallback | None) -> dict[str, Any]:
        """Called once after the loop (e.g. a second training stage); returns extra metrics."""
        return {}

    def extra_progress(self) -> dict[str, Any]:
        """Backend state (plain JSON values) saved with the loop's progress for ``--resume``."""
        return {}

    def restore_progress(self, progress: dict[str, Any]) -> None:
        """Read back what :meth:`extra_progress` saved (absent in training states of earlier versions)."""

    def extra_state_tensors(self) -> dict[str, Tensor]:
        """Backend tensors (e.g. a weight average) saved with the optimizer states for ``--resume``."""
        return {}

    def restore_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Read back what :meth:`extra_state_tensors` saved (empty for a state saved without them)."""

    # -- helpers for subclasses --------------------------------------------------------------------
    def randn(self, *shape: int) -> Tensor:
        return torch.randn(*shape, generator=self.noise).to(self.device)

    def randint(self, high: int, n: int) -> Tensor:
        return torch.randint(high, (n,), generator=self.noise).to(self.device)

    # -- mixed precision (TrainConfig.amp) ---------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """Around forward passes: autocast to bf16/fp16 when amp is on, a no-op when it is off."""
        return autocast(self.device, "fp32" if self.amp == "off" else self.amp)

    def scale(self, loss: Tensor) -> Tensor:
        """``loss`` multiplied by the fp16 loss scale (unchanged without a GradScaler)."""
        return loss if self.scaler is None else self.scaler.scale(loss)

    def step_optimizers(self, *names: str) -> None:
        """Step the optimizers ``names`` on gradients of a :meth:`scale`-d loss (a GradScaler unscales them,
        skips the step on inf/NaN gradients and updates its scale)."""
        for name in names:
            if self.scaler is None:
                self.optimizers[name].step()
            else:
                self.scaler.step(self.optimizers[name])
        if self.scaler is not None:
            self.scaler.update()

    def backward_step(self, loss: Tensor, *names: str) -> None:
        """Zero the gradients of the optimizers ``names``, backpropagate ``loss`` and step them."""
        for name in names:
            self.optimizers[name].zero_grad(set_to_none=True)
        self.scale(loss).backward()
        self.step_optimizers(*names)

    # -- the loop ----------------------------------------------------------------------------------
    def total_steps(self, train_data: ImageData) -> int:
        per_epoch = max(1, len(train_data) // self.config.batch_size)
        total = per_epoch * self.config.epochs
        return min(total, self.config.max_steps) if self.config.max_steps else total

    def fit(self, train_data: ImageData, out_dir: str | Path, *, resume: bool = False,
            callback: ProgressCallback | None = None, evaluate: Callable[[GenerativeModel], dict] | None = None,
            checkpoint_extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train on ``train_data``, writing checkpoints into ``out_dir``; returns the final metrics."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if len(train_data) < self.config.batch_size:
            raise ValueError(f"the data set has {len(train_data)} images, fewer than --batch-size "
                             f"{self.config.batch_size}")
        self._checkpoint_extra = {"training": asdict(self.config) | {"hparams": self.hparams},
                                  **(checkpoint_extra or {})}
        self._data = train_data
        elapsed_before = 0.0
        self._cpu_before = 0.0
        if resume:
            elapsed_before = self._resume(out)
        torch.manual_seed(self.config.seed + self.step)
        total = self.total_steps(train_data)
        per_epoch = max(1, len(train_data) // self.config.batch_size)
        self._nominal = self._planned = total
        self._per_epoch = per_epoch
        self._cpu_marks.clear()
        self._process_steps = 0
        self.prepare(train_data)
        start = time.perf_counter() - elapsed_before
        self._cpu_start = time.process_time() - self._cpu_before  # CPU time is counted across resumes
        bar = tqdm(total=total, initial=self.step, disable=not self.config.progress_bar, desc=self.backend,
                   dynamic_ncols=True)
        losses: dict[str, float] = {}
        self.model.train()
        try:
            while self.step < total:
                order = torch.Generator().manual_seed(self.config.seed * 1000 + self.epoch)
                skip = self.step - self.epoch * per_epoch  # batches of this epoch already done (resume)
                for i, batch in enumerate(train_data.batches(self.config.batch_size, order)):
                    if i < skip:
                        continue
                    if self.step >= total:
                        break
                    # training noise is a function of (seed, step), so a resumed run is bit-identical
                    self.noise.manual_seed(self.config.seed * 1_000_003 + self.step)
                    cond = self._conditions(train_data, batch)
                    losses = self.train_step(batch.images.to(self.device, non_blocking=True), cond,
                                             batch.labels.to(self.device))
                    self.step += 1
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()}, refresh=False)
                    self._after_step(out, losses, total, start, callback)
                    budget = self.loop_cpu_budget()
                    if budget and self.cpu_seconds() >= budget:
                        total = self.step  # CPU budget spent: stop here, as if max_steps were reached
                        break
                    self._update_plan(budget)
                else:
                    self.epoch += 1
        except TrainingCancelled:
            self.save(out, time.perf_counter() - start)
            bar.close()
            raise
        bar.close()
        extra_metrics = self.finish(train_data, callback)
        elapsed = time.perf_counter() - start
        metrics: dict[str, Any] = {"steps": self.step, "epochs": self.epoch, "train_seconds": round(elapsed, 1),
                                   "cpu_seconds": round(self.cpu_seconds(), 1),
                                   "final_losses": losses, **extra_metrics}
        if self.config.max_cpu_seconds:  # what the budget changed: the loop's nominal steps and the last plan
            metrics["schedule"] = {"nominal_loop_steps": self._nominal, "planned_loop_steps": self._planned,
                                   "loop_cpu_budget_seconds": round(self.loop_cpu_budget() or 0.0, 1)}
        self.model.eval()
        self.save(out, elapsed, metrics=metrics)
        self.write_samples(out / SAMPLES_FILE)
        if evaluate is not None and self.config.evaluate:
            metrics["evaluation"] = evaluate(self.model)
            write_json_atomic(out / "metrics.json", metrics)
        return metrics

    def loop_cpu_budget(self) -> float | None:
        """CPU seconds the shared loop may use (a trainer with a stage after the loop keeps some back)."""
        return self.config.max_cpu_seconds

    # -- the plan the schedules use ------------------------------------------------------------------------
    def planned_steps(self) -> int | None:
        """The loop steps this run is planned to take: the nominal count (epochs / ``max_steps``), or the
        steps the CPU budget buys when fewer (re-estimated after every step). None outside :meth:`fit`
        (``train_step`` called by hand), where schedules fall back to their fixed-step settings."""
        return self._planned

    def run_fraction(self) -> float | None:
        """How far the loop is through its plan, in [0, 1], at the step about to run; None outside :meth:`fit`."""
        planned = self.planned_steps()
        return None if not planned else min(self.step, planned) / planned

    def _update_plan(self, budget: float | None) -> None:
        """Re-estimate the plan from the CPU time per step over the last :data:`PLAN_WINDOW` steps."""
        if not budget or self._nominal is None:
            return
        self._process_steps += 1
        if self._process_steps <= PLAN_SKIP:  # the first steps of this process are not measured
            return
        self._cpu_marks.append((self.step, self.cpu_seconds()))
        if len(self._cpu_marks) < 2:
            return
        (first_step, first_cpu), (last_step, last_cpu) = self._cpu_marks[0], self._cpu_marks[-1]
        per_step = max(last_cpu - first_cpu, 1e-9) / (last_step - first_step)
        # the loop runs the step that crosses the budget: round up (less a hair for float noise)
        affordable = last_step + math.ceil(max(0.0, budget - last_cpu) / per_step - 1e-6)
        self._planned = max(self.step, min(self._nominal, affordable))

    def cpu_seconds(self) -> float:
        """CPU time this training has used so far (all threads, earlier runs of a resumed training included)."""
        return time.process_time() - self._cpu_start

    def _conditions(self, data: ImageData, batch: Batch) -> Tensor | None:
        kind = self.model.config.condition
        if kind == "class":
            return torch.nn.functional.one_hot(batch.labels, self.model.config.num_classes).float().to(self.device)
        if kind == "text":
            return data.text_conditions(batch.index, self.noise).to(self.device)
        return None

    def _after_step(self, out: Path, losses: dict[str, float], total: int, start: float,
                    callback: ProgressCallback | None) -> None:
        elapsed = time.perf_counter() - start
        with open(out / HISTORY_FILE, "a") as f:
            f.write(json.dumps({"step": self.step, "epoch": self.epoch, "elapsed": round(elapsed, 2), **losses}) + "\n")
        cfg = self.config
        sample_path = None
        if cfg.sample_every and self.step % cfg.sample_every == 0:
            sample_path = self.write_samples(out / "samples" / f"step-{self.step:07d}.png")
        if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < total:
            self.save(out, elapsed)
        if callback is not None:
            callback(TrainingEvent(self.step, total, self.epoch, losses, elapsed))
            if sample_path is not None:
                callback(TrainingEvent(self.step, total, self.epoch, losses, elapsed, kind="sample",
                                       sample_path=str(sample_path)))

    def save(self, out: Path, elapsed: float, metrics: dict[str, Any] | None = None) -> None:
        was_training = self.model.training
        save_checkpoint(self.model, out, dataset=self._data.name, class_names=self._data.class_names,
                        metrics=metrics, extra=self._checkpoint_extra)
        progress: dict[str, Any] = {"step": self.step, "epoch": self.epoch, "elapsed": elapsed,
                                    "cpu_seconds": round(self.cpu_seconds(), 1), "seed": self.config.seed}
        if self.scaler is not None:  # fp16: the loss scale and its growth counter (plain numbers)
            progress["grad_scaler"] = self.scaler.state_dict()
        progress |= self.extra_progress()
        save_training_state(out, self.optimizers, progress, self.extra_state_tensors())
        self.model.train(was_training)

    def _resume(self, out: Path) -> float:
        from safetensors.torch import load_file

        config = read_checkpoint_config(out)
        if config["backend"] != self.model.backend:
            raise CheckpointError(f"{out} holds a {config['backend']} model, not {self.model.backend}")
        saved_config = type(self.model.config).from_dict(config["model_config"])
        if saved_config != self.model.config:
            raise CheckpointError(f"{out}: the model config differs from the one being trained; "
                                  f"saved {saved_config}, requested {self.model.config}")
        self.model.load_state_dict(load_file(str(out / "model.safetensors"), device=str(self.device)))
        extra_tensors: dict[str, Tensor] = {}
        progress = load_training_state(out, self.optimizers, extra_tensors)
        self.step, self.epoch = int(progress["step"]), int(progress["epoch"])
        if self.scaler is not None and "grad_scaler" in progress:  # absent: the saved run was not fp16
            self.scaler.load_state_dict(progress["grad_scaler"])
        self._cpu_before = float(progress.get("cpu_seconds", 0.0))
        self.restore_progress(progress)
        self.restore_state_tensors(extra_tensors)
        return float(progress.get("elapsed", 0.0))

    @torch.no_grad()
    def write_samples(self, path: Path, per_row: int = 10) -> Path:
        """A grid: one row per class/cluster for conditional models (10 samples each), else 8x8."""
        model = self.model
        was_training = model.training
        model.eval()
        generator = torch.Generator().manual_seed(1234)
        kind = model.config.condition
        if kind in ("class", "cluster"):
            rows = [model.sample(per_row, Condition(kind, index=i), generator)
                    for i in range(min(model.config.num_classes, 20))]
            images, nrow = torch.cat(rows), per_row
        elif kind == "text":
            embeddings = self._data.text_embeddings
            prompt_rows = grid_rows(self._data)
            conds = embeddings[prompt_rows, 0] if embeddings is not None else torch.zeros(8, model.config.text_dim)
            images = torch.cat([model.sample(8, Condition("text", embedding=c), generator) for c in conds])
            nrow = 8
            if self._data.first_captions is not None:  # the rows' prompts, beside the grid, for the run page
                write_json_atomic(Path(path).with_suffix(".json"),
                                  {"prompts": [self._data.first_captions[int(i)] for i in prompt_rows]})
        else:
            images, nrow = model.sample(64, Condition("none"), generator), 8
        model.train(was_training)
        return save_png(images.cpu(), path, {"step": self.step, "backend": model.backend}, nrow=nrow)


def grid_rows(data: ImageData, count: int = 8) -> Tensor:
    """The images whose first captions prompt a text model's live grid: one per class first (a class-sorted
    upload still shows every class), then evenly spread over the data set."""
    picked: list[int] = []
    labels = data.labels.tolist()
    for label in sorted({x for x in labels if x >= 0}):
        if len(picked) < count:
            picked.append(labels.index(label))
    for i in torch.linspace(0, len(data) - 1, count).long().tolist():
        if len(picked) < min(count, len(data)) and i not in picked:
            picked.append(i)
    return torch.tensor(sorted(picked[:count]) if not any(x >= 0 for x in labels) else picked[:count])


class ClassPriorModel(Protocol):
    """What :class:`ClassPriorTraining` uses of its trainer's model (a ``GenerativeModel`` with
    ``generation.base.ConditionalDecoderMixin``: ``ResidualVAE``, ``PerceptualGenerativeAE``)."""

    @property
    def config(self) -> ModelConfig: ...
    @property
    def training(self) -> bool: ...
    def prior_nll(self, codes: Tensor, cond: Tensor) -> Tensor: ...
    def encode(self, images: Tensor, condition: Condition | None = None) -> EncoderOutput: ...
    def eval(self) -> Any: ...
    def train(self, mode: bool = True) -> Any: ...


class ClassPriorTraining:
    """Training side of the class prior of a CVAE-style model (``vae``, ``pga``; see
    ``generation.base.ConditionalDecoderMixin``). Mixed into their trainers, before :class:`Trainer`.

    - ``class_prior="gaussian"``: after the loop, :meth:`fit_class_prior` encodes up to ``prior_codes``
      training images (as many per class, in rounds, while the CPU budget lasts; the loop leaves
      :data:`CLASS_PRIOR_CPU_SHARE` of it for this) with the eval-mode encoder, each with its own label, and
      fits one Gaussian per class to the codes (the posterior means for the VAE: on MNIST they gave 90.0% label
      accuracy and feature FID 8.73, against 89.0% and 8.92 with the posterior variance added; docs/results.md).
    - ``class_prior="flow"``: :meth:`prior_flow_step` fits the flow to the stop-gradient codes of every batch
      with its own optimiser (``prior``; GLF's Adam betas (0.8, 0.9), weight decay 2e-5, lr ``prior_lr``).

    Neither touches the encoder's or decoder's gradients: the paper's objective is unchanged.
    """

    # what the mixin uses of the Trainer it is mixed into (declarations only, nothing at run time)
    model: ClassPriorModel
    config: TrainConfig
    hparams: dict[str, Any]
    device: torch.device
    if TYPE_CHECKING:
        def backward_step(self, loss: Tensor, *names: str) -> None: ...
        def cpu_seconds(self) -> float: ...

    def prior_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        flow = getattr(self.model, "prior_flow", None)
        if flow is None:
            return {}
        return {"prior": torch.optim.Adam(flow.parameters(), lr=float(self.hparams["prior_lr"]), betas=(0.8, 0.9),
                                          weight_decay=2e-5)}

    def prior_flow_step(self, codes: Tensor, cond: Tensor | None) -> dict[str, float]:
        """One maximum-likelihood step of the flow on ``codes`` ``(B, D)`` (detached here); fp32 whatever amp."""
        if getattr(self.model, "prior_flow", None) is None or cond is None:
            return {}
        nll = self.model.prior_nll(codes.detach().float(), cond).mean() / codes.shape[1]  # per code dim
        self.backward_step(nll, "prior")
        return {"prior_nll": nll.item()}

    def loop_cpu_budget(self) -> float | None:
        budget = self.config.max_cpu_seconds
        if budget and getattr(self.model, "class_prior", None) is not None:
            return budget * (1.0 - CLASS_PRIOR_CPU_SHARE)
        return budget

    def finish(self, train_data: ImageData, callback: ProgressCallback | None) -> dict[str, Any]:
        return self.fit_class_prior(train_data)

    @torch.no_grad()
    def fit_class_prior(self, data: ImageData) -> dict[str, Any]:
        """Fit ``model.class_prior`` (when there is one) to codes of training images; returns its metrics."""
        prior = getattr(self.model, "class_prior", None)
        if prior is None:
            return {}
        num_classes = self.model.config.num_classes
        per_class = max(2, int(self.hparams["prior_codes"]) // num_classes)
        choose = torch.Generator().manual_seed(self.config.seed + 11)
        rows = []
        for k in range(num_classes):
            index = torch.nonzero(data.labels == k).squeeze(1)
            rows.append(index[torch.randperm(len(index), generator=choose)[:per_class]])
        was_training = self.model.training
        self.model.eval()
        codes, labels = [], []
        budget = self.config.max_cpu_seconds
        for start in range(0, per_class, CLASS_PRIOR_CHUNK):
            if start and budget and self.cpu_seconds() >= budget:
                break  # the budget is spent: fit to the codes of the rounds done
            for k, index in enumerate(rows):
                chunk = index[start:start + CLASS_PRIOR_CHUNK]
                if len(chunk) == 0:
                    continue
                out = self.model.encode(data.batch(chunk).images.to(self.device), Condition("class", index=k))
                codes.append(out.latents.float().cpu())  # (b, D)
                labels.append(torch.full((len(chunk),), k))
        self.model.train(was_training)
        z, y = torch.cat(codes), torch.cat(labels)
        prior.fit(z, y)
        counts = torch.bincount(y, minlength=num_classes)
        return {"class_prior": {"kind": "gaussian", "codes": len(z), "fewest_codes_in_a_class": int(counts.min())}}
