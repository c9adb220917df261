"""Condition kinds, and how a label as a person types it becomes a class index."""

from __future__ import annotations

from typing import Literal, get_args

ConditionKind = Literal["none", "class", "cluster", "text"]
CONDITION_KINDS: tuple[str, ...] = get_args(ConditionKind)
MAX_PROMPT_CHARS = 1000  # checked before tokenising; a 256-token sentence is well under this in English


class ConditionError(ValueError):
    """A condition the model cannot honour (wrong kind, unknown label, out-of-range cluster...)."""


def resolve_label(label: str | int, class_names: list[str]) -> int:
    """A class name (case-insensitive) or an index (int or digit string) -> class index."""
    text = str(label).strip()
    lowered = [name.lower() for name in class_names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    if text.lstrip("-").isdigit():
        index = int(text)
        if 0 <= index < len(class_names):
            return index
    raise ConditionError(f"unknown label {label!r}; this model knows: {', '.join(class_names)}")
