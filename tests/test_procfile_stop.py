"""Ctrl-C on ``scripts/run.sh``: honcho signals each Procfile process's whole group, so Celery's pool processes
died of the SIGTERM before their main process could stop them (``ERROR ... exited with 'signal 15'``), and
workers still stopping after 5 s were killed. Each Procfile line now runs through scripts/run_process.py (only
the main process gets the signal and stops its children) under scripts/start_procfile.py (a longer grace).

The processes here stand in for Celery's: a main process that forks a child and, on SIGTERM, stops it itself;
the child reports a SIGTERM that reaches it directly. The real Procfile was checked by hand (docs/service.md,
"Stopping")."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAIN = '''
import os, signal, sys, time
pid = os.fork()
if pid == 0:
    signal.signal(signal.SIGTERM, lambda *a: (print("child: SIGTERM reached me", flush=True), os._exit(1)))
    signal.signal(signal.SIGUSR1, lambda *a: os._exit(0))
    print("child: ready", flush=True)
    while True:
        time.sleep(0.1)
def stop(*_):
    time.sleep(0.5)  # a main process takes a while to act on the signal (Celery: up to its 2 s broker poll)
    os.kill(pid, signal.SIGUSR1)  # then it stops its pool itself
    os.waitpid(pid, 0)
    print("main: stopped my child", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("main: ready", flush=True)
while True:
    time.sleep(0.1)
'''


def run_honcho(tmp_path: Path, line: str) -> tuple[str, int]:
    (tmp_path / "main.py").write_text(MAIN)
    (tmp_path / "Procfile").write_text(f"worker: {line}\n")
    out = []
    with subprocess.Popen([sys.executable, str(REPO / "scripts" / "start_procfile.py"), "-f",
                           str(tmp_path / "Procfile"), "-d", str(REPO)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True) as proc:
        for text in proc.stdout:  # type: ignore[union-attr]
            out.append(text)
            if sum(f"{who}: ready" in line for line in out for who in ("main", "child")) == 2 and \
                    "SIGINT" not in "".join(out):
                os.kill(proc.pid, signal.SIGINT)  # Ctrl-C, once both have their signal handlers
    return "".join(out), proc.wait(timeout=60)


def test_a_stop_reaches_the_main_process_only_and_it_stops_its_children(tmp_path):
    out, status = run_honcho(tmp_path, f"exec {sys.executable} scripts/run_process.py -- {sys.executable} "
                                       f"{tmp_path / 'main.py'}")
    assert "main: stopped my child" in out and "reached me" not in out, out
    assert re.search(r"worker\.1 stopped \(rc=0\)", out) and "SIGKILL" not in out, out
    assert status == 130  # honcho's own status after SIGINT


def test_without_the_wrapper_the_signal_reaches_the_children(tmp_path):
    """What the wrapper is for: honcho's SIGTERM to the group kills the child before its main process acts."""
    out, _ = run_honcho(tmp_path, f"exec {sys.executable} {tmp_path / 'main.py'}")
    assert "child: SIGTERM reached me" in out, out


def test_a_process_that_does_not_stop_is_killed_with_its_children_after_the_grace(tmp_path):
    script = tmp_path / "stubborn.py"
    script.write_text("import os, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                      "if os.fork():\n    print('ready', flush=True)\nwhile True:\n    time.sleep(0.1)\n")
    with subprocess.Popen([sys.executable, str(REPO / "scripts" / "run_process.py"), "--grace", "1", "--",
                           sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True) as proc:
        assert proc.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        os.killpg(proc.pid, signal.SIGTERM)  # as honcho does
        _, err = proc.communicate(timeout=30)
    assert "did not stop within 1 s" in err and proc.returncode == 128 + signal.SIGKILL
    time.sleep(0.2)
    leftovers = subprocess.run(["pgrep", "-f", str(script)], capture_output=True, text=True).stdout.split()
    assert leftovers == [], leftovers  # the forked child went with its main process


def test_every_procfile_line_runs_through_the_wrapper_and_run_sh_uses_the_longer_grace():
    lines = [line for line in (REPO / "Procfile").read_text().splitlines() if line.strip()]
    assert lines and all(re.match(r"\w+: exec \.venv/bin/python scripts/run_process\.py -- \.venv/bin/", line)
                         for line in lines), lines
    assert "scripts/start_procfile.py -f Procfile" in (REPO / "scripts" / "run.sh").read_text()
