"""Runs one Procfile process so that a stop reaches its main process only, which then stops its own children.

    python scripts/run_process.py [--grace SECONDS] -- COMMAND [ARGS...]

Why: honcho (``scripts/run.sh``) stops a process by sending SIGTERM to its whole process group. For Celery
that is the main process and every pool process at once; the pool processes die of the signal before the
main process can stop them, and it logs ``ERROR ... Process 'ForkPoolWorker-1' ... exited with 'signal 15
(SIGTERM)'`` for each, on a clean Ctrl-C. This wrapper starts COMMAND in a process group of its own and passes
SIGTERM and SIGINT on to COMMAND's main process alone: Celery's warm shutdown and gunicorn's graceful stop then
end their children themselves, with nothing logged as an error.

A main process still running ``--grace`` seconds after the signal (default 20) is killed with its group, and
the wrapper says so on stderr; honcho's own SIGKILL comes later (``scripts/start_procfile.py`` sets it to the
grace + 10 s) and would reach this wrapper only, leaving COMMAND's group running. A worker takes that long
when it is in the middle of a task (Celery's warm shutdown waits for it): a job or a training run then resumes
as after any lost worker (docs/reliability.md). The wrapper exits with COMMAND's status (0 after a
stop it passed on and that ended cleanly).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

DEFAULT_GRACE = 20.0


def parse(argv: list[str]) -> tuple[float, list[str]]:
    grace, args = DEFAULT_GRACE, list(argv)
    while args and args[0] != "--":
        flag = args.pop(0)
        if flag == "--grace" and args:
            try:
                grace = float(args.pop(0))
            except ValueError:
                raise SystemExit("run_process: --grace takes a number of seconds") from None
        else:
            raise SystemExit(f"run_process: unknown argument {flag!r}; usage: run_process.py [--grace S] -- COMMAND")
    if not args or len(args) < 2:
        raise SystemExit("run_process: usage: run_process.py [--grace SECONDS] -- COMMAND [ARGS...]")
    return grace, args[1:]


def main(argv: list[str] | None = None) -> int:
    grace, command = parse(sys.argv[1:] if argv is None else argv)
    try:
        child = subprocess.Popen(command, start_new_session=True)  # its own group: honcho's killpg misses it
    except OSError as exc:
        print(f"run_process: cannot start {command[0]}: {exc}", file=sys.stderr, flush=True)
        return 127
    stopping = threading.Event()

    def forward(signum: int, _frame: object) -> None:
        if stopping.is_set():
            return  # honcho sends one SIGTERM; a second Ctrl-C changes nothing, the grace runs on
        stopping.set()
        try:
            os.kill(child.pid, signal.SIGTERM)  # the main process only; it stops its children
        except ProcessLookupError:
            return
        threading.Thread(target=deadline, daemon=True).start()

    def deadline() -> None:
        end = time.monotonic() + grace
        while time.monotonic() < end:
            if child.poll() is not None:
                return
            time.sleep(0.05)
        if child.poll() is None:
            print(f"run_process: {os.path.basename(command[0])} did not stop within {grace:g} s of the signal; "
                  "killing it and its children", file=sys.stderr, flush=True)
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = child.wait()
    if stopping.is_set():  # whatever the main process left behind in its group goes with it
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if status < 0:  # ended by a signal: report it the way a shell does
        return 128 - status
    return status


if __name__ == "__main__":
    sys.exit(main())
