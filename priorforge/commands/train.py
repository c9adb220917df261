"""``priorforge train``: train a backend on a data set and write a checkpoint folder."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import TYPE_CHECKING, Any

from priorforge_spec.backends import backend_names
from priorforge_spec.conditions import CONDITION_KINDS
from priorforge_spec.datasets import BUILTIN_DATASETS
from priorforge_spec.precision import AMP_MODES

if TYPE_CHECKING:
    from training.data import ImageData

# flags that set a model-config field of the same name (when the backend has it)
MODEL_FLAGS = ("latent_dim", "noise_dim", "base_channels", "hidden_dim", "variant", "regularized")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="train a model and write a checkpoint folder",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help=f"backend: {', '.join(backend_names())}")
    p.add_argument("--dataset", required=True,
                   help=f"data set: {', '.join(BUILTIN_DATASETS)}; captioned (for --condition text): "
                   "cifar10-captions, fashion-mnist-captions, oxford102-flowers, captions:<folder>")
    p.add_argument("--condition", default="none", choices=CONDITION_KINDS)
    p.add_argument("--data-root", default=None, help="folder holding the data set (not needed for digits)")
    p.add_argument("--download", action="store_true", help="let torchvision download a missing data set")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--resume", action="store_true", help="continue the training saved in --out")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--max-cpu-minutes", type=float, default=None,
                   help="stop after this much CPU time of the training process (a budget independent of load)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the backend's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--amp", default="off", choices=AMP_MODES,
                   help="mixed precision of the forward passes: off (fp32), bf16 (CPU or CUDA), fp16 (CUDA, with "
                   "loss scaling)")
    p.add_argument("--image-size", type=int, default=None, help="resize images to this size")
    p.add_argument("--clusters", type=int, default=10, help="number of clusters (--condition cluster)")
    p.add_argument("--sample-every", type=int, default=500, help="steps between sample grids (0: end only)")
    p.add_argument("--checkpoint-every", type=int, default=1000, help="steps between checkpoints")
    p.add_argument("--eval-samples", type=int, default=2000, help="generated images for the final evaluation")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--latent-dim", type=int, default=None)
    p.add_argument("--noise-dim", type=int, default=None, help="aae-cg: noise fed to the code generator")
    p.add_argument("--base-channels", type=int, default=None, help="channels of the first conv stage")
    p.add_argument("--hidden-dim", type=int, default=None)
    p.add_argument("--variant", default=None, help="pga: lpga or vpga; lde: ae or iae")
    p.add_argument("--regularized", action="store_true", default=None,
                   help="glf: no stop-gradient (the paper's unstable 'regularized GLF')")
    p.add_argument("--set", dest="model_options", action="append", default=[], metavar="KEY=VALUE",
                   help="any other model-config field (JSON value), repeatable")
    p.add_argument("--hparam", dest="hparams", action="append", default=[], metavar="KEY=VALUE",
                   help="a training hyper-parameter of the backend (JSON value), repeatable")
    p.set_defaults(func=run)


def parse_key_values(items: list[str], flag: str) -> dict[str, Any]:
    from priorforge.cli import CLIError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CLIError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            out[key.replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = raw
    return out


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The model-config fields the flags and ``--set`` give (checked by :mod:`training.build`)."""
    from generation.registry import get_model_class
    from priorforge.cli import CLIError

    fields = {f.name for f in dataclasses.fields(get_model_class(args.model).config_class)}
    options: dict[str, Any] = {}
    for name in MODEL_FLAGS:
        value = getattr(args, name)
        if value is None:
            continue
        if name not in fields:
            raise CLIError(f"--{name.replace('_', '-')} is not an option of backend {args.model!r}")
        options[name] = value
    extra = parse_key_values(args.model_options, "--set")
    unknown = sorted(set(extra) - fields)
    if unknown:
        raise CLIError(f"--set: {args.model!r} has no config field(s) {unknown}; valid: {sorted(fields)}")
    return options | extra


def load_training_data(args: argparse.Namespace) -> tuple[ImageData, ImageData | None]:
    """The train split (and the test split for the evaluation) the command trains on."""
    from training.captions import dataset_choices, is_captioned_dataset, load_captioned_dataset
    from training.data import DatasetError, load_dataset

    if is_captioned_dataset(args.dataset):
        return load_captioned_dataset(args.dataset, args.data_root, "train", image_size=args.image_size), None
    if args.dataset not in BUILTIN_DATASETS:
        raise DatasetError(f"--dataset: unknown data set {args.dataset!r}; valid: {dataset_choices()}")
    if args.condition == "text":
        raise DatasetError(f"--condition text needs a captioned data set, not {args.dataset!r}; "
                           f"valid: {dataset_choices()}")
    train = load_dataset(args.dataset, args.data_root, "train", download=args.download, image_size=args.image_size)
    return train, None


def run(args: argparse.Namespace) -> int:
    from generation.device import resolve_device
    from generation.precision import resolve_amp
    from generation.registry import get_model_class
    from priorforge.cli import CLIError
    from training.build import SetupError, build_model, check_hparams
    from training.registry import get_trainer_class
    from training.trainer import TrainConfig

    for flag in ("epochs", "batch_size"):
        if getattr(args, flag) < 1:
            raise CLIError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.max_steps is not None and args.max_steps < 1:
        raise CLIError("--max-steps must be at least 1")
    if args.max_cpu_minutes is not None and args.max_cpu_minutes <= 0:
        raise CLIError("--max-cpu-minutes must be positive")
    device = resolve_device(args.device)
    try:
        resolve_amp(args.amp, device)
    except ValueError as exc:
        raise CLIError(f"--amp {args.amp}: {exc}") from None
    cls = get_model_class(args.model)  # unknown --model: ValueError listing the valid ones
    if args.condition not in cls.supported_conditions:
        raise CLIError(f"--condition {args.condition}: backend {args.model!r} supports "
                       f"{', '.join(cls.supported_conditions)}")
    train_data, test_data = load_training_data(args)
    try:
        model = build_model(args.model, train_data, args.condition, clusters=args.clusters,
                            options=model_options(args), seed=args.seed)
        hparams = check_hparams(args.model, parse_key_values(args.hparams, "--hparam"))
    except SetupError as exc:
        flag = {"clusters": "--clusters", "condition": "--condition"}.get(exc.field, "--" + exc.field.split(".")[0]
                                                                                 .replace("model_options", "set")
                                                                                 .replace("hparams", "hparam"))
        raise CLIError(f"{flag}: {exc}") from None
    config = TrainConfig(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                         seed=args.seed, device=args.device, sample_every=args.sample_every,
                         checkpoint_every=args.checkpoint_every, evaluate=not args.no_eval,
                         eval_samples=args.eval_samples, progress_bar=not args.quiet, amp=args.amp,
                         max_cpu_seconds=args.max_cpu_minutes * 60 if args.max_cpu_minutes else None)
    text_extra: dict[str, Any] = {}
    if args.condition == "text":  # fit the caption projection and project the embeddings to text_dim
        from training.captions import prepare_text_conditioning

        text_extra = prepare_text_conditioning(model, train_data, test_data)
    trainer = get_trainer_class(args.model)(model, config, hparams)
    evaluate = None
    if config.evaluate:
        evaluate = make_evaluator(args, train_data, test_data, trainer.device, config.eval_samples)
    metrics = trainer.fit(train_data, args.out, resume=args.resume, evaluate=evaluate,
                          checkpoint_extra={"data_root": args.data_root, **text_extra})
    print(json.dumps(metrics, indent=2))
    return 0


def make_evaluator(args: argparse.Namespace, train_data: ImageData, test_data: ImageData | None, device: Any,
                   n_samples: int):
    from training.evaluate import evaluate_model

    def evaluate(model):
        # the checkpoint is saved before this runs: a data set the evaluation cannot use must not fail the run
        try:
            return evaluate_model(model, dataset=args.dataset, class_names=train_data.class_names,
                                  data_root=args.data_root, device=device, n_samples=n_samples, test_data=test_data,
                                  train_data=train_data)
        except ValueError as exc:
            print(f"priorforge train: evaluation skipped: {exc}", file=sys.stderr)
            return {"skipped": str(exc)}

    return evaluate
