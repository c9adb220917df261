"""``SECRET_KEY``: it signs the session cookies (admin sign-in) and the CSRF tokens, so whoever knows it can sign
in as anyone. When it is not configured, a random key is generated once with :mod:`secrets` and kept in the
instance folder (``SECRET_KEY_FILE``, mode 0600), so restarts and every process of one machine share it. A known
placeholder or a short key is refused in every mode (docs/security.md, "Secret key" has the rotation).
"""

from __future__ import annotations

import math
import os
import secrets
from collections import Counter
from pathlib import Path

from flask import Flask

from app.core.files import private_folder

# placeholders found in tutorials and .env templates; all are refused
KNOWN_KEYS = {"", "dev", "development", "change-me", "changeme", "change_me", "secret", "secret-key", "secretkey",
              "your-secret-key", "default", "test", "testing", "password", "flask", "priorforge"}
MIN_SECRET_KEY_LENGTH = 32
HELP = "set PRIORFORGE_SECRET_KEY to python -c 'import secrets; print(secrets.token_hex(32))', or leave it unset " \
       "to have one generated in the instance folder"


def ensure_secret_key(app: Flask) -> None:
    """Fill ``SECRET_KEY`` from ``SECRET_KEY_FILE`` (creating it) when it is not configured."""
    if app.config.get("SECRET_KEY") is not None:
        return
    app.config["SECRET_KEY"] = _read_or_create(Path(app.config["SECRET_KEY_FILE"]))


def _read_or_create(path: Path) -> str:
    private_folder(str(path.parent))  # 0700 before the key is in it
    try:
        # O_EXCL: of two processes starting at once, one creates the file and the other reads it
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # the creator may not have written it yet
            key = path.read_text().strip()
            if key:
                return key
            import time

            time.sleep(0.02)
        raise RuntimeError(f"{path} is empty; delete it to have a new SECRET_KEY generated") from None
    key = secrets.token_hex(32)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


def check_secret_key(app: Flask) -> None:
    """A RuntimeError for a known placeholder or a weak key (:func:`weakness`), in every mode: a cookie signed
    with a guessable key opens the admin."""
    key = app.config.get("SECRET_KEY")
    text = key.decode(errors="replace") if isinstance(key, bytes) else key
    if not isinstance(text, str) or text.strip().lower() in KNOWN_KEYS:
        raise RuntimeError(f"PRIORFORGE_SECRET_KEY is a known placeholder: {HELP}")
    reason = weakness(text)
    if reason:
        raise RuntimeError(f"PRIORFORGE_SECRET_KEY is too weak ({reason}; at least {MIN_SECRET_KEY_LENGTH} random "
                           f"characters): {HELP}")


PLACEHOLDER_WORDS = ("changeme", "change-me", "change_me", "secret-key", "secretkey", "your-secret", "replace-me")
MIN_ESTIMATED_BITS = 90  # secrets.token_hex(16), 128 random bits, never scored below 94 in 20,000 draws


def weakness(text: str) -> str | None:
    """Why ``text`` is not a random key, or None. What a person types instead of drawing one: too short, a
    short block repeated (``abcdefgh`` four times), a run of neighbouring characters (``abcdef...``,
    ``123456...``), or too few distinct characters for its length (estimated from the characters' frequencies,
    which a random key's length and alphabet keep far above the floor)."""
    n = len(text)
    lowered = text.lower()
    if any(word in lowered for word in PLACEHOLDER_WORDS):
        return "it holds a placeholder such as 'change-me'"
    if n < MIN_SECRET_KEY_LENGTH:
        return f"{n} characters"
    period = next(p for p in range(1, n + 1) if all(text[i] == text[i - p] for i in range(p, n)))
    if period <= n // 2:
        return f"a block of {period} characters repeated"
    neighbours = sum(1 for a, b in zip(text, text[1:]) if abs(ord(a) - ord(b)) <= 1)
    if neighbours > 0.6 * (n - 1):
        return "mostly runs of neighbouring characters"
    counts = Counter(text)
    bits = -sum(c * math.log2(c / n) for c in counts.values())
    if bits < MIN_ESTIMATED_BITS or len(counts) < 8:
        return f"too few distinct characters ({len(counts)}) for a random key"
    return None
