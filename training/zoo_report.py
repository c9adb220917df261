"""The shipped models' figures as Markdown tables, read from each ``models/<name>/metrics.json``
(``priorforge zoo report``): what docs/results.md quotes, so the page and the stored evaluation agree.

- one table of every model: training steps and CPU minutes, size, and its headline figures;
- per text model: class and attribute accuracy for each phrasing (training wording, held-out templates,
  held-out synonyms), and the accuracy per attribute value (per colour for CIFAR-10; per tone and cut for
  Fashion-MNIST), held-out templates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.zoo import RECIPES, TEXT_PHRASINGS, read_card


def _pct(x: Any) -> str:
    return f"{x:.1%}" if isinstance(x, (int, float)) else "-"


def _headline(card: dict[str, Any]) -> str:
    m = card["metrics"]
    if card["condition"] == "class":
        return f"label accuracy {_pct(m.get('label_accuracy'))}"
    if card["condition"] == "cluster":
        return (f"sample purity {_pct(m.get('cluster_sample_purity'))}, "
                f"{m.get('cluster_classes_covered')} of 10 classes have a cluster ({len(card['clusters'])} clusters)")
    return (f"class {_pct(m.get('text_class_accuracy[train]'))} / {_pct(m.get('text_class_accuracy[heldout]'))}"
            f" / {_pct(m.get('text_class_accuracy[heldout-synonyms]'))} (training / held-out / synonyms)")


def overview(models_dir: Path) -> list[str]:
    lines = ["| model | steps | CPU min | size | FID (features) | precision | recall | headline |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for recipe in RECIPES:
        card = read_card(models_dir / recipe.name)
        if card is None:
            continue
        t, m = card["training"], card["metrics"]
        lines.append(f"| `{card['name']}` | {t['steps']:,} | {t['cpu_seconds'] / 60:.1f} | "
                     f"{card['size_bytes'] / 2**20:.1f} MiB | {m.get('feature_fid', '-')} | {m.get('precision', '-')} | "
                     f"{m.get('recall', '-')} | {_headline(card)} |")
    return lines


def text_tables(name: str, evaluation: dict[str, Any]) -> list[str]:
    by_phrasing = evaluation.get("text_alignment_by_phrasing") or {}
    if not by_phrasing:
        return []
    first = next(iter(by_phrasing.values()))
    attributes = list(first["text_attribute_accuracy_per_attribute"])
    head = ("| phrasing | example prompt | class | " + " | ".join(attributes)
            + " | class and all attributes | diversity (median / lowest prompt) | FID (features) |")
    lines = [f"`{name}`, {first['text_prompts']} prompts x {first['text_samples_per_prompt']} samples per phrasing:",
             "", head, "| --- " * (6 + len(attributes)) + "|"]
    for phrasing in TEXT_PHRASINGS:
        m = by_phrasing.get(phrasing)
        if m is None:
            continue
        per = m["text_attribute_accuracy_per_attribute"]
        variety = (f"{m['text_diversity_median']} / {m['text_diversity_min']}" if "text_diversity_median" in m
                   else m.get("text_diversity", "-"))
        lines.append(f"| {phrasing} | \"{m['text_example_prompts'][0]}\" | {_pct(m['text_class_accuracy'])} | "
                     + " | ".join(_pct(per[a]) for a in attributes)
                     + f" | {_pct(m['text_alignment'])} | {variety} | {m.get('text_feature_fid', '-')} |")
    lines.append("")
    for phrasing in ("heldout", "heldout-synonyms"):
        table = (by_phrasing.get(phrasing) or {}).get("text_attribute_table") or {}
        for attr, rows in table.items():
            values = [v for v in rows if v != "all_prompts"]
            lines.append(f"Asked-for {attr} followed ({phrasing}): "
                         + ", ".join(f"{v} {_pct(rows[v].get(v))}" for v in values) + ".")
    return lines + [""]


def report(models_dir: str | Path) -> str:
    models = Path(models_dir)
    lines = overview(models) + [""]
    for recipe in RECIPES:
        path = models / recipe.name / "metrics.json"
        if recipe.condition == "text" and path.is_file():
            lines += text_tables(recipe.name, json.loads(path.read_text())["evaluation"])
    return "\n".join(lines)


CURVE_KEYS = (("aux_cls", "aux class loss"), ("rec_pix", "pixel reconstruction"), ("d_img", "D(image) loss"),
              ("g_adv", "G adversarial"), ("diversity", "diversity ratio"))


def learning_curve(run_dir: str | Path, at: list[int], window: int = 500) -> str:
    """A code-generator AAE training's losses at steps ``at`` (each the mean of the ``window`` steps up to it),
    from its ``history.jsonl``, as a Markdown table."""
    rows = [json.loads(line) for line in (Path(run_dir) / "history.jsonl").read_text().splitlines() if line]
    keys = [(k, name) for k, name in CURVE_KEYS if rows and k in rows[-1]]
    lines = ["| step | " + " | ".join(name for _, name in keys) + " |", "| --- " * (len(keys) + 1) + "|"]
    for step in at:
        recent = [r for r in rows if step - window < r["step"] <= step]
        if recent:
            means = [sum(r[k] for r in recent) / len(recent) for k, _ in keys]
            lines.append(f"| {step:,} | " + " | ".join(f"{m:.3g}" for m in means) + " |")
    return "\n".join(lines)
