"""The generation parameters a PNG carries in its ``priorforge`` text chunk (written by
:func:`generation.sampling.save_png` and the workers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image


def read_png_params(path: str | Path) -> dict[str, Any]:
    """The generation parameters stored with the image."""
    with Image.open(path) as image:
        text = image.text.get("priorforge")  # type: ignore[attr-defined]
    return json.loads(text) if text else {}
