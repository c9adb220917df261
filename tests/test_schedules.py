"""Schedules planned from the budget that will actually run, and metrics that report what ran.

A CPU budget is made deterministic here: each trainer sees a fake CPU clock that advances a fixed amount per
optimisation step, so the budget buys a known number of steps (far fewer than the nominal epochs) and no test
depends on the machine's speed.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import build_tiny
from training.data import ImageData, resize_uint8
from training.registry import get_trainer_class
from training.trainer import TrainConfig, Trainer

SECONDS_PER_STEP = 0.01
BUDGET_STEPS = 120  # what the budget buys; the nominal run (20 epochs of digits at batch 16) is 1,780 steps


@pytest.fixture(scope="module")
def digits8(digits_train) -> ImageData:
    """The digits at their native 8x8, so that the tiny models are cheap."""
    return ImageData("digits", resize_uint8(digits_train.images, 8), digits_train.labels, digits_train.class_names)


def fake_cpu_clock(trainer: Trainer, seconds_per_step: float = SECONDS_PER_STEP) -> None:
    """``trainer.cpu_seconds()`` advances ``seconds_per_step`` per ``train_step`` (and per LDE update)."""
    calls = [0]

    def counted(method):
        def wrapper(*args, **kwargs):
            calls[0] += 1
            return method(*args, **kwargs)
        return wrapper

    trainer.train_step = counted(trainer.train_step)
    if hasattr(trainer, "lde_step"):
        trainer.lde_step = counted(trainer.lde_step)
    trainer.cpu_seconds = lambda: calls[0] * seconds_per_step


def budget_run(backend: str, digits8, tmp_path, hparams: dict | None = None, epochs: int = 20, **options):
    """A tiny model trained under a CPU budget of :data:`BUDGET_STEPS` fake steps; (trainer, metrics, history)."""
    model = build_tiny(backend, image_shape=(1, 8, 8), **options)
    config = TrainConfig(epochs=epochs, batch_size=16, seed=0, device="cpu", sample_every=0, checkpoint_every=0,
                         evaluate=False, progress_bar=False, max_cpu_seconds=BUDGET_STEPS * SECONDS_PER_STEP)
    trainer = get_trainer_class(backend)(model, config, hparams or {})
    fake_cpu_clock(trainer)
    metrics = trainer.fit(digits8, tmp_path / "run")
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    return trainer, metrics, history


def test_the_plan_is_the_steps_the_budget_buys(digits8, tmp_path):
    trainer, metrics, history = budget_run("glf", digits8, tmp_path)
    assert metrics["steps"] == len(history) == BUDGET_STEPS  # the steps that ran
    assert metrics["schedule"]["nominal_loop_steps"] == 20 * (len(digits8) // 16)
    assert metrics["schedule"]["planned_loop_steps"] == BUDGET_STEPS
    assert trainer.run_fraction() == 1.0


def test_without_a_budget_the_plan_is_the_nominal_run(digits8, tmp_path):
    model = build_tiny("vae", image_shape=(1, 8, 8))
    config = TrainConfig(max_steps=7, batch_size=16, device="cpu", sample_every=0, checkpoint_every=0,
                         evaluate=False, progress_bar=False)
    trainer = get_trainer_class("vae")(model, config)
    assert trainer.planned_steps() is None  # outside fit: schedules use their fixed settings
    metrics = trainer.fit(digits8, tmp_path / "run")
    assert trainer.planned_steps() == 7 and "schedule" not in metrics


def test_iae_code_growth_reaches_every_dim_within_the_budget(digits8, tmp_path):
    """Before: growth planned over the nominal autoencoder steps, so a short budget left most dims masked."""
    _, metrics, history = budget_run("lde", digits8, tmp_path, {"iae_warmup_fraction": 0.5}, variant="iae",
                                     condition="class", num_classes=10)
    dims = [row["active_dims"] for row in history if "active_dims" in row]
    assert len(dims) == metrics["ae_steps"] == round(BUDGET_STEPS * 0.75)  # the autoencoder's share of the budget
    assert dims[0] == 1 and dims[-1] == 8
    full_from = dims.index(8)
    assert 0.4 * len(dims) <= full_from <= 0.6 * len(dims)  # all dims from half-way through the planned stage


def test_lde_reports_the_steps_that_ran_with_lde_steps_set(digits8, tmp_path):
    """With ``lde_steps`` and a CPU budget the density stage still gets its share of the budget."""
    _, metrics, history = budget_run("lde", digits8, tmp_path, {"lde_steps": 10_000, "lde_max_codes": 300},
                                     condition="class", num_classes=10)
    lde_rows = sum(1 for row in history if "lde_nll" in row)
    assert metrics["ae_steps"] == round(BUDGET_STEPS * 0.75) and metrics["lde_steps"] == lde_rows
    assert 0 < lde_rows <= BUDGET_STEPS - metrics["ae_steps"]  # the rest of the budget, not 10,000 updates
    assert metrics["nominal_lde_steps"] == 10_000


def test_pga_warmup_is_a_share_of_the_planned_run(digits8, tmp_path):
    """Before: 3,000 warm-up steps, so any shorter run was a plain autoencoder."""
    _, metrics, history = budget_run("pga", digits8, tmp_path, {"warmup_fraction": 0.25}, condition="class",
                                     num_classes=10)
    on = [row["latent_on"] for row in history]
    planned = metrics["schedule"]["planned_loop_steps"]
    assert abs(planned - 0.97 * BUDGET_STEPS) <= 1  # a class model's loop leaves 3% for its class prior
    assert on.index(1.0) == math.ceil(0.25 * planned) and all(on[on.index(1.0):])


def test_vae_learning_rate_anneals_over_the_planned_run(digits8, tmp_path):
    _, _, history = budget_run("vae", digits8, tmp_path)
    lrs = [row["lr"] for row in history]
    assert lrs[0] == pytest.approx(4e-4, rel=0.02)  # the plan starts as the nominal run: barely annealed
    assert lrs[-1] == pytest.approx(4e-4 / BUDGET_STEPS, rel=0.05)  # and ends as the budget's last step


def test_glf_lr_halvings_keep_their_place_in_a_budget_run(digits8, tmp_path):
    """``--epochs 100`` with halving every 50 epochs: the budget's run is halved after its first half."""
    trainer, _, _ = budget_run("glf", digits8, tmp_path, {"lr_halve_epochs": 50}, epochs=100)
    lrs = [group["lr"] for group in trainer.optimizers["autoencoder"].param_groups]
    assert lrs == [pytest.approx(1e-3 / 2)]
    trainer.step = BUDGET_STEPS // 2 - 1
    assert trainer.schedule_epoch() < 50
    trainer.step = BUDGET_STEPS // 2 + 1
    assert trainer.schedule_epoch() >= 50


def test_a_gaussian_class_prior_is_fitted_within_the_budget(digits8, tmp_path):
    trainer, metrics, history = budget_run("vae", digits8, tmp_path, condition="class", num_classes=10)
    assert abs(len(history) - 0.97 * BUDGET_STEPS) <= 1  # the loop leaves 3% of the budget for the prior's codes
    assert bool(trainer.model.class_prior.fitted) and metrics["class_prior"]["codes"] >= 10 * 2


@pytest.mark.parametrize("backend, stop_at", [("vae", 3), ("pga", 3), ("glf", 3), ("lde", 3), ("lde", 10)])
def test_a_resumed_run_ends_as_the_uninterrupted_one(backend, stop_at, digits8, tmp_path):
    """Without a CPU budget the plan is fixed, so stopping (a cancelled run; for the LDE also inside its
    density stage, step 10 of 6 + 16) and resuming gives bit-identical weights, class prior included."""
    from training.trainer import TrainingCancelled

    def trainer_for(seed_model: int = 0):
        model = build_tiny(backend, image_shape=(1, 8, 8), condition="class", num_classes=10)
        config = TrainConfig(max_steps=8, batch_size=16, seed=0, device="cpu", sample_every=0, checkpoint_every=0,
                             evaluate=False, progress_bar=False)
        return get_trainer_class(backend)(model, config, {"lde_max_codes": 200} if backend == "lde" else {})

    straight = trainer_for()
    straight.fit(digits8, tmp_path / "straight")

    def cancel(event):
        if event.step == stop_at:
            raise TrainingCancelled()

    with pytest.raises(TrainingCancelled):
        trainer_for().fit(digits8, tmp_path / "split", callback=cancel)
    resumed = trainer_for()
    resumed.fit(digits8, tmp_path / "split", resume=True)
    assert resumed.step == straight.step
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
