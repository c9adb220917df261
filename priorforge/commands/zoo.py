"""``priorforge zoo``: the shipped models: list their recipes, or rebuild them from the data sets."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "zoo", help="the shipped models: list their recipes, or retrain, evaluate and export them",
        description="The models shipped in models/. 'build' retrains each from its recorded recipe and CPU "
                    "budget, evaluates it (5,000 samples), exports it to models/<name>/ and rewrites its card.")
    sub = p.add_subparsers(dest="zoo_command", required=True, metavar="ACTION")
    listing = sub.add_parser("list", help="print each shipped model's recipe as JSON")
    listing.add_argument("--data-root", default="../shared/data", help="the data root written into the commands")
    listing.set_defaults(func=run_list)
    build = sub.add_parser("build", help="retrain, evaluate, export and describe the shipped models",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    build.add_argument("--data-root", required=True, help="folder holding mnist/, fashion-mnist/, cifar10-jpeg/")
    build.add_argument("--only", action="append", default=None, metavar="NAME",
                       help="build only this model (repeatable); default: all")
    build.add_argument("--work-dir", default="runs/zoo", help="where the full training checkpoints go")
    build.add_argument("--models-dir", default="models", help="where the exported models and cards go")
    build.add_argument("--jobs", type=int, default=1, help="trainings run at the same time (one thread each)")
    build.add_argument("--tiny", action="store_true",
                       help="two training steps, tiny networks, a 40-sample evaluation: checks the recipe runs")
    build.add_argument("--reuse", action="store_true",
                       help="take a finished training of the same recipe from --work-dir instead of retraining")
    build.set_defaults(func=run_build)
    cards = sub.add_parser("cards", help="rewrite the cards, models/README.md and the montage from the stored "
                                         "card.json files (no training)")
    cards.add_argument("--models-dir", default="models", help="the folder of shipped models")
    cards.set_defaults(func=run_cards)
    rep = sub.add_parser("report", help="print the shipped models' figures as Markdown tables (from metrics.json)")
    rep.add_argument("--models-dir", default="models", help="the folder of shipped models")
    rep.add_argument("--curve", default=None, metavar="RUN_DIR",
                     help="instead: the learning curve of a training folder (its history.jsonl), e.g. runs/zoo/cifar10-text")
    rep.add_argument("--at", default="1000,3000,6000,9000", help="with --curve: the steps to show, comma-separated")
    rep.set_defaults(func=run_report)


def run_list(args: argparse.Namespace) -> int:
    from training.zoo import RECIPES

    out = [{"name": r.name, "title": r.title, "budget_cpu_minutes": r.cpu_minutes, "default": r.default,
            "command": "OMP_NUM_THREADS=1 priorforge " + " ".join(r.train_args(args.data_root, f"runs/zoo/{r.name}"))}
           for r in RECIPES]
    print(json.dumps(out, indent=2))
    return 0


def run_build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from priorforge.cli import CLIError
    from training.zoo import build, select

    if args.jobs < 1:
        raise CLIError(f"--jobs must be at least 1, got {args.jobs}")
    try:
        select(args.only)
    except ValueError as exc:
        raise CLIError(f"--only: {exc}") from None
    if not Path(args.data_root).is_dir():
        raise CLIError(f"--data-root: {args.data_root} is not a folder")
    folders = build(args.only, data_root=args.data_root, work_dir=args.work_dir, models_dir=args.models_dir,
                    tiny=args.tiny, jobs=args.jobs, reuse=args.reuse, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(json.dumps([str(f) for f in folders]))
    return 0


def run_cards(args: argparse.Namespace) -> int:
    from pathlib import Path

    from priorforge.cli import CLIError
    from training.zoo import refresh_cards

    if not Path(args.models_dir).is_dir():
        raise CLIError(f"--models-dir: {args.models_dir} is not a folder")
    print(json.dumps([str(f) for f in refresh_cards(args.models_dir)]))
    return 0


def run_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from priorforge.cli import CLIError
    from training.zoo_report import learning_curve, report

    if args.curve is not None:
        if not (Path(args.curve) / "history.jsonl").is_file():
            raise CLIError(f"--curve: {args.curve} has no history.jsonl")
        try:
            at = [int(x) for x in args.at.split(",")]
        except ValueError:
            raise CLIError(f"--at must be whole step numbers separated by commas, got {args.at!r}") from None
        print(learning_curve(args.curve, at))
        return 0
    if not Path(args.models_dir).is_dir():
        raise CLIError(f"--models-dir: {args.models_dir} is not a folder")
    print(report(args.models_dir))
    return 0
