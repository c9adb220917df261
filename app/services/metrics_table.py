"""An evaluation's metrics as rows of a table a person reads: named in words, values formatted (shares as
percentages, errors and distances to 4 significant digits, counts with separators, seconds as minutes and
seconds), text as it is (non-ASCII included; the run page showed the raw JSON, with "Fr\\u00e9chet").

Nested results are flattened: a mapping of numbers (a per-class accuracy) becomes one row, a mapping of
mappings (text alignment by phrasing) a row per inner entry, named ``outer › inner``. The order puts what an
admin compares first (accuracies, FID, precision/recall), then the counts, then the notes and the timing.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

LABELS = {
    "label_accuracy": "Label accuracy (samples of a class that the classifier puts in it)",
    "label_accuracy_per_class": "Label accuracy per class",
    "caption_class_accuracy": "Caption class accuracy (a caption's sample in its image's class)",
    "caption_class_images": "Captioned test images with a class",
    "caption_match_rate": "Caption match rate (0.5: the prompt is ignored)",
    "feature_fid": "Feature FID (lower is better)",
    "feature_fid_note": "About feature FID",
    "precision": "Precision (samples on the real images' manifold)",
    "recall": "Recall (real images on the samples' manifold)",
    "reconstruction_mse": "Reconstruction error (mean squared, pixels in [-1, 1])",
    "cluster_sample_purity": "Cluster purity (samples of a cluster in its main class)",
    "cluster_classes_covered": "Classes that are some cluster's main class",
    "cluster_nmi": "Cluster NMI (real images)",
    "cluster_accuracy": "Cluster accuracy (best one-to-one matching)",
    "cluster_alignment": "Clusters",
    "text_alignment": "Text alignment",
    "text_class_accuracy": "Text class accuracy",
    "text_attribute_accuracy": "Text attribute accuracy",
    "n_real": "Test images",
    "n_generated": "Generated images",
    "seed": "Seed",
    "condition": "Condition",
    "classifier": "Evaluation classifier",
    "test_accuracy": "test accuracy",
    "evaluated_on": "Evaluated on",
    "notes": "Notes",
    "stage_seconds": "Evaluation time",
    "evaluation_cpu_seconds": "Evaluation CPU time",
    "skipped": "Skipped",
}
FIRST = ("label_accuracy", "caption_class_accuracy", "caption_match_rate", "cluster_sample_purity",
         "cluster_classes_covered", "cluster_nmi", "cluster_accuracy", "text_alignment", "text_class_accuracy",
         "text_attribute_accuracy", "feature_fid", "precision", "recall", "reconstruction_mse")
LAST = ("label_accuracy_per_class", "cluster_alignment", "classifier", "n_real", "n_generated", "caption_class_images",
        "condition", "seed", "evaluated_on", "feature_fid_note", "notes", "evaluation_cpu_seconds", "stage_seconds")
SHARE = re.compile(r"(accuracy|rate|precision|recall|purity|alignment|share|coverage)", re.I)


def label(key: str) -> str:
    if key in LABELS:
        return LABELS[key]
    words = key.replace("_", " ").strip()
    words = re.sub(r"\b(fid|nmi|mse|nll)\b", lambda m: m.group(1).upper(), words)
    return words[:1].upper() + words[1:]


def seconds_text(value: float) -> str:
    if value < 120:
        return f"{value:.1f} s"
    return f"{int(value // 60)} min {round(value % 60)} s"


def number_text(key: str, value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if "seconds" in key:
        return seconds_text(value)
    if SHARE.search(key) and 0.0 <= value <= 1.0:
        return f"{100 * value:.1f}%"
    return f"{value:.4g}"


def value_text(key: str, value: Any) -> str:
    """One value as text; ``key`` (the innermost name that says what it is) picks the format."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return number_text(key, value)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "; ".join(value_text(key, v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {value_text(key if _scalar(v) else k, v)}" for k, v in value.items())
    return plain_json(value)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _flat(value: Any) -> bool:
    """A value that fits one row: a scalar, a list, or a mapping of scalars."""
    return not isinstance(value, dict) or all(_scalar(v) for v in value.values())


def metrics_rows(metrics: dict[str, Any] | None) -> list[dict[str, str]]:
    """``[{"key", "name", "value"}]`` for an evaluation's metrics (see the module docstring)."""
    if not isinstance(metrics, dict):
        return []
    order = [k for k in FIRST if k in metrics]
    order += sorted(k for k in metrics if k not in FIRST and k not in LAST)
    order += [k for k in LAST if k in metrics]
    rows: list[dict[str, str]] = []
    for key in order:
        rows += _rows(key, label(key), metrics[key])
    return rows


def _rows(key: str, name: str, value: Any) -> list[dict[str, str]]:
    if key == "stage_seconds" and isinstance(value, dict):
        stages = "; ".join(f"{s.get('stage')} {seconds_text(float(s.get('seconds') or 0))}"
                           for s in value.get("stages") or [] if isinstance(s, dict))
        total = seconds_text(float(value.get("seconds") or 0))
        return [{"key": key, "name": name, "value": f"{total} ({stages})" if stages else total}]
    if _flat(value):
        return [{"key": key, "name": name, "value": value_text(key, value)}]
    rows = []
    for inner, inner_value in value.items():
        rows += _rows(f"{key}.{inner}", f"{name} › {label(inner) if inner in LABELS else inner.replace('_', ' ')}",
                      inner_value)
    return rows


def plain_json(value: Any) -> str:
    """JSON as a person reads it: non-ASCII characters as they are, not ``\\u`` escapes."""
    return json.dumps(value, ensure_ascii=False)
