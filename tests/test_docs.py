"""The README and docs/ as a newcomer reads them: short README, links that lead somewhere, every
``priorforge`` command of a shell block accepted by the real command line, and the quick blocks (marked
```` ```bash doc-test ````) run as written, in a folder of their own, against a copy of what a fresh clone has."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.M | re.S)
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def blocks(path: Path) -> list[tuple[str, str]]:
    """(info string, body) of every fenced code block."""
    return [(m.group(1).strip(), m.group(2)) for m in FENCE.finditer(path.read_text())]


def shell_commands(body: str) -> list[list[str]]:
    """The simple commands of a shell block: continuations joined, comments dropped, split at | && ; ."""
    text = body.replace("\\\n", " ")
    commands, pending = [], ""
    for line in text.splitlines():
        pending += line + "\n"
        try:
            tokens = shlex.split(pending, comments=True)
        except ValueError:  # a quoted string goes on to the next line
            continue
        pending = ""
        current: list[str] = []
        for token in tokens + ["&&"]:
            if token in ("|", "&&", ";", "||", "&"):
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(token)
    assert not pending.strip(), f"unbalanced quotes in {pending!r}"
    return commands


def priorforge_commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in DOCS:
        for info, body in blocks(path):
            if info.split()[:1] != ["bash"]:
                continue
            for command in shell_commands(body):
                if command and Path(command[0]).name == "priorforge":
                    found.append((f"{path.relative_to(REPO)}: {' '.join(command)}", command[1:]))
    return found


def test_readme_is_short():
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= 250, f"README.md has {lines} lines; reference material belongs in docs/"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_links_lead_somewhere(path):
    text = path.read_text()
    missing = [target for target, _ in LINK.findall(text)
               if not target.startswith(("http://", "https://", "mailto:")) and not (path.parent / target).exists()]
    assert not missing, f"{path.name} links to missing files: {missing}"
    assert "/work/" not in text, f"{path.name}: paths are relative to the checkout (the data folder is ../shared/data)"


def test_every_documented_priorforge_command_parses():
    """Each ``priorforge ...`` of a ```bash block is accepted by the real parser (its sub-command, flags and
    their values), so a renamed flag cannot stay in the docs."""
    from priorforge.cli import build_parser

    commands = priorforge_commands()
    assert len(commands) > 20, commands  # the docs have many; finding none would mean the extraction broke
    parser = build_parser()
    bad = []
    for where, argv in commands:
        if any(arg in ("--help", "-h", "--version") for arg in argv):
            continue  # they print and exit; the doc-test blocks run them
        try:
            parser.parse_args(argv)
        except SystemExit:
            bad.append(where)
    assert not bad, "commands the command line refuses:\n" + "\n".join(bad)


DOC_TESTS = [(path, body) for path in DOCS for info, body in blocks(path) if "doc-test" in info.split()]


@pytest.mark.slow
@pytest.mark.parametrize("path,body", DOC_TESTS, ids=[f"{p.name}-{i}" for i, (p, _) in enumerate(DOC_TESTS)])
def test_quick_blocks_run_as_written(path, body, tmp_path):
    """A doc-test block runs with bash -e from a folder that has what a fresh clone has (the shipped models),
    with the project's environment first on PATH, as after ``source .venv/bin/activate``."""
    (tmp_path / "models").symlink_to(REPO / "models")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", "-e", "-c", body], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"{path.name}:\n{body}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def test_there_are_quick_blocks():
    assert len(DOC_TESTS) >= 3
