"""Text-alignment metrics of a text-conditional model: do samples show the class and attributes the prompt
names?

Prompts are every class x attribute-value combination of a built-in captioned set, worded with HELD-OUT
phrasings (templates, and optionally synonyms, that no training caption uses; see
:data:`training.captions.PHRASINGS`). For each prompt ``n_per_prompt`` samples are drawn (seeded), quantised
to 8 bits, and read back by the data set's classifier (:func:`training.classifier.get_classifier`) and by the
attribute extractor (:mod:`training.attributes`; Fashion-MNIST's shape threshold is the requested class's).
"""

from __future__ import annotations

import itertools
import statistics
from typing import Any

import torch
from torch import Tensor

from generation.base import Condition, GenerativeModel
from generation.sampling import generate, to_uint8
from training.captions import PHRASINGS, PhrasingKind, image_attributes, prompt_text
from training.data import CIFAR10_CLASSES, FASHION_CLASSES, to_float

CLASS_NAMES = {"cifar10-captions": CIFAR10_CLASSES, "fashion-mnist-captions": FASHION_CLASSES}


def captioned_name(dataset: str) -> str | None:
    """``fashion-mnist`` or ``fashion-mnist-captions`` -> ``fashion-mnist-captions`` (None: no phrasings)."""
    for name in (dataset, f"{dataset}-captions"):
        if name in PHRASINGS:
            return name
    return None


def alignment_prompts(dataset: str, phrasing: PhrasingKind = "heldout") -> list[tuple[str, str, dict[str, str]]]:
    """``(prompt, class name, attribute values)`` for every class x attribute-value combination."""
    ph = PHRASINGS[dataset]
    combos = list(itertools.product(*(ph.values[a] for a in ph.attributes)))
    out = []
    for i, (cls, combo) in enumerate(itertools.product(CLASS_NAMES[dataset], combos)):
        values = dict(zip(ph.attributes, combo))
        out.append((prompt_text(dataset, cls, values, phrasing, variant=i), cls, values))
    return out


@torch.no_grad()
def text_alignment_metrics(model: GenerativeModel, *, dataset: str, data_root: str | None, device: Any,
                           seed: int = 0, n_per_prompt: int = 10, phrasing: PhrasingKind = "heldout",
                           classifier: Any = None) -> dict[str, Any]:
    """Class and attribute agreement of samples with held-out prompts.

    Args:
        model: a text-conditional model with a fitted projection.
        dataset: the captioned set it was trained on (``cifar10-captions``, ``fashion-mnist-captions``; the
            base names ``cifar10`` / ``fashion-mnist`` are accepted too). Other sets return a note only.
        data_root: where the classifier's data set lives (used only if the classifier must be trained).
        device: where the classifier runs.
        seed: seeds the samples (prompt ``i`` uses seed ``seed * 100_003 + i``).
        n_per_prompt: samples per prompt.
        phrasing: ``heldout`` (held-out templates, canonical words), ``heldout-synonyms`` (held-out
            templates and synonyms) or ``train`` (a training template, for comparison).
        classifier: a classifier to use instead of the cached one (``predict(images)`` or logits module).

    Returns: ``text_class_accuracy``, ``text_attribute_accuracy`` (all attributes match),
        ``text_alignment`` (class and attributes match), ``text_attribute_accuracy_per_attribute`` and
        ``text_attribute_table``: per attribute and requested value, the share of samples showing each value
        (the diagonal is the accuracy; ``all_prompts`` is the share over every prompt, the baseline).
        With the cached classifier, ``data_root`` and more than one sample per prompt, also
        ``text_diversity`` (:func:`sample_diversity`).
    """
    from generation.text_encoder import encode_texts

    name = captioned_name(dataset)
    if name is None:
        return {"text_alignment_note": f"no attribute extractor for data set {dataset!r}; "
                                       f"text alignment is measured on {', '.join(PHRASINGS)}"}
    if n_per_prompt < 1:
        raise ValueError(f"n_per_prompt must be at least 1, got {n_per_prompt}")
    prompts = alignment_prompts(name, phrasing)
    conditions = model.project_text(encode_texts([p for p, _, _ in prompts])).cpu()  # (P, text_dim)
    samples = [to_uint8(generate(model, n_per_prompt, Condition("text", embedding=c, prompt=p),
                                 seed * 100_003 + i)) for i, (c, (p, _, _)) in enumerate(zip(conditions, prompts))]
    images = torch.cat(samples)  # (P * n, C, H, W) uint8
    classes = [cls for _, cls, _ in prompts for _ in range(n_per_prompt)]
    if classifier is None:
        from training.classifier import get_classifier

        classifier = get_classifier(name.removesuffix("-captions"), data_root, device,
                                    image_shape=model.config.image_shape)
    features = None
    if hasattr(classifier, "features_and_logits"):
        features, logits = classifier.features_and_logits(to_float(images))
        predicted = logits.argmax(1)
    else:
        predicted = _predict(classifier, to_float(images))
    class_names = list(getattr(classifier, "class_names", CLASS_NAMES[name]))
    class_ok = torch.tensor([class_names[int(p)].lower() == c.lower() for p, c in zip(predicted, classes)])
    found = image_attributes(name, images, _label_index(classes, CLASS_NAMES[name]), CLASS_NAMES[name])
    out = _summarise(name, prompts, n_per_prompt, class_ok, found, phrasing)
    if features is not None and n_per_prompt > 1 and data_root is not None:
        out.update(sample_diversity(features, classes, n_per_prompt, classifier, name, data_root,
                                    prompts=[p for p, _, _ in prompts]))
    return out


def mean_pairwise_distance(features: Tensor) -> float:
    """Mean Euclidean distance between the rows of ``features`` (every unordered pair)."""
    n = len(features)
    if n < 2:
        return 0.0
    return float(torch.pdist(features.double()).sum() / (n * (n - 1) / 2))


def sample_diversity(features: Tensor, classes: list[str], n_per_prompt: int, classifier: Any, name: str,
                     data_root: str, real_per_class: int = 200, prompts: list[str] | None = None) -> dict[str, Any]:
    """How varied one prompt's samples are: the mean pairwise distance of their classifier features, divided
    by the same for real test images of the prompt's class (1 = as varied as real images of that kind; a
    model that draws one image per prompt gives 0). Mean, median and minimum over prompts, and per class; with
    ``text_feature_fid``, the Frechet distance between every prompt's samples and the (class-balanced) real
    test images in the same classifier features. With ``prompts`` (one per ``n_per_prompt`` samples), also the
    three least varied prompts and their variety (``text_diversity_lowest``), so a card can name them."""
    from priorforge_spec.datasets import image_dataset_name
    from training.data import load_dataset
    from training.fid import frechet_distance

    test = load_dataset(image_dataset_name(name), data_root, "test")
    real_spread: dict[str, float] = {}
    for k, cls in enumerate(CLASS_NAMES[name]):
        rows = torch.nonzero(test.labels == k).squeeze(1)[:real_per_class]
        real_features, _ = classifier.features_and_logits(to_float(test.images[rows]))
        real_spread[cls] = mean_pairwise_distance(real_features)
    ratios: dict[str, list[float]] = {}
    by_prompt: list[tuple[float, int]] = []  # (variety, prompt number)
    for start in range(0, len(classes), n_per_prompt):
        cls = classes[start]
        spread = mean_pairwise_distance(features[start:start + n_per_prompt])
        ratios.setdefault(cls, []).append(spread / max(real_spread[cls], 1e-12))
        by_prompt.append((ratios[cls][-1], start // n_per_prompt))
    per_class = {cls: round(sum(v) / len(v), 4) for cls, v in ratios.items()}
    every = [r for v in ratios.values() for r in v]
    # class-matched feature FID: the prompts cover every class equally, as the balanced test set does
    real_features, _ = classifier.features_and_logits(to_float(test.images))
    out = {"text_diversity": round(sum(every) / len(every), 4),
           "text_diversity_median": round(statistics.median(every), 4),
           "text_diversity_min": round(min(every), 4), "text_diversity_per_class": per_class,
           "text_feature_fid": round(frechet_distance(real_features, features), 4)}
    if prompts is not None:
        out["text_diversity_lowest"] = [[prompts[i], round(value, 4)] for value, i in sorted(by_prompt)[:3]]
    return out


def _predict(classifier: Any, images: Tensor) -> Tensor:
    if hasattr(classifier, "predict"):
        return classifier.predict(images).cpu()
    device = next(classifier.parameters()).device
    return torch.cat([classifier(images[i:i + 256].to(device)).argmax(1).cpu() for i in range(0, len(images), 256)])


def _label_index(classes: list[str], names: list[str]) -> Tensor:
    return torch.tensor([names.index(c) for c in classes], dtype=torch.long)


def _summarise(name: str, prompts: list, n: int, class_ok: Tensor, found: dict[str, Tensor],
               phrasing: str) -> dict[str, Any]:
    ph = PHRASINGS[name]
    attr_ok = torch.ones_like(class_ok)
    per_attribute: dict[str, float] = {}
    table: dict[str, Any] = {}
    for attr in ph.attributes:
        names = ph.values[attr]
        wanted = torch.tensor([names.index(v[attr]) for _, _, v in prompts]).repeat_interleave(n)
        ok = found[attr] == wanted
        attr_ok &= ok
        per_attribute[attr] = float(ok.double().mean())
        table[attr] = {"all_prompts": _shares(found[attr], names)}
        for k, value in enumerate(names):
            table[attr][value] = _shares(found[attr][wanted == k], names)
    per_class: dict[str, list[bool]] = {}
    for (_, cls, _), start in zip(prompts, range(0, len(class_ok), n)):
        per_class.setdefault(cls, []).extend(bool(x) for x in class_ok[start:start + n])
    return {
        "text_class_accuracy_per_class": {cls: round(sum(v) / len(v), 4) for cls, v in per_class.items()},
        "text_phrasing": phrasing, "text_prompts": len(prompts), "text_samples_per_prompt": n,
        "text_example_prompts": [p for p, _, _ in prompts[:3]],
        "text_class_accuracy": float(class_ok.double().mean()),
        "text_attribute_accuracy": float(attr_ok.double().mean()),
        "text_alignment": float((class_ok & attr_ok).double().mean()),
        "text_attribute_accuracy_per_attribute": per_attribute,
        "text_attribute_table": table,
    }


def _shares(values: Tensor, names: tuple[str, ...]) -> dict[str, float]:
    counts = torch.bincount(values, minlength=len(names)).double()
    return {v: round(float(c / max(1.0, float(counts.sum()))), 4) for v, c in zip(names, counts)}
