"""Condition kinds, and how a label as a person types it becomes a class index."""

from __future__ import annotations

import re
from typing import Literal, get_args

ConditionKind = Literal["none", "class", "cluster", "text"]
CONDITION_KINDS: tuple[str, ...] = get_args(ConditionKind)
MAX_PROMPT_CHARS = 1000  # checked before tokenising; a 256-token sentence is well under this in English
# a class index as text: ASCII digits only (str.isdigit also takes "³" and "٣", and int() of a few thousand
# digits raises), and few of them (no model has a million classes)
INDEX_TEXT = re.compile(r"-?[0-9]{1,6}")


class ConditionError(ValueError):
    """A condition the model cannot honour (wrong kind, unknown label, out-of-range cluster...)."""


def resolve_label(label: str | int, class_names: list[str]) -> int:
    """A class name (case-insensitive) or an index (an int, or a string of ASCII digits) -> class index."""
    if isinstance(label, int) and not isinstance(label, bool):
        if 0 <= label < len(class_names):
            return label
        raise ConditionError(f"label index out of range: this model has {len(class_names)} classes "
                             f"({', '.join(class_names)})")
    if not isinstance(label, str):
        raise ConditionError("label must be a class name or index")
    text = label.strip()
    lowered = [name.lower() for name in class_names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    if INDEX_TEXT.fullmatch(text):
        index = int(text)
        if 0 <= index < len(class_names):
            return index
    shown = label if len(label) <= 40 else label[:40] + "..."
    raise ConditionError(f"unknown label {shown!r}; this model knows: {', '.join(class_names)}")
