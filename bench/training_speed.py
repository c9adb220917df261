"""Training throughput of every backend: images per second of the trainer's step on MNIST-shaped
data (1x28x28, batch 64, default model sizes, class condition unless ``--condition none``).

Each row is one backend's ``Trainer.train_step`` (forward, backward, optimiser step(s)) on random images in
[-1, 1] with random labels (the cost does not depend on the pixels, so no data files are needed): ``--warmup``
untimed steps, then ``--steps`` timed ones, median. Two backends have phases of different cost, shown as extra
rows: ``pga`` before its latent terms switch on (``warmup_steps``, a plain autoencoder) and after; ``lde``'s
second stage, the density estimator's update on precomputed codes (batch 128; its figure is codes/s).
Wall and CPU time as in ``sampling_speed.py``. ``--amp`` sets ``TrainConfig.amp`` (mixed-precision forward
passes; the LDE density stage stays fp32 whatever it says).

    OMP_NUM_THREADS=1 python bench/training_speed.py --device cpu --threads 1
    python bench/training_speed.py --quick     # tiny models, 2 steps: a smoke test
    python bench/training_speed.py --device cuda --amp bf16     # vs the same with --amp off (or fp16)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/training_speed.py` from anywhere

import torch  # noqa: E402

from bench.common import (TINY_MODEL, emit, machine_info, markdown_table, model_overrides, pick_device,  # noqa: E402
                          time_call)
from generation.precision import AMP_MODES, resolve_amp  # noqa: E402

BACKENDS = ("aae-cg", "glf", "lde", "pga", "vae")
IMAGE_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
BATCHES = 4  # distinct random batches cycled through


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--condition", default="class", choices=("class", "none"))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--amp", default="off", choices=AMP_MODES, help="mixed precision (fp16: CUDA only)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="timed steps (the median is reported)")
    p.add_argument("--json-out", default=None, help="also write the results JSON here")
    p.add_argument("--quick", action="store_true", help="tiny models, batch 8, 1 warm-up + 2 timed steps")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.warmup, args.steps = 8, 1, 2
    return args


def build_trainer(name: str, hparams: dict[str, Any], device: torch.device, args: argparse.Namespace):
    from generation.registry import build_model, config_class
    from training.registry import get_trainer_class
    from training.trainer import TrainConfig

    overrides = model_overrides(config_class(name), TINY_MODEL) if args.quick else {}
    torch.manual_seed(0)
    model = build_model(name, image_shape=IMAGE_SHAPE, condition=args.condition, num_classes=NUM_CLASSES,
                        **overrides)
    config = TrainConfig(device=str(device), batch_size=args.batch_size, progress_bar=False, evaluate=False,
                         amp=args.amp)
    trainer = get_trainer_class(name)(model, config, hparams)
    model.train()
    return trainer


def loop_step(trainer, device: torch.device, args: argparse.Namespace) -> Callable[[], None]:
    """One step of the shared loop on a cycled random batch (the loop's noise seeding and step counter)."""
    g = torch.Generator().manual_seed(0)
    images = [(torch.rand(args.batch_size, *IMAGE_SHAPE, generator=g) * 2 - 1).to(device) for _ in range(BATCHES)]
    labels = [torch.randint(NUM_CLASSES, (args.batch_size,), generator=g).to(device) for _ in range(BATCHES)]
    conds = [torch.nn.functional.one_hot(y, NUM_CLASSES).float() if args.condition == "class" else None
             for y in labels]

    def step() -> None:
        i = trainer.step % BATCHES
        trainer.noise.manual_seed(trainer.step)
        trainer.train_step(images[i], conds[i], labels[i])
        trainer.step += 1

    return step


def lde_density_step(trainer, device: torch.device, args: argparse.Namespace) -> tuple[Callable[[], None], int]:
    batch = int(trainer.hparams["lde_batch_size"]) if not args.quick else args.batch_size
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(batch, trainer.model.config.latent_dim, generator=g).to(device)
    cond = None
    if args.condition == "class":
        cond = torch.nn.functional.one_hot(torch.arange(batch) % NUM_CLASSES, NUM_CLASSES).float().to(device)
    return (lambda: trainer.lde_step(codes, cond)), batch


def cases(backends: list[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(row label, backend, hparams); ``pga`` and ``lde`` get a row per phase."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    for name in backends:
        if name == "pga":
            out += [("pga (warm-up: AE only)", name, {}), ("pga (latent terms on)", name, {"warmup_steps": 0})]
        elif name == "lde":
            out += [("lde (stage 1: AE)", name, {}), ("lde (stage 2: density, codes/s)", name, {})]
        else:
            out.append((name, name, {}))
    return out


def measure(label: str, name: str, hparams: dict[str, Any], device: torch.device,
            args: argparse.Namespace) -> dict[str, Any]:
    trainer = build_trainer(name, hparams, device, args)
    if "density" in label:
        fn, batch = lde_density_step(trainer, device, args)
    else:
        fn, batch = loop_step(trainer, device, args), args.batch_size
    timing = time_call(fn, device, warmup=args.warmup, repeats=args.steps)
    return {"case": label, "backend": name, "hparams": hparams, "batch": batch, "amp": args.amp,
            "params_m": round(sum(p.numel() for p in trainer.model.parameters()) / 1e6, 2),
            "images_per_s": round(batch / timing.wall, 1), "images_per_cpu_s": round(batch / max(timing.cpu, 1e-9), 1),
            "step_ms": round(timing.wall * 1e3, 2), "step_cpu_ms": round(timing.cpu * 1e3, 2)}


COLUMNS = [("case", "backend (phase)"), ("params_m", "params (M)"), ("amp", "amp"), ("batch", "batch"),
           ("images_per_s", "img/s (wall)"), ("images_per_cpu_s", "img/s (CPU)"), ("step_cpu_ms", "step CPU ms"),
           ("step_ms", "step wall ms")]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    try:
        resolve_amp(args.amp, device)
    except ValueError as exc:
        raise SystemExit(f"--amp {args.amp}: {exc}") from None
    machine = machine_info(device)
    started = time.perf_counter()
    rows = [measure(label, name, hparams, device, args)
            for label, name, hparams in cases([b for b in args.backends.split(",") if b])]
    table = markdown_table([title for _, title in COLUMNS], [[row[key] for key, _ in COLUMNS] for row in rows])
    payload = {"benchmark": "training_speed", "machine": machine, "rows": rows,
               "settings": {"image_shape": list(IMAGE_SHAPE), "batch_size": args.batch_size,
                            "condition": args.condition, "warmup": args.warmup, "steps": args.steps,
                            "amp": args.amp,
                            "quick": args.quick,
                            "command": " ".join(["training_speed.py", *(argv if argv is not None else sys.argv[1:])])},
               "wall_seconds": round(time.perf_counter() - started, 1)}
    emit(table, payload, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
