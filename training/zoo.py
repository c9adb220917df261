"""The shipped models ("the zoo"): one recipe per model, and the build that retrains, evaluates, exports and
describes each of them.

``priorforge zoo build --data-root ../shared/data`` (what ``scripts/build-models.sh`` runs) does, for every
recipe (or the ones named with ``--only``):

1. **train**: runs the recipe's ``priorforge train`` command in a subprocess with ``OMP_NUM_THREADS=1``, so
   its budget is CPU minutes of one thread, the same on a busy and an idle machine; ``--jobs 2`` trains two
   at a time. The command is recorded, as run, in the card;
2. **evaluate**: the project's own evaluation on 5,000 samples (:func:`training.evaluate.evaluate_model`;
   for text models also the text-alignment metrics per phrasing: training wording, held-out templates,
   held-out templates and synonyms, :mod:`training.text_eval`);
3. **export**: an inference-only, half-precision copy into ``models/<name>/`` (:mod:`generation.export`);
4. **card**: ``card.json`` (what the service's Models page and ``GET /api/v1/models`` show), ``README.md``
   (the same for people) and ``samples.png`` (one row per class, cluster or example prompt, drawn from the
   exported model with fixed seeds).

``--tiny`` runs the same steps with a few training steps, tiny networks and a small evaluation, into the
folders given: a test uses it on a tiny copy of the data sets.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from priorforge_spec.checkpoint import CARD_FILE, read_card
from priorforge_spec.conditions import ConditionKind

if TYPE_CHECKING:
    from training.captions import PhrasingKind

CARD_README = "README.md"
EVAL_SAMPLES = 5000
TINY_EVAL_SAMPLES = 40
TEXT_PHRASINGS: tuple[PhrasingKind, ...] = ("train", "heldout", "heldout-synonyms")
# tiny mode: every width-like option shrunk, two training steps
TINY_OPTIONS = {"base_channels": 4, "hidden_dim": 16, "disc_hidden": 16, "code_disc_hidden": [16],
                "coupling_hidden": 8, "flow_blocks": 1}


@dataclass(frozen=True)
class Recipe:
    """How one shipped model is made.

    Args:
        name: the model's name in the service and its folder under ``models/``.
        title: one line for people.
        description: two or three sentences: what it makes and how well.
        backend / dataset / condition: as for ``priorforge train``.
        cpu_minutes: the training budget (``--max-cpu-minutes``, one thread).
        options: model-config fields (``--set``).
        hparams: training hyper-parameters (``--hparam``).
        examples: what the form offers to try: labels, or 4-6 prompts for a text model.
        default: the model a job gets when it names none (exactly one recipe).
        keep_encoder: the export keeps the encoder, so ``priorforge interpolate`` / ``mix`` work with it.
        clusters: cluster models only: how many clusters the model learns (``--clusters``).
        known_limits: what a person sees that no metric here states (shown with the measured caveats).
    """

    name: str
    title: str
    description: str
    backend: str
    dataset: str
    condition: str
    cpu_minutes: float
    options: dict[str, Any] = field(default_factory=dict)
    hparams: dict[str, Any] = field(default_factory=dict)
    examples: tuple[str, ...] = ()
    default: bool = False
    keep_encoder: bool = False
    clusters: int = 10
    known_limits: tuple[str, ...] = ()

    def train_args(self, data_root: str, out: str, tiny: bool = False) -> list[str]:
        """The ``priorforge train`` arguments (after ``priorforge``)."""
        budget = ["--max-steps", "2"] if tiny else ["--max-cpu-minutes", _number(self.cpu_minutes), "--epochs", "100"]
        args = ["train", "--model", self.backend, "--dataset", self.dataset, "--condition", self.condition,
                "--data-root", data_root, "--out", out, *budget, "--batch-size", "16" if tiny else "64",
                "--seed", "0"]
        if self.condition == "cluster":
            args += ["--clusters", str(self.clusters)]
        options = {**self.options, **({k: v for k, v in TINY_OPTIONS.items() if k in self.options} if tiny else {})}
        for key, value in options.items():
            args += ["--set", f"{key}={json.dumps(value, separators=(',', ':'))}"]
        for key, value in self.hparams.items():
            args += ["--hparam", f"{key}={json.dumps(value)}"]
        return [*args, "--sample-every", "0", "--checkpoint-every", "0" if tiny else "1000", "--no-eval", "--quiet"]


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


MNIST_SIZES = {"base_channels": 32, "hidden_dim": 512, "disc_hidden": 512}
# text AAEs: conditioning augmentation, and the diversity-sensitive term that keeps CG from ignoring its noise
# (docs/models.md, "Noise that matters"); its cap sits at about 80% of the data set's real same-class variety
# (CIFAR-10 0.48 -> 0.4; Fashion-MNIST 0.34 -> 0.27: a cap above the real variety cost class and tone accuracy)
TEXT_AAE_HPARAMS = {"text_noise": 0.2, "diversity_weight": 4.0}
FASHION_PROMPTS = ("a dark, wide pullover", "a light, narrow dress", "a pair of dark trousers", "a pale sneaker",
                   "a dark ankle boot", "a light handbag")
CIFAR_PROMPTS = ("a red car", "a photo of a white ship", "a green frog", "a brown horse", "a blue airplane",
                 "a yellow truck")

RECIPES: tuple[Recipe, ...] = (
    Recipe(
        name="mnist", title="Handwritten digits (MNIST), by class",
        description="The code-generator AAE with a class label: ask for a digit 0-9.",
        backend="aae-cg", dataset="mnist", condition="class", cpu_minutes=25, options=dict(MNIST_SIZES),
        examples=("7", "3", "0"), default=True, keep_encoder=True),
    Recipe(
        name="fashion-text", title="Fashion-MNIST garments from a text prompt",
        description="The code-generator AAE conditioned on a sentence: name a garment, and optionally its tone "
                    "(dark or light) and cut (wide or narrow).",
        backend="aae-cg", dataset="fashion-mnist-captions", condition="text", cpu_minutes=60,
        # the attribute head at a third of its default weight raised the tone followed from 83% to 93% and kept
        # the garment (96% to 97%); at full weight it cost garment and speckled (docs/results.md)
        options={**MNIST_SIZES, "aux_classes": 10, "code_norm": "layer", "aux_attributes": 4},
        hparams={**TEXT_AAE_HPARAMS, "diversity_weight": 2.0, "diversity_cap": 0.27, "aux_attribute_weight": 0.3},
        examples=FASHION_PROMPTS),
    Recipe(
        name="cifar10-text", title="CIFAR-10 photos from a text prompt (32x32 colour)",
        description="The code-generator AAE conditioned on a sentence naming one of CIFAR-10's ten kinds of "
                    "object and, optionally, its colour.",
        backend="aae-cg", dataset="cifar10-captions", condition="text", cpu_minutes=80,
        # the weight average (ema_decay) raised the object followed from 69% to 85% and variety from 0.48 to 0.63;
        # the attribute head (aux_attributes) the colour from 39% to 73%, and at half its weight the least varied
        # prompt went from 0.38 to 0.44 (docs/results.md, "The text models against their targets")
        options={**MNIST_SIZES, "aux_classes": 10, "aux_attributes": 11, "upsample": "nearest"},
        hparams={**TEXT_AAE_HPARAMS, "ema_decay": 0.999, "aux_attribute_weight": 0.5},
        examples=CIFAR_PROMPTS,
        known_limits=("Images are 32x32 and blurry: colour and rough shape come through, details do not.",)),
    Recipe(
        name="mnist-clusters", title="Handwritten digits (MNIST), by learned cluster",
        description="The unsupervised code-generator AAE: trained without labels, it found 30 clusters of its "
                    "own; ask for a cluster (its card says which digit each one holds).",
        backend="aae-cg", dataset="mnist", condition="cluster", cpu_minutes=15, options=dict(MNIST_SIZES),
        clusters=30, examples=("0", "4", "8")),
    Recipe(
        name="fashion-glf", title="Fashion-MNIST garments by class, generative latent flow",
        description="The GLF backend (an autoencoder and a normalising flow on its codes) with a class label: "
                    "stable, non-adversarial training and fast sampling.",
        backend="glf", dataset="fashion-mnist", condition="class", cpu_minutes=15,
        options={"base_channels": 32, "hidden_dim": 512}, examples=("Sneaker", "Bag", "Dress"), keep_encoder=True),
    Recipe(
        name="fashion-text-glf", title="Fashion-MNIST garments from a text prompt, generative latent flow",
        description="The GLF backend with the sentence as the flow prior's condition: the same prompts as "
                    "fashion-text, from a non-adversarial model (an autoencoder and a conditional flow on its codes).",
        backend="glf", dataset="fashion-mnist-captions", condition="text", cpu_minutes=15,
        # conditioning augmentation raised the garment followed (64% to 66%, unseen words 37% to 46%) and cost
        # tone (70% to 62%) and cut (70% to 58%); the conditioning network raised the garment to 71% (unseen
        # words 52%) (docs/results.md)
        options={"base_channels": 32, "hidden_dim": 512, "condition_features": 64}, hparams={"text_noise": 0.2},
        examples=FASHION_PROMPTS,
        keep_encoder=True),
    Recipe(
        name="cifar10-text-glf", title="CIFAR-10 photos from a text prompt, generative latent flow",
        description="The GLF backend with the sentence as the flow prior's condition: the same prompts as "
                    "cifar10-text, from a non-adversarial model (an autoencoder and a conditional flow on its codes).",
        backend="glf", dataset="cifar10-captions", condition="text", cpu_minutes=60,
        options={"base_channels": 32, "hidden_dim": 512}, examples=CIFAR_PROMPTS, keep_encoder=True,
        known_limits=("Images are 32x32 and blurry: colour and rough shape come through, details do not.",)),
)


def recipe_names() -> list[str]:
    return [r.name for r in RECIPES]


def select(names: list[str] | None) -> list[Recipe]:
    """The recipes named (all of them for None); a ValueError lists the valid names."""
    if not names:
        return list(RECIPES)
    unknown = sorted(set(names) - set(recipe_names()))
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; the shipped models are: {', '.join(recipe_names())}")
    return [r for r in RECIPES if r.name in names]


# -- 1. train -----------------------------------------------------------------------------------------
def train(recipe: Recipe, data_root: str, work_dir: Path, tiny: bool, log=print,
          reuse: bool = False) -> dict[str, Any]:
    """Run the recipe's training command; returns what the card records about it. With ``reuse``, a finished
    training of the same recipe already in ``work_dir`` is taken instead (its recorded settings must match)."""
    out = work_dir / recipe.name
    args = recipe.train_args(data_root, str(out), tiny)
    command = "OMP_NUM_THREADS=1 priorforge " + shlex.join(args)
    if reuse and (out / "metrics.json").is_file():
        check_trained_by(recipe, out, tiny)
        metrics = json.loads((out / "metrics.json").read_text())
        log(f"[{recipe.name}] reusing the finished training in {out}")
        return {"command": command, "steps": metrics["steps"], "cpu_seconds": metrics["cpu_seconds"],
                "wall_seconds": metrics["train_seconds"], "budget_cpu_minutes": recipe.cpu_minutes}
    log(f"[{recipe.name}] training: {command}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.perf_counter()
    with open(work_dir / f"{recipe.name}.train.log", "w") as log_file:
        done = subprocess.run([sys.executable, "-m", "priorforge.cli", *args], env=env, stdout=log_file,
                              stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = (work_dir / f"{recipe.name}.train.log").read_text()[-2000:]
        raise RuntimeError(f"[{recipe.name}] training failed (exit {done.returncode}):\n{tail}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"command": command, "steps": metrics["steps"], "cpu_seconds": metrics["cpu_seconds"],
            "wall_seconds": round(time.perf_counter() - started, 1), "budget_cpu_minutes": recipe.cpu_minutes}


def check_trained_by(recipe: Recipe, folder: Path, tiny: bool) -> None:
    """Raise unless the checkpoint in ``folder`` was trained with ``recipe``'s settings."""
    config = json.loads((folder / "config.json").read_text())
    training = config.get("training", {})
    expected_cpu = None if tiny else recipe.cpu_minutes * 60
    problems = []
    if config.get("backend") != recipe.backend or config.get("condition") != recipe.condition:
        problems.append(f"a {config.get('backend')}/{config.get('condition')} model")
    if config.get("dataset") != recipe.dataset:
        problems.append(f"data set {config.get('dataset')!r}")
    if training.get("max_cpu_seconds") != expected_cpu or training.get("seed") != 0:
        problems.append(f"budget {training.get('max_cpu_seconds')} CPU s, seed {training.get('seed')}")
    if recipe.condition == "cluster" and config.get("model_config", {}).get("num_classes") != recipe.clusters:
        problems.append(f"{config.get('model_config', {}).get('num_classes')} clusters")
    options = {k: v for k, v in recipe.options.items() if not tiny or k not in TINY_OPTIONS}
    for key, value in options.items():
        saved = config.get("model_config", {}).get(key)
        if json.dumps(saved) != json.dumps(value):
            problems.append(f"{key}={saved!r}")
    for key, value in recipe.hparams.items():
        if training.get("hparams", {}).get(key) != value:
            problems.append(f"hparam {key}={training.get('hparams', {}).get(key)!r}")
    if problems:
        raise ValueError(f"[{recipe.name}] {folder} was not trained by this recipe ({'; '.join(problems)}); "
                         "remove it or build without reuse")


# -- 2. evaluate --------------------------------------------------------------------------------------
def evaluate(recipe: Recipe, checkpoint: Path, data_root: str, tiny: bool) -> dict[str, Any]:
    """The project's evaluation of a trained checkpoint (5,000 samples; text models per phrasing too)."""
    import torch

    from generation.checkpoint import load_checkpoint
    from priorforge_spec.datasets import image_dataset_name
    from training.evaluate import evaluate_model
    from training.text_eval import alignment_prompts, captioned_name, text_alignment_metrics

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model, info = load_checkpoint(checkpoint)
    n = TINY_EVAL_SAMPLES if tiny else EVAL_SAMPLES
    if tiny:  # a classifier of a few steps: the tiny data sets are too small for the default epochs
        from training.classifier import get_classifier

        get_classifier(image_dataset_name(info.dataset), data_root, "cpu", max_steps=5, quiet=True,
                       image_shape=model.config.image_shape)
    started = time.process_time()
    metrics = evaluate_model(model, dataset=info.dataset, class_names=info.class_names, data_root=data_root,
                             device="cpu", n_samples=n, seed=0)
    captioned = captioned_name(info.dataset)
    if recipe.condition == "text" and captioned:
        prompts = len(alignment_prompts(captioned))
        per_prompt = max(1, math.ceil(n / prompts))
        metrics["text_alignment_by_phrasing"] = {
            phrasing: text_alignment_metrics(model, dataset=info.dataset, data_root=data_root, device="cpu", seed=0,
                                             n_per_prompt=per_prompt, phrasing=phrasing)
            for phrasing in TEXT_PHRASINGS}
    metrics["evaluation_cpu_seconds"] = round(time.process_time() - started, 1)
    return metrics


def summary(recipe: Recipe, metrics: dict[str, Any]) -> dict[str, Any]:
    """The few figures a card and ``GET /api/v1/models`` show."""
    keys = ("label_accuracy", "feature_fid", "precision", "recall", "cluster_sample_purity",
            "cluster_classes_covered", "cluster_nmi", "cluster_accuracy")
    out = {k: _round(metrics[k]) for k in keys if metrics.get(k) is not None}
    for phrasing, m in (metrics.get("text_alignment_by_phrasing") or {}).items():
        out[f"text_class_accuracy[{phrasing}]"] = _round(m["text_class_accuracy"])
        for attr, value in m["text_attribute_accuracy_per_attribute"].items():
            out[f"text_{attr}_accuracy[{phrasing}]"] = _round(value)
        if phrasing == "heldout":  # variety and image quality: one phrasing says it (the others agree)
            for key in ("text_diversity_median", "text_diversity_min", "text_feature_fid"):
                if m.get(key) is not None:
                    out[f"{key}[{phrasing}]"] = _round(m[key])
    return out


# below these a card says, in words, that the model falls short (the bars for a model worth showing)
DIVERSITY_BAR, DIVERSITY_FLOOR, CLASS_BAR, WORDS_BAR, ATTRIBUTE_BAR, PURITY_BAR = 0.6, 0.4, 0.8, 0.6, 0.6, 0.8


def caveats(recipe: Recipe, metrics: dict[str, Any]) -> list[str]:
    """Where the model falls short by its own evaluation, in plain words (empty when it clears every bar)."""
    out = []
    label = metrics.get("label_accuracy")
    if recipe.condition == "class" and isinstance(label, float) and label < CLASS_BAR + 0.1:
        out.append(f"It draws the class asked for {label:.0%} of the time.")
    purity = metrics.get("cluster_sample_purity")
    if recipe.condition == "cluster" and isinstance(purity, float) and purity < PURITY_BAR:
        out.append(f"Its clusters mix digits: {purity:.0%} of a cluster's samples are its main digit.")
    by_phrasing = metrics.get("text_alignment_by_phrasing") or {}
    held = by_phrasing.get("heldout") or {}
    if held:
        median, low = held.get("text_diversity_median"), held.get("text_diversity_min")
        if median is not None and median < DIVERSITY_BAR:
            how = "look alike" if median < DIVERSITY_FLOOR else "vary less than real images do"
            out.append(f"Samples of one prompt {how}: their variety is {median:.2f} of real images' "
                       f"(1.0 = as varied as real images of that kind).")
        elif low is not None and low < DIVERSITY_FLOOR:
            lowest = [f'"{prompt}" {value:.2f}' for prompt, value in held.get("text_diversity_lowest", [])
                      if value < DIVERSITY_FLOOR]
            out.append(f"Some prompts give near-copies (variety against real images of their kind): {', '.join(lowest)}."
                       if lowest else f"Some prompts give near-copies (the least varied prompt: {low:.2f} of real "
                                      "images' variety).")
        if held["text_class_accuracy"] < CLASS_BAR:
            out.append(f"It draws the object a prompt names {held['text_class_accuracy']:.0%} of the time.")
        for attr, value in held["text_attribute_accuracy_per_attribute"].items():
            if value < ATTRIBUTE_BAR:
                out.append(f"It follows the {attr} word {value:.0%} of the time.")
    words = (by_phrasing.get("heldout-synonyms") or {}).get("text_class_accuracy")
    if words is not None and words < WORDS_BAR:
        out.append(f"Words outside its training vocabulary often miss: {words:.0%} of prompts with held-out "
                   "words get the object right.")
    return out + list(recipe.known_limits)


def per_class_table(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Text models: per class, the share of held-out prompts drawn as that class and their variety."""
    held = (metrics.get("text_alignment_by_phrasing") or {}).get("heldout") or {}
    accuracy, variety = held.get("text_class_accuracy_per_class") or {}, held.get("text_diversity_per_class") or {}
    return {cls: {"class_accuracy": accuracy[cls], **({"diversity": variety[cls]} if cls in variety else {})}
            for cls in accuracy}


def _round(x: Any) -> Any:
    return round(x, 4) if isinstance(x, float) else x


def cluster_names(metrics: dict[str, Any]) -> dict[str, str]:
    """Cluster id -> what its samples mostly are ("mostly 7 (58%)"), from the evaluation."""
    out = {}
    for k, entry in (metrics.get("cluster_alignment") or {}).items():
        out[k] = f"mostly {entry['majority_class']} ({entry['purity']:.0%})"
    return out


def earlier_evaluation(folder: Path, training: dict[str, Any], tiny: bool) -> dict[str, Any] | None:
    """The evaluation an earlier build stored for this very training (same steps and CPU time), or None."""
    card, path = read_card(folder), folder / "metrics.json"
    if card is None or bool(card.get("tiny")) != tiny or not path.is_file():
        return None
    stored = json.loads(path.read_text())
    earlier = stored.get("training") or {}
    same = all(earlier.get(k) == training.get(k) for k in ("steps", "cpu_seconds", "command"))
    return stored.get("evaluation") if same else None


# -- 3. export and 4. card --------------------------------------------------------------------------
def export_and_describe(recipe: Recipe, checkpoint: Path, models_dir: Path, training: dict[str, Any],
                        metrics: dict[str, Any], tiny: bool) -> Path:
    """Export the checkpoint into ``models_dir/<name>`` and write its card and sample grid."""
    from generation.checkpoint import load_checkpoint, write_json_atomic
    from generation.export import export_checkpoint, folder_size

    target = models_dir / recipe.name
    export = export_checkpoint(checkpoint, target, precision="fp16", keep_encoder=recipe.keep_encoder)
    write_json_atomic(target / "metrics.json", {"training": training, "evaluation": metrics})
    model, info = load_checkpoint(target)
    write_sample_grid(model, info, recipe, target / "samples.png")
    card = {
        "name": recipe.name, "title": recipe.title, "description": recipe.description,
        "backend": recipe.backend, "condition": recipe.condition, "dataset": info.dataset,
        "image_shape": list(info.image_shape), "default": recipe.default, "examples": list(recipe.examples),
        "labels": list(info.class_names) if recipe.condition == "class" else [],
        "clusters": cluster_names(metrics) if recipe.condition == "cluster" else {},
        "metrics": summary(recipe, metrics), "caveats": caveats(recipe, metrics),
        "per_class": per_class_table(metrics), "evaluation_samples": TINY_EVAL_SAMPLES if tiny else EVAL_SAMPLES,
        "training": training,
        "export": {"command": f"priorforge export {checkpoint} --out models/{recipe.name}"
                              + (" --keep-encoder" if recipe.keep_encoder else ""),
                   "precision": export["precision"], "max_abs_pixel_diff": export["max_abs_pixel_diff"]},
        "keeps_encoder": recipe.keep_encoder,
        "samples": "samples.png", "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tiny": tiny,
    }
    (target / CARD_README).write_text(render_card(card))
    write_json_atomic(target / CARD_FILE, card)
    card["size_bytes"] = folder_size(target)
    write_json_atomic(target / CARD_FILE, card)
    return target


def sample_grid_rows(recipe: Recipe, model, info) -> list[tuple[str, Any]]:
    """``(row caption, Condition)`` per row of a card's grid: every class or cluster, or each example prompt."""
    from generation.base import Condition
    from generation.text_encoder import encode_prompt_for_checkpoint

    if recipe.condition in ("class", "cluster"):
        names = info.class_names if recipe.condition == "class" else [str(k) for k in range(model.config.num_classes)]
        kind: ConditionKind = "class" if recipe.condition == "class" else "cluster"
        return [(name, Condition(kind, index=k)) for k, name in enumerate(names)]
    if recipe.condition == "text":
        return [(p, Condition("text", embedding=encode_prompt_for_checkpoint(model, info, p), prompt=p))
                for p in recipe.examples]
    return [("", Condition("none"))]


def write_sample_grid(model, info, recipe: Recipe, path: Path, per_row: int = 10) -> Path:
    """The card's picture: one row per class/cluster/prompt, row k drawn with seed k."""
    import torch

    from generation.sampling import generate, save_png

    rows = sample_grid_rows(recipe, model, info)
    images = torch.cat([generate(model, per_row, condition, seed=k) for k, (_, condition) in enumerate(rows)])
    return save_png(images, path, {"model": recipe.name, "rows": json.dumps([c for c, _ in rows])}, nrow=per_row)


MONTAGE_FILE = "shipped-models.png"
INDEX_FILE = "README.md"
HEADLINE = {"class": "label_accuracy", "cluster": "cluster_sample_purity",
            "text": "text_class_accuracy[heldout]"}


def render_index(models_dir: Path) -> str:
    """``models/README.md``: every shipped model with an example, its headline metric and its size."""
    lines = ["# Shipped models", "",
             "Built by `bash scripts/build-models.sh` (`priorforge zoo build`: train within the recorded CPU budget, "
             "evaluate on 5,000 samples, export in fp16, write the card). `scripts/run.sh` serves every folder "
             "here that has a `card.json`, under that name.", "", f"![a row per model]({MONTAGE_FILE})", "",
             "| model | what | try | headline metric | diversity | CPU minutes | size |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for recipe in RECIPES:
        card = read_card(models_dir / recipe.name)
        if card is None:
            continue
        key = HEADLINE.get(card["condition"], "feature_fid")
        value = card["metrics"].get(key)
        shown = f"{key} {value:.1%}" if isinstance(value, float) and "fid" not in key else f"{key} {value}"
        variety = card["metrics"].get("text_diversity_median[heldout]")
        lines.append(f"| [{card['name']}]({card['name']}/README.md) | {card['title']} | `{card['examples'][0]}` | "
                     f"{shown} | {'-' if variety is None else variety} | {card['training']['cpu_seconds'] / 60:.1f} | "
                     f"{card['size_bytes'] / 2**20:.1f} MiB |")
    return "\n".join(lines + [""])


def write_montage(models_dir: Path, out: Path, per_row: int = 10) -> Path:
    """One picture of every shipped model: a row each, in recipe order; class and cluster models show one
    sample per class or cluster, text models two per example prompt (as RGB 32x32 tiles)."""
    import torch
    import torch.nn.functional as F

    from generation.checkpoint import load_checkpoint
    from generation.sampling import generate, save_png

    rows = []
    for recipe in RECIPES:
        folder = models_dir / recipe.name
        if read_card(folder) is None:
            continue
        model, info = load_checkpoint(folder)
        conditions = [c for _, c in sample_grid_rows(recipe, model, info)]
        each = 1 if recipe.condition in ("class", "cluster") else 2
        tiles = torch.cat([generate(model, each, c, seed=k) for k, c in enumerate(conditions)])[:per_row]
        if tiles.shape[1] == 1:
            tiles = tiles.repeat(1, 3, 1, 1)
        if tiles.shape[-1] < 32:  # 28x28 digits and garments: a black border up to 32x32
            pad = (32 - tiles.shape[-1]) // 2
            tiles = F.pad(tiles, (pad, pad, pad, pad), value=-1.0)
        rows.append(tiles)
    images = torch.cat(rows)
    names = [r.name for r in RECIPES if read_card(models_dir / r.name) is not None]
    return save_png(images, out, {"rows": json.dumps(names)}, nrow=per_row)


# the figures a text model's card sets beside those of the other shipped models of its data set and condition
COMPARED = (("text_class_accuracy[heldout]", "class, held-out wording"),
            ("text_class_accuracy[heldout-synonyms]", "class, unseen words"),
            ("text_color_accuracy[heldout]", "colour, held-out wording"),
            ("text_tone_accuracy[heldout]", "tone, held-out wording"),
            ("text_shape_accuracy[heldout]", "cut, held-out wording"),
            ("text_diversity_median[heldout]", "variety (median prompt)"),
            ("text_diversity_min[heldout]", "variety (lowest prompt)"),
            ("text_feature_fid[heldout]", "class-matched feature FID (lower is better)"))


def peer_cards(card: dict[str, Any], models_dir: Path) -> list[dict[str, Any]]:
    """The other shipped models of ``card``'s data set and condition, in recipe order."""
    peers = []
    for recipe in RECIPES:
        other = read_card(models_dir / recipe.name) if recipe.name != card["name"] else None
        if other is not None and (other["dataset"], other["condition"]) == (card["dataset"], card["condition"]):
            peers.append(other)
    return peers


def comparison_lines(card: dict[str, Any], peers: list[dict[str, Any]]) -> list[str]:
    """A table of this model's figures beside its peers' (empty without peers or shared figures)."""
    rows = [(key, label) for key, label in COMPARED
            if key in card["metrics"] and all(key in p["metrics"] for p in peers)]
    if not peers or not rows:
        return []

    def shown(key: str, value: float) -> str:
        return f"{value:.1%}" if "accuracy" in key else f"{value:.2f}"

    names = [card["name"], *(p["name"] for p in peers)]
    lines = [f"## Compared with the other `{card['dataset']}` {card['condition']} model"
             f"{'s' if len(peers) > 1 else ''}", "",
             "The same prompts and the same evaluation; pick the one whose strengths you need.", "",
             "| | " + " | ".join(f"`{n}` ({c['backend']})" for n, c in zip(names, [card, *peers])) + " |",
             "| --- |" + " --- |" * len(names)]
    for key, label in rows:
        lines.append(f"| {label} | " + " | ".join(shown(key, c["metrics"][key]) for c in [card, *peers]) + " |")
    return lines + [""]


def render_card(card: dict[str, Any], peers: list[dict[str, Any]] | None = None) -> str:
    """The card as Markdown (``models/<name>/README.md``); ``peers``: the cards it is compared with."""
    t = card["training"]
    lines = [f"# {card['name']}: {card['title']}", "", card["description"], "",
             "![samples](samples.png)", "",
             f"- Backend `{card['backend']}`, condition `{card['condition']}`, data set `{card['dataset']}`, "
             f"images {'x'.join(map(str, card['image_shape']))}.",
             f"- Training: {t['steps']} steps in {t['cpu_seconds'] / 60:.1f} CPU minutes (one thread; budget "
             f"{_number(t['budget_cpu_minutes'])}).",
             f"- Weights: {card['export']['precision']}, inference only"
             f"{' (the encoder kept, for interpolate and mix)' if card.get('keeps_encoder') else ''}; the pixels "
             f"stay within {card['export']['max_abs_pixel_diff']} of 255 levels of the full-precision model.", ""]
    if card.get("caveats"):
        lines += ["**Limits of this model** (its own evaluation):", ""]
        lines += [f"- {c}" for c in card["caveats"]] + [""]
    if card["examples"]:
        lines += ["Try: " + ", ".join(f"`{e}`" for e in card["examples"]), ""]
    if card["clusters"]:
        lines += ["| cluster | samples |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in card["clusters"].items()] + [""]
    lines += [f"## Metrics ({card['evaluation_samples']} samples, the project's own evaluation)", "",
              "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in card["metrics"].items()]
    if card.get("per_class"):
        lines += ["", "Per class, held-out wording (class: share of samples drawn as the class asked for; "
                  "diversity: 1.0 = as varied as real images of the class):", "",
                  "| class | class accuracy | diversity |", "| --- | --- | --- |"]
        lines += [f"| {cls} | {v['class_accuracy']:.1%} | {v.get('diversity', '-')} |"
                  for cls, v in card["per_class"].items()]
    lines += [""] + comparison_lines(card, peers or [])
    lines += ["All figures, per class and per phrasing: [metrics.json](metrics.json). How they are measured: "
              "[docs/results.md](../../docs/results.md).", "", "## Recipe", "", "```bash", t["command"],
              card["export"]["command"], "```",
              "", "Rebuild every shipped model: `bash scripts/build-models.sh` (or `--only "
              f"{card['name']}`).", ""]
    return "\n".join(lines)


# -- the whole build ----------------------------------------------------------------------------------
def build(names: list[str] | None, *, data_root: str, work_dir: str | Path, models_dir: str | Path,
          tiny: bool = False, jobs: int = 1, reuse: bool = False, log=print) -> list[Path]:
    """Train (``jobs`` at a time), evaluate, export and describe the named recipes; returns their folders."""
    recipes = select(names)
    if sum(r.default for r in RECIPES) != 1:
        raise ValueError("exactly one recipe must be the default model")
    work, models = Path(work_dir), Path(models_dir)
    work.mkdir(parents=True, exist_ok=True)
    models.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        trained = list(pool.map(lambda r: train(r, data_root, work, tiny, log, reuse), recipes))
    folders = []
    for recipe, training in zip(recipes, trained):
        metrics = earlier_evaluation(models / recipe.name, training, tiny) if reuse else None
        if metrics is None:
            log(f"[{recipe.name}] evaluating")
            metrics = evaluate(recipe, work / recipe.name, data_root, tiny)
        else:
            log(f"[{recipe.name}] reusing the evaluation of the same training in {models / recipe.name}")
        folders.append(export_and_describe(recipe, work / recipe.name, models, training, metrics, tiny))
        log(f"[{recipe.name}] -> {folders[-1]} " + json.dumps(summary(recipe, metrics)))
    write_readmes(models)
    write_montage(models, models / MONTAGE_FILE)
    (models / INDEX_FILE).write_text(render_index(models))
    return folders


def write_readmes(models_dir: Path) -> None:
    """Every shipped model's README.md from its card, with its peers' figures beside its own (a model built
    later changes its peers' comparison tables); the card's size follows."""
    from generation.checkpoint import write_json_atomic
    from generation.export import folder_size

    for recipe in RECIPES:
        folder = models_dir / recipe.name
        card = read_card(folder)
        if card is not None:
            (folder / CARD_README).write_text(render_card(card, peer_cards(card, models_dir)))
            card["size_bytes"] = folder_size(folder)
            write_json_atomic(folder / CARD_FILE, card)


def refresh_cards(models_dir: str | Path) -> list[Path]:
    """Re-render every shipped model's README.md, ``models/README.md`` and the montage from the stored cards
    (after a change to the card layout; no training, no evaluation). Returns the folders refreshed."""
    from generation.checkpoint import write_json_atomic

    models, folders = Path(models_dir), []
    for recipe in RECIPES:
        folder = models / recipe.name
        card = read_card(folder)
        if card is None:
            continue
        card["keeps_encoder"] = recipe.keep_encoder
        if (folder / "metrics.json").is_file():  # the caveats and per-class table follow the current rules
            evaluation = json.loads((folder / "metrics.json").read_text()).get("evaluation") or {}
            card["caveats"], card["per_class"] = caveats(recipe, evaluation), per_class_table(evaluation)
        write_json_atomic(folder / CARD_FILE, card)
        folders.append(folder)
    write_readmes(models)
    write_montage(models, models / MONTAGE_FILE)
    (models / INDEX_FILE).write_text(render_index(models))
    return folders


__all__ = ["RECIPES", "Recipe", "build", "read_card", "recipe_names", "refresh_cards", "render_card", "select"]
