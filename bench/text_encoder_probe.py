"""How much of a prompt's class and attributes the sentence encoder itself carries, per kind of phrasing.

A text model can only follow what its encoder tells apart. This probe fits classifiers on the embeddings of the
TRAINING captions of a built-in captioned set (caption pools drawn as training draws them,
``training.captions.caption_pool``) and scores them on prompts of each phrasing kind the text-alignment metrics
use (training templates, held-out templates, held-out templates with held-out synonyms). Two probes:

- ``linear``: multinomial logistic regression (scikit-learn) on the raw 384-D embeddings;
- ``knn``: the majority label of the 15 nearest training captions by cosine similarity.

A probe's accuracy on held-out synonyms is an estimate of the ceiling a decoder conditioned on this encoder can
reach with such prompts: no image model is involved, only the encoder and the training captions.

    OMP_NUM_THREADS=1 python bench/text_encoder_probe.py --datasets fashion-mnist-captions,cifar10-captions
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/text_encoder_probe.py` from anywhere

from bench.common import emit, machine_info, markdown_table, pick_device  # noqa: E402
from training.captions import CAPTIONS_PER_COMBINATION, PHRASINGS, caption_pool, prompt_text  # noqa: E402
from training.text_eval import CLASS_NAMES  # noqa: E402

KINDS = ("train", "heldout", "heldout-synonyms")
NEIGHBOURS = 15


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--datasets", default=",".join(PHRASINGS), help=f"any of {', '.join(PHRASINGS)}")
    p.add_argument("--per-combination", type=int, default=CAPTIONS_PER_COMBINATION,
                   help="training captions per class and attribute combination (training uses 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    unknown = sorted(set(args.datasets.split(",")) - set(PHRASINGS) - {""})
    if unknown:
        p.error(f"--datasets: unknown {unknown}; valid: {', '.join(PHRASINGS)}")
    if args.per_combination < 1:
        p.error("--per-combination: must be at least 1")
    return args


def combinations(dataset: str) -> list[tuple[str, dict[str, str]]]:
    """Every (class name, attribute values) of a captioned set."""
    ph = PHRASINGS[dataset]
    combos = itertools.product(*(ph.values[a] for a in ph.attributes))
    return [(cls, dict(zip(ph.attributes, combo))) for cls, combo in itertools.product(CLASS_NAMES[dataset], combos)]


def training_captions(dataset: str, per_combination: int, seed: int) -> tuple[list[str], list[dict[str, str]]]:
    """The training caption pools (as ``build_captions`` draws them) and each caption's labels."""
    ph = PHRASINGS[dataset]
    texts, labels = [], []
    for i, (cls, values) in enumerate(combinations(dataset)):
        for text in caption_pool(ph, cls, values, per_combination, np.random.default_rng([seed, i])):
            texts.append(text)
            labels.append({"class": cls, **values})
    return texts, labels


def probe_prompts(dataset: str, kind: str) -> tuple[list[str], list[dict[str, str]]]:
    """Every template of the kind (training: the first ten) for every class and attribute combination."""
    ph = PHRASINGS[dataset]
    n_templates = 10 if kind == "train" else len(ph.heldout_templates)
    texts, labels = [], []
    for cls, values in combinations(dataset):
        for variant in range(n_templates):
            texts.append(prompt_text(dataset, cls, values, kind, variant=variant))
            labels.append({"class": cls, **values})
    return texts, labels


def per_value(names: list[str], truth: np.ndarray, predicted: np.ndarray) -> dict[str, dict[str, Any]]:
    """For each true value: the probe's accuracy on its prompts and the value it predicts most often."""
    out = {}
    for i, name in enumerate(names):
        mine = predicted[truth == i]
        if len(mine):
            out[name] = {"accuracy": round(float((mine == i).mean()), 3),
                         "most_often": names[int(np.bincount(mine, minlength=len(names)).argmax())]}
    return out


def probe_dataset(dataset: str, per_combination: int, seed: int) -> list[dict[str, Any]]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    from generation.text_encoder import encode_captions_cached

    train_texts, train_labels = training_captions(dataset, per_combination, seed)
    train_x = encode_captions_cached(train_texts).double().numpy()
    targets = ["class", *PHRASINGS[dataset].attributes]
    prompts = {kind: probe_prompts(dataset, kind) for kind in KINDS}
    embedded = {kind: encode_captions_cached(texts).double().numpy() for kind, (texts, _) in prompts.items()}
    rows = []
    for target in targets:
        names = sorted({lab[target] for lab in train_labels})
        train_y = np.array([names.index(lab[target]) for lab in train_labels])
        linear = LogisticRegression(max_iter=2000, C=1.0).fit(train_x, train_y)
        knn = KNeighborsClassifier(n_neighbors=NEIGHBOURS, metric="cosine").fit(train_x, train_y)
        for kind in KINDS:
            y = np.array([names.index(lab[target]) for lab in prompts[kind][1]])
            x = embedded[kind]
            predicted = linear.predict(x)
            rows.append({"dataset": dataset, "target": target, "phrasing": kind, "prompts": len(y),
                         "chance": round(1 / len(names), 3),
                         "linear": round(float((predicted == y).mean()), 3),
                         "knn": round(float((knn.predict(x) == y).mean()), 3),
                         "training_captions": len(train_texts),
                         "linear_per_value": per_value(names, y, predicted)})
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = [row for dataset in args.datasets.split(",") if dataset
            for row in probe_dataset(dataset, args.per_combination, args.seed)]
    table = markdown_table(["dataset", "target", "phrasing", "prompts", "chance", "linear probe", "15-NN probe"],
                           [[r["dataset"], r["target"], r["phrasing"], r["prompts"], f"{r['chance']:.0%}",
                             f"{r['linear']:.1%}", f"{r['knn']:.1%}"] for r in rows])
    emit(table, {"rows": rows, "per_combination": args.per_combination, "seed": args.seed,
                 "machine": machine_info(pick_device("cpu"))}, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
