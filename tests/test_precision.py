"""Precision options: fp32 stays bit-exact, bf16 decoding stays within the documented tolerance of fp32,
mixed-precision training trains, and the bad combinations are clear errors.

The tolerance (docs/benchmarks-precision.md): decoding the same codes in bf16 autocast instead of fp32 moves a
pixel by at most ``MAX_DIFF`` in [-1, 1] units (``MAX_LEVELS`` of 255 levels in the PNG), ``MEAN_DIFF`` on
average, for trained models: measured on CPU at most 0.037 max, 0.0025 mean, 5 levels (the shipped model and
every backend's tiny model after 80 steps on digits). Untrained tiny models (outputs near 0, so smaller
errors) measured at most 0.0043.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from generation.base import Condition
from generation.checkpoint import load_checkpoint
from generation.precision import autocast, inference_context, resolve_amp, resolve_precision
from generation.registry import backend_names, get_model_class
from generation.sampling import generate, read_png_params, to_uint8
from priorforge.cli import main
from tests.conftest import build_tiny
from training.registry import get_trainer_class
from training.trainer import TrainConfig

CPU = torch.device("cpu")
SHIPPED = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "digits-aae-cg"
MAX_DIFF = 0.06  # trained models; measured 0.037 at most
MEAN_DIFF = 0.004  # measured 0.0025 at most
MAX_LEVELS = 8  # measured 5 at most
TINY_MAX_DIFF = 0.01  # untrained tiny models; measured 0.0043 (vae), 0.0024 or less for the others
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def condition_of(model, index: int = 3) -> Condition:
    return Condition("class", index=index) if model.config.condition == "class" else Condition("none")


def decode_difference(model, condition: Condition, n: int, seed: int,
                      device: torch.device = CPU, precision: str = "bf16") -> tuple[float, float, int]:
    """(max |diff|, mean |diff|, max diff in uint8 levels) between decoding the same codes in fp32 and in
    ``precision`` autocast."""
    model.eval()
    with torch.inference_mode():
        latents = model.sample_latents(n, condition, torch.Generator().manual_seed(seed)).to(device)
        exact = model.decode(latents, condition).float().cpu()
        with autocast(device, precision):
            half = model.decode(latents, condition).float().cpu()
    diff = (exact - half).abs()
    levels = (to_uint8(exact).int() - to_uint8(half).int()).abs().max()
    return diff.max().item(), diff.mean().item(), int(levels)


def assert_within_tolerance(model, device: torch.device = CPU, precision: str = "bf16") -> None:
    """The documented bounds over 10 batches of 16 codes (one per class for class models)."""
    conditions = [condition_of(model, index=k) for k in range(10)]
    results = [decode_difference(model, c, n=16, seed=k, device=device, precision=precision)
               for k, c in enumerate(conditions)]
    assert 0 < max(r[0] for r in results) < MAX_DIFF, results  # > 0: the half precision really ran
    assert max(r[1] for r in results) < MEAN_DIFF, results
    assert max(r[2] for r in results) <= MAX_LEVELS, results


# -- the setting itself ------------------------------------------------------------------------------------
def test_auto_is_fp32_on_cpu_and_bf16_is_allowed():
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    assert resolve_amp("off", CPU) == "off" and resolve_amp("bf16", CPU) == "bf16"


@pytest.mark.parametrize("call, message", [
    (lambda: resolve_precision("fp16", CPU), "fp16 needs a CUDA device"),
    (lambda: resolve_precision("fp8", CPU), "precision must be one of fp32, bf16, fp16, auto"),
    (lambda: resolve_amp("fp16", CPU), "fp16 needs a CUDA device"),
    (lambda: resolve_amp("fp32", CPU), "amp must be one of off, bf16, fp16"),
])
def test_bad_settings_are_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_inference_context_combines_inference_mode_and_autocast():
    with inference_context(CPU, "bf16") as resolved:
        assert resolved == "bf16"
        assert torch.is_inference_mode_enabled()
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert torch.nn.Linear(4, 4)(torch.ones(2, 4)).dtype == torch.bfloat16
    with inference_context(CPU, "auto") as resolved:
        assert resolved == "fp32"
        assert torch.is_inference_mode_enabled() and not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        with inference_context(CPU, "fp16"):
            pass


# -- generate ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", backend_names())
def test_fp32_generate_is_the_plain_decode_bit_for_bit(backend):
    model = build_tiny(backend).eval()
    condition = Condition("none")
    with torch.no_grad():  # what generate did before it had a precision
        reference = model.decode(model.sample_latents(3, condition, torch.Generator().manual_seed(5)), condition)
    for precision in ("fp32", "auto"):  # auto is fp32 on the CPU
        images = generate(model, 3, condition, seed=5, precision=precision)
        assert torch.equal(images, reference), precision
    assert torch.equal(generate(model, 3, condition, seed=5), reference)


def test_generate_returns_an_ordinary_float32_cpu_tensor():
    images = generate(build_tiny("vae").eval(), 2, Condition("none"), seed=0, precision="bf16")
    assert images.dtype == torch.float32 and images.device.type == "cpu"
    assert not images.is_inference()
    images.clamp_(-0.5, 0.5)  # in-place use by a caller is allowed


def test_generate_refuses_fp16_on_cpu():
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        generate(build_tiny("vae"), 1, Condition("none"), seed=0, precision="fp16")


@pytest.mark.parametrize("backend", backend_names())
def test_bf16_decoding_of_untrained_models_stays_close(backend):
    kind = "class" if "class" in get_model_class(backend).supported_conditions else "none"
    model = build_tiny(backend, condition=kind, num_classes=10)
    worst = max(decode_difference(model, condition_of(model), n=16, seed=seed)[0] for seed in range(3))
    assert 0 < worst < TINY_MAX_DIFF, worst  # > 0: bf16 really ran
    # generate's bf16 path decodes the same codes (drawn in fp32) as this measurement
    exact = generate(model, 4, condition_of(model), seed=9)
    half = generate(model, 4, condition_of(model), seed=9, precision="bf16")
    assert 0 < (exact - half).abs().max().item() < TINY_MAX_DIFF


def test_bf16_decoding_of_the_shipped_model_stays_within_the_tolerance():
    model, _ = load_checkpoint(SHIPPED)
    assert_within_tolerance(model)


@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_half_precision_decoding_stays_within_the_tolerance(precision):
    cuda = torch.device("cuda")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    model, _ = load_checkpoint(SHIPPED, device=cuda)
    assert_within_tolerance(model, cuda, precision)
    images = generate(model, 4, Condition("class", index=1), seed=0, precision="auto")
    assert images.dtype == torch.float32 and images.device.type == "cpu"


# -- the sample command ------------------------------------------------------------------------------------
def sample(capsys, tmp_path, *args: str) -> tuple[int, str]:
    rc = main(["sample", "--checkpoint", str(SHIPPED), "--label", "4", "--n", "2", "--device", "cpu",
               "--out", str(tmp_path / "x.png"), *args])
    return rc, capsys.readouterr().err


def test_sample_precision_flag_is_recorded(capsys, tmp_path):
    assert sample(capsys, tmp_path, "--precision", "bf16")[0] == 0
    assert read_png_params(tmp_path / "x.png")["precision"] == "bf16"
    assert sample(capsys, tmp_path, "--precision", "auto")[0] == 0
    assert read_png_params(tmp_path / "x.png")["precision"] == "fp32"


def test_sample_fp16_on_cpu_names_the_flag(capsys, tmp_path):
    rc, err = sample(capsys, tmp_path, "--precision", "fp16")
    assert rc == 2 and "--precision fp16: fp16 needs a CUDA device" in err
    assert not (tmp_path / "x.png").exists()


def test_sample_unknown_precision_is_an_argparse_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        sample(capsys, tmp_path, "--precision", "fp8")
    assert exc.value.code == 2 and "--precision" in capsys.readouterr().err


# -- training ----------------------------------------------------------------------------------------------
TRAIN_CASES = [("aae-cg", {}), ("glf", {}), ("lde", {}), ("pga", {}), ("pga", {"variant": "vpga"}), ("vae", {})]
HPARAMS = {"pga": {"warmup_steps": 0}}  # the latent terms on from the first step


def tiny_trainer(backend: str, extra: dict, amp: str = "off"):
    model = build_tiny(backend, condition="class", num_classes=10, **extra)
    config = TrainConfig(max_steps=3, batch_size=32, seed=0, device="cpu", sample_every=0, checkpoint_every=0,
                         evaluate=False, progress_bar=False, amp=amp)
    return get_trainer_class(backend)(model, config, dict(HPARAMS.get(backend, {})))


def fixed_batch(digits_train):
    images, labels, _ = digits_train.subset(32, seed=1).batch(torch.arange(32))
    return images, torch.nn.functional.one_hot(labels, 10).float(), labels


def run_steps(trainer, batch, steps: int) -> list[dict[str, float]]:
    trainer.model.train()
    history = []
    for step in range(steps):
        trainer.noise.manual_seed(step)
        history.append(trainer.train_step(*batch))
    return history


@pytest.mark.parametrize("backend, extra", TRAIN_CASES)
def test_bf16_training_steps_are_finite_and_lower_the_loss(backend, extra, digits_train):
    trainer = tiny_trainer(backend, extra, amp="bf16")
    assert trainer.scaler is None  # bf16 needs no loss scaling
    history = run_steps(trainer, fixed_batch(digits_train), 30)
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    key = "rec_pix" if "rec_pix" in history[0] else "rec"
    first, last = sum(h[key] for h in history[:3]) / 3, sum(h[key] for h in history[-3:]) / 3
    assert last < first, f"{backend}: {key} went from {first:.4f} to {last:.4f}"
    if backend == "lde":  # the density stage (fp32 whatever amp says)
        codes = torch.randn(32, trainer.model.config.latent_dim, generator=torch.Generator().manual_seed(0))
        nlls = [trainer.lde_step(codes, fixed_batch(digits_train)[1]) for _ in range(10)]
        assert all(torch.isfinite(torch.tensor(nlls))) and nlls[-1] < nlls[0]


@pytest.mark.slow
@pytest.mark.parametrize("backend, extra", TRAIN_CASES)
def test_bf16_decoding_of_briefly_trained_models_stays_within_the_tolerance(backend, extra, digits_train):
    """Trained decoders saturate towards -1/1, where bf16 rounds coarser: 80 steps get there."""
    trainer = tiny_trainer(backend, extra)
    trainer.model.train()
    order = torch.Generator().manual_seed(0)
    for step in range(80):
        images, labels, _ = digits_train.batch(torch.randint(len(digits_train), (32,), generator=order))
        trainer.noise.manual_seed(step)
        trainer.train_step(images, torch.nn.functional.one_hot(labels, 10).float(), labels)
    assert_within_tolerance(trainer.model)


def test_amp_off_has_no_scaler_and_no_autocast():
    trainer = tiny_trainer("vae", {})
    assert TrainConfig().amp == "off" and trainer.scaler is None
    with trainer.autocast():
        assert not torch.is_autocast_enabled("cpu")
    with tiny_trainer("vae", {}, amp="bf16").autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


@pytest.mark.parametrize("backend, extra", TRAIN_CASES)
def test_loss_scaling_is_exact_in_every_backward(backend, extra, digits_train):
    """A GradScaler with a power-of-two scale must give the weights of no scaler bit for bit: every loss is
    scaled once and every optimizer unscales (the wiring fp16 uses on CUDA, run here in fp32)."""
    batch = fixed_batch(digits_train)
    plain, scaled = tiny_trainer(backend, extra), tiny_trainer(backend, extra)
    scaled.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    run_steps(plain, batch, 4)
    run_steps(scaled, batch, 4)
    for (name, a), b in zip(plain.model.state_dict().items(), scaled.model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("backend, extra", TRAIN_CASES)
def test_an_overflowing_loss_scale_skips_every_optimizer_step(backend, extra, digits_train):
    trainer = tiny_trainer(backend, extra)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=float("inf"))  # every gradient is inf/NaN
    before = {k: v.clone() for k, v in trainer.model.named_parameters()}
    run_steps(trainer, fixed_batch(digits_train), 1)
    for name, value in trainer.model.named_parameters():
        assert torch.equal(value, before[name]), name
    assert all(not opt.state for opt in trainer.optimizers.values())  # no optimizer took a step


def test_grad_scaler_state_is_saved_and_restored_on_resume(tmp_path, digits_train):
    first = tiny_trainer("vae", {})
    first.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    first.fit(digits_train, tmp_path / "run")  # 3 steps: the scale doubles once, one step towards the next
    saved = json.loads((tmp_path / "run" / "training_state.json").read_text())["progress"]["grad_scaler"]
    assert saved["scale"] == 2.0**11 and saved["_growth_tracker"] == 1
    second = tiny_trainer("vae", {})
    second.config.max_steps = 4
    second.scaler = torch.amp.GradScaler("cpu", init_scale=1.0, growth_interval=2)
    second.fit(digits_train, tmp_path / "run", resume=True)
    assert second.scaler.get_scale() == 2.0**12  # resumed at 2**11 with the tracker at 1, then grew once


def test_train_amp_flag(tmp_path, capsys):
    tiny = ["--set", "base_channels=8", "--set", "max_channels=32", "--latent-dim", "8"]
    base = ["train", "--model", "vae", "--dataset", "digits", "--max-steps", "2", "--batch-size", "16",
            "--sample-every", "0", "--no-eval", "--quiet", "--device", "cpu", *tiny]
    assert main([*base, "--out", str(tmp_path / "bf16"), "--amp", "bf16"]) == 0
    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert config["training"]["amp"] == "bf16"
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "fp16"), "--amp", "fp16"]) == 2
    assert "--amp fp16: fp16 needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "fp16").exists()


@needs_cuda
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_mixed_precision_training(amp, tmp_path, digits_train):
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    for backend, extra in TRAIN_CASES:
        model = build_tiny(backend, condition="class", num_classes=10, **extra)
        config = TrainConfig(max_steps=3, batch_size=32, device="cuda", sample_every=0, checkpoint_every=0,
                             evaluate=False, progress_bar=False, amp=amp)
        trainer = get_trainer_class(backend)(model, config, dict(HPARAMS.get(backend, {})))
        metrics = trainer.fit(digits_train, tmp_path / f"{backend}-{extra.get('variant', '')}")
        assert all(torch.isfinite(torch.tensor(v)) for v in metrics["final_losses"].values()), backend
        state = json.loads((tmp_path / f"{backend}-{extra.get('variant', '')}" / "training_state.json").read_text())
        assert ("grad_scaler" in state["progress"]) == (amp == "fp16")
