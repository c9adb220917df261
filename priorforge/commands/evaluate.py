"""``priorforge evaluate``: the evaluation metrics of a checkpoint on its data set's test split, as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from priorforge_spec.checkpoint import CheckpointError, write_json_atomic
from priorforge_spec.datasets import DatasetError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate", help="evaluate a checkpoint (feature FID, precision/recall, label accuracy...) as JSON",
        description="Evaluate a checkpoint on its data set's test split. feature_fid is the Fréchet distance "
                    "in the project's own classifier's feature space, NOT Inception FID: not comparable "
                    "with papers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint folder")
    p.add_argument("--data-root", default=None,
                   help="folder holding the data set (default: the one stored in the checkpoint)")
    p.add_argument("--n-samples", type=int, default=2000, help="generated images (and test images, at most)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from generation.checkpoint import load_checkpoint
    from generation.device import resolve_device
    from priorforge.cli import CLIError
    from training.data import load_dataset
    from training.evaluate import evaluate_model

    if args.n_samples < 1:
        raise CLIError(f"--n-samples must be at least 1, got {args.n_samples}")
    device = resolve_device(args.device)
    try:
        model, info = load_checkpoint(args.checkpoint, device=device)
    except CheckpointError as exc:
        raise CLIError(f"--checkpoint: {exc}") from None
    data_root = args.data_root if args.data_root is not None else info.extra.get("data_root")
    shape = tuple(model.config.image_shape)
    try:
        test_data = load_dataset(info.dataset, data_root, "test", image_size=int(shape[1]), channels=int(shape[0]))
    except DatasetError as exc:
        where = f"--data-root {data_root}" if data_root is not None else "--data-root (not given, none stored)"
        raise CLIError(f"{where}: cannot load data set {info.dataset!r} of the checkpoint: {exc}") from None
    metrics = evaluate_model(model, dataset=info.dataset, class_names=info.class_names, data_root=data_root,
                             device=device, n_samples=args.n_samples, seed=args.seed, test_data=test_data)
    metrics = {"checkpoint": str(Path(args.checkpoint).resolve()), "dataset": info.dataset,
               "backend": info.backend, **metrics}
    if args.out:
        write_json_atomic(Path(args.out), metrics)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0
