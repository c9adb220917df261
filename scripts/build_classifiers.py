"""Trains the evaluation classifiers that ship in models/classifiers/ (one per built-in data set at its own
image size), with the settings an evaluation would train them with (:func:`training.classifier.default_settings`,
seed 0), stores the weights in fp16 beside the JSON the cache uses, measures each one's test accuracy with the
stored (fp16) weights and writes models/classifiers/README.md.

Why: an evaluation on a fresh install used to train its classifier first (600-1,200 steps, minutes on a CPU);
with these files it loads one (training/classifier.py looks in models/classifiers/ after the cache).

    .venv/bin/python scripts/build_classifiers.py --data-root ../shared/data
    .venv/bin/python scripts/build_classifiers.py --data-root ../shared/data --only digits mnist
    .venv/bin/python scripts/build_classifiers.py --data-root ../shared/data --only fashion-mnist --from-cache

``--from-cache`` ships the classifier an evaluation on this machine already trained into the cache, when it was
trained with exactly the default settings (the same network the script would train), instead of training again.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPES = {"digits": (1, 28, 28), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"),
                   help="folder of mnist, fashion-mnist and cifar10 (digits needs none)")
    p.add_argument("--only", nargs="+", choices=sorted(SHAPES), help="build these only (the README keeps the others)")
    p.add_argument("--out", default=str(REPO / "models" / "classifiers"))
    p.add_argument("--max-steps", type=int, default=None, help="a smoke run of the script (not for shipping)")
    p.add_argument("--from-cache", action="store_true",
                   help="ship the cache's classifier when it was trained with the default settings (else train)")
    args = p.parse_args(argv)

    import torch

    from training.classifier import (FEATURE_DIM, FORMAT_VERSION, _load_cached, _save, classifier_accuracy,
                                     classifier_path, default_settings, match_shape, train_classifier)
    from training.data import load_dataset

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.only or list(SHAPES):
        shape = SHAPES[name]
        size = {"image_size": shape[1], "channels": shape[0]}
        root = None if name == "digits" else args.data_root
        train = match_shape(load_dataset(name, root, "train", **size), shape)
        test = match_shape(load_dataset(name, root, "test", **size), shape)
        settings = default_settings(name, shape)
        if args.max_steps:
            settings = type(settings)(**{**asdict(settings), "max_steps": args.max_steps})
        cached = _load_cached(classifier_path(name, shape), torch.device("cpu"), asdict(settings)) \
            if args.from_cache and not args.max_steps else None
        started, cpu = time.perf_counter(), time.process_time()
        model = cached.model if cached is not None else train_classifier(train, settings, torch.device("cpu"))
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
        if cached is not None:
            print(f"{name}: the cache's classifier (trained with the default settings) is shipped", flush=True)
        path = out / classifier_path(name, shape).name
        info = {"format_version": FORMAT_VERSION, "dataset": name, "image_shape": list(shape),
                "class_names": list(train.class_names), "num_classes": len(train.class_names), "width": 32,
                "feature_dim": FEATURE_DIM, "test_accuracy": round(classifier_accuracy(model, test), 5),
                "test_images": len(test), "train_images": len(train), "settings": asdict(settings)}
        _save(model, path, info, dtype=torch.float16)
        # the accuracy of what ships: the fp16 weights read back the way an evaluation reads them
        loaded = _load_cached(path, torch.device("cpu"), {})
        assert loaded is not None, path
        info["fp32_test_accuracy"] = info["test_accuracy"]
        info["test_accuracy"] = round(classifier_accuracy(loaded.model, test), 5)
        info["built_by"] = {"command": "python scripts/build_classifiers.py --data-root ../shared/data"
                                       + (" --from-cache" if cached is not None else ""),
                            "weights": "float16", "torch": torch.__version__, "machine": platform.machine(),
                            **({"trained_by": "an evaluation, into the cache"} if cached is not None else
                               {"train_seconds": round(seconds, 1), "train_cpu_seconds": round(cpu_seconds, 1)})}
        (path.with_suffix(".json")).write_text(json.dumps(info, indent=2) + "\n")
        for shipped in (path, path.with_suffix(".json")):
            shipped.chmod(0o644)  # the cache's temporary files are private; these are part of the repository
        print(f"{name} {'x'.join(map(str, shape))}: test accuracy {info['test_accuracy']:.4f} (fp32 "
              f"{info['fp32_test_accuracy']:.4f}), {seconds:.0f} s, {path.stat().st_size // 1024} KiB", flush=True)
    write_readme(out)
    return 0


def write_readme(out: Path) -> None:
    rows = []
    for info_path in sorted(out.glob("*.json")):
        info = json.loads(info_path.read_text())
        weights = info_path.with_suffix(".safetensors")
        built = info.get("built_by", {})
        rows.append(f"| `{weights.name}` | {info['dataset']} | {'x'.join(map(str, info['image_shape']))} | "
                    f"{info['settings']['epochs']} epochs, min {info['settings']['min_steps']} steps | "
                    f"{info['train_images']} / {info['test_images']} | {100 * info['test_accuracy']:.2f}% | "
                    + (f"{built['trained_by']} | " if "trained_by" in built else
                       f"{built.get('train_seconds', '?')} s ({built.get('train_cpu_seconds', '?')} CPU s) | ") +
                    f"{weights.stat().st_size // 1024} KiB |")
    shipped = {json.loads(p.read_text())["dataset"] for p in out.glob("*.json")}
    missing = [name for name in SHAPES if name not in shipped]
    later = (f"\nNot built yet: {', '.join(missing)} (`--only NAME` builds one). Until one ships, the first "
             "evaluation on that data set trains its classifier into the cache, as before (a training run's page "
             "shows its steps).\n") if missing else ""
    text = f"""# Evaluation classifiers

The classifier each built-in data set's evaluation reads generated images with (`training/classifier.py`:
label accuracy, and the feature space of `feature_fid` and precision/recall), trained with the default settings
(seed 0) and stored in fp16. `get_classifier` looks here after the cache (`~/.cache/priorforge/classifiers`,
or `$PRIORFORGE_CACHE/classifiers`), so an evaluation on a fresh install loads one in well under a second
instead of training it first. Another image size (a run with `image_size` 32 on MNIST), an uploaded data set or
explicit `epochs`/`max_steps` still train one, once, into the cache.

Built by

```bash
.venv/bin/python scripts/build_classifiers.py --data-root ../shared/data
```

Test accuracy is measured on the whole test split with the fp16 weights as shipped (`fp32_test_accuracy` in
each JSON is the network before rounding); training time on the machine that built them (2 shared CPU cores).

| file | data set | image | training | train / test images | test accuracy | training time | size |
| --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}
{later}"""
    (out / "README.md").write_text(text)


if __name__ == "__main__":
    sys.exit(main())
