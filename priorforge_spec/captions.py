"""The ``captions.jsonl`` format of a captioned image folder, checked without loading any image.

One JSON object per line: ``{"file": "img/1.jpg", "captions": ["...", "..."]}`` or ``{"file": ..., "caption":
"..."}``, with an optional ``"label"`` (a class name or index) and ``"split"`` (``"train"``/``"test"``).
:func:`training.captions.load_jsonl_captions` loads such a folder; the service checks an upload with
:func:`parse_captions_jsonl` before storing it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from priorforge_spec.conditions import MAX_PROMPT_CHARS
from priorforge_spec.datasets import IMAGE_EXTENSIONS, DatasetError

CAPTIONS_FILE = "captions.jsonl"
JSONL_KEYS = {"file", "caption", "captions", "label", "split"}
MAX_REPORTED_PROBLEMS = 50


@dataclass
class _Entry:
    line: int
    file: Path
    captions: list[str]
    label: Any = None
    split: str | None = None


def parse_captions_jsonl(folder: str | Path, *, inside_only: bool = False) -> list[_Entry]:
    """Validate ``<folder>/captions.jsonl``; every problem, with its line number, in one DatasetError.

    ``inside_only`` (uploads): a ``file`` must be a relative path inside the folder, checked before the file
    system is asked, so that the answer never tells whether a path exists elsewhere on the machine."""
    root = Path(folder).expanduser()
    path = root / CAPTIONS_FILE
    if not path.is_file():
        raise DatasetError(f"{root}: expected a file {CAPTIONS_FILE} (one JSON object per line: "
                           '{"file": ..., "captions": [...]})')
    problems: list[str] = []
    entries: list[_Entry] = []
    seen: dict[str, int] = {}
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise DatasetError(f"{path}: not UTF-8 text (line {line}, byte {exc.start}: {exc.reason})") from None
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        bad = lambda msg: problems.append(f"line {number}: {msg}")  # noqa: E731, B023 - used in this iteration
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            bad(f"not valid JSON ({exc.msg})")
            continue
        except (ValueError, RecursionError):  # an integer of thousands of digits, or nested too deeply
            bad("not valid JSON here (a number too long or nesting too deep)")
            continue
        try:  # a lone surrogate escape ("\\udfff") decodes to no character: it could not be written back
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            bad("a string holds a lone UTF-16 surrogate escape, which is not a character")
            continue
        if not isinstance(obj, dict):
            bad(f"expected a JSON object, got {type(obj).__name__}")
            continue
        unknown = sorted(set(obj) - JSONL_KEYS)
        if unknown:
            bad(f"unknown key(s) {unknown}; valid: {sorted(JSONL_KEYS)}")
        file = obj.get("file")
        if not isinstance(file, str) or not file.strip():
            bad('missing "file" (the image path, relative to the folder)')
        elif inside_only and (file.startswith(("/", "\\")) or ".." in Path(file).parts or "\\" in file
                              or "\x00" in file):
            bad(f"file {file[:200]!r} must be a relative path inside the archive (no '/' at the start, no '..')")
        elif (root / file).suffix.lower() not in IMAGE_EXTENSIONS:
            bad(f"file {file!r} is not an image ({', '.join(IMAGE_EXTENSIONS)})")
        elif not _is_file(root / file):
            bad(f"file {file!r} does not exist in {root}")
        elif file in seen:
            bad(f"file {file!r} is already listed on line {seen[file]}")
        else:
            seen[file] = number
        captions = _entry_captions(obj, bad, MAX_PROMPT_CHARS)
        split = obj.get("split")
        if split is not None and split not in ("train", "test"):
            bad(f"split must be 'train' or 'test', got {split!r}")
        label = obj.get("label")
        if label is not None and (isinstance(label, bool) or not isinstance(label, (str, int))):
            bad(f"label must be a class name or an integer, got {label!r}")
        if isinstance(file, str) and captions:
            entries.append(_Entry(number, root / file, captions, label, split))
    if problems:
        shown = problems[:MAX_REPORTED_PROBLEMS]
        more = len(problems) - len(shown)
        raise DatasetError(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(shown)
                           + (f"\n  ... and {more} more" if more else ""))
    if not entries:
        raise DatasetError(f"{path} lists no images")
    return entries


def _is_file(path: Path) -> bool:
    """Path.is_file, False for a name the file system cannot even look up (too long, NUL)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _entry_captions(obj: dict, bad, max_chars: int) -> list[str]:
    if ("caption" in obj) == ("captions" in obj):
        bad('give exactly one of "caption" (a string) or "captions" (a list of strings)')
        return []
    captions = [obj["caption"]] if "caption" in obj else obj["captions"]
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        bad('"captions" must be a list of strings' if "captions" in obj else '"caption" must be a string')
        return []
    captions = [c.strip() for c in captions]
    if not captions or not all(captions):
        bad("empty caption(s); every caption needs some text")
        return []
    long = [len(c) for c in captions if len(c) > max_chars]
    if long:
        bad(f"caption of {long[0]} characters; at most {max_chars}")
        return []
    return captions
