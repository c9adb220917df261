"""The README's two commands, read as text: what a newcomer sees while they run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_first_install_shows_what_it_is_doing():
    """The first start was silent for about 3 minutes (pip -q): the project's install now prints pip's lines
    and says beforehand that it takes a few minutes."""
    script = (ROOT / "scripts" / "setup-env.sh").read_text()
    install = next(line for line in script.splitlines() if re.search(r"pip install .*-e ", line))
    assert " -q" not in install and "--quiet" not in install
    assert "a few minutes the first time" in script
