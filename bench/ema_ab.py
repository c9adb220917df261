"""The weight average against the raw weights of the same run: an A/B at the same steps.

A code-generator AAE trained with ``ema_decay`` ships the average of its code generator's and decoder's
weights, and keeps the raw ones in its training state (``extra/raw/...`` in ``training_state.safetensors``).
This script evaluates both with the zoo's own evaluation (:func:`training.zoo.evaluate`: 5,000 samples, the
text-alignment figures per phrasing) and prints them side by side: what the average changes, and nothing else.

    python bench/ema_ab.py --run runs/zoo/cifar10-text --recipe cifar10-text --data-root ../shared/data \\
        --json-out bench/results/text/cifar10-text-ema-ab.json

The averaged model's figures are read from ``--averaged-metrics`` (the zoo build's metrics.json of the
exported model) when given, else evaluated here too.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

HEADLINES = ("text_class_accuracy[heldout]", "text_class_accuracy[heldout-synonyms]", "text_attribute_accuracy[heldout]",
             "text_diversity_median[heldout]", "text_diversity_min[heldout]", "text_feature_fid[heldout]")


def raw_checkpoint(run: Path, out: Path) -> Path:
    """A copy of the run's checkpoint whose code generator and decoder hold the raw (not averaged) weights."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(run / "training_state.safetensors"))
    raw = {key[len("extra/raw/"):]: value for key, value in tensors.items() if key.startswith("extra/raw/")}
    if not raw:
        raise SystemExit(f"--run: {run} holds no raw weights (trained without ema_decay, or not finished)")
    model = load_file(str(run / "model.safetensors"))
    unknown = sorted(set(raw) - set(model))
    if unknown:
        raise SystemExit(f"--run: raw weights {unknown[:3]} are not in the model")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "config.json", out / "config.json")
    save_file({**model, **{key: value.to(model[key].dtype) for key, value in raw.items()}},
              str(out / "model.safetensors"))
    return out


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for phrasing, values in (metrics.get("text_alignment_by_phrasing") or {}).items():
        for key, value in values.items():
            flat[f"{key}[{phrasing}]"] = value
    return {key: flat.get(key, metrics.get(key)) for key in HEADLINES}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished training folder of an aae-cg recipe with ema_decay")
    p.add_argument("--recipe", required=True, help="the zoo recipe it was trained by (for its evaluation)")
    p.add_argument("--data-root", required=True)
    p.add_argument("--averaged-metrics", default=None, help="metrics.json of the exported averaged model")
    p.add_argument("--json-out", default=None)
    p.add_argument("--tiny", action="store_true", help="the zoo's 40-sample evaluation: checks the script runs")
    args = p.parse_args(argv)

    from training.zoo import RECIPES, evaluate

    recipes = {recipe.name: recipe for recipe in RECIPES}
    if args.recipe not in recipes:
        p.error(f"--recipe: unknown {args.recipe!r}; one of {', '.join(recipes)}")
    recipe, run = recipes[args.recipe], Path(args.run)
    work = Path(tempfile.mkdtemp(prefix="priorforge-ema-ab-"))
    try:
        rows = {"raw": evaluate(recipe, raw_checkpoint(run, work / "raw"), args.data_root, tiny=args.tiny)}
        if args.averaged_metrics:
            saved = json.loads(Path(args.averaged_metrics).read_text())
            rows["averaged"] = saved.get("evaluation", saved)  # an exported model's metrics.json nests it
        else:
            rows["averaged"] = evaluate(recipe, run, args.data_root, tiny=args.tiny)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    steps = json.loads((run / "training_state.json").read_text())["progress"]["step"]
    table = {name: headline(metrics) for name, metrics in rows.items()}
    print(f"{args.recipe}, {steps} steps: the raw weights against their average")
    print("| metric | raw | averaged |")
    print("| --- | --- | --- |")
    for key in HEADLINES:
        print(f"| {key} | {table['raw'][key]} | {table['averaged'][key]} |")
    result = {"benchmark": "ema_ab", "recipe": args.recipe, "steps": steps, "headline": table,
              "command": " ".join(["ema_ab.py", *(argv if argv is not None else sys.argv[1:])])}
    print("BENCH_JSON " + json.dumps(result))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps({**result, "metrics": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
