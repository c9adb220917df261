"""Idle CPU of a Celery worker on the embedded (SQLite) broker at several polling intervals.

The embedded broker is a table each worker polls every ``BROKER_POLLING_INTERVAL`` seconds; a shorter interval
picks a job up sooner (latency) and costs CPU while nothing happens. For each interval this starts one idle
worker (``-Q generate --concurrency 1``, no reconciliation timer) on a fresh instance, lets it settle, then
reads the CPU time of its process group over ``--seconds``. Prints a table and a ``BENCH_JSON`` line.

    python bench/broker_idle_cpu.py --intervals 0.05 0.02 0.01 0.005 --json-out bench/results/broker_idle_cpu.json
    python bench/broker_idle_cpu.py --intervals 0.05 --local-wakeups both   # LOCAL_WAKEUPS on and off
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.core.fastpath.doorbell import sweep  # noqa: E402
from bench.common import emit, markdown_table  # noqa: E402


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in process group ``pgid`` (from /proc)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--intervals", type=float, nargs="+", default=[0.05, 0.02, 0.01, 0.005])
    p.add_argument("--settle", type=float, default=25.0, help="seconds to let the workers start")
    p.add_argument("--seconds", type=float, default=30.0, help="seconds of idle time measured")
    p.add_argument("--local-wakeups", choices=["on", "off", "both"], default="on",
                   help="LOCAL_WAKEUPS of the workers; both: one worker of each per interval, side by side")
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    modes = {"on": ["on"], "off": ["off"], "both": ["on", "off"]}[args.local_wakeups]
    settings = [(interval, mode) for interval in args.intervals for mode in modes]
    workdirs, workers = [], {}
    try:
        for interval, mode in settings:
            workdir = Path(tempfile.mkdtemp(prefix="pf-bench-idle-"))
            workdirs.append(workdir)
            env = {k: v for k, v in os.environ.items() if not k.startswith("PRIORFORGE_")}
            env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
                       PRIORFORGE_SQLALCHEMY_DATABASE_URI=f"sqlite:///{workdir / 'priorforge.sqlite3'}",
                       PRIORFORGE_CELERY_BROKER_URL=f"sqla+sqlite:///{workdir / 'broker.sqlite3'}",
                       PRIORFORGE_BROKER_POLLING_INTERVAL=str(interval), PRIORFORGE_RECONCILE_INTERVAL="0",
                       PRIORFORGE_LOCAL_WAKEUPS="true" if mode == "on" else "false",
                       # its own folders, not the checkout's instance/
                       PRIORFORGE_STORAGE_ROOT=str(workdir / "images"),
                       PRIORFORGE_SECRET_KEY_FILE=str(workdir / "secret_key"),
                       PRIORFORGE_MODEL_CACHE_DIR=str(workdir / "model-cache"),
                       PRIORFORGE_DATASET_ROOT=str(workdir / "datasets"),
                       PRIORFORGE_TRAINING_ROOT=str(workdir / "trainings"),
                       TMPDIR=str(workdir))  # its temporary files (doorbell, pool folder) go with the folder
            subprocess.run([sys.executable, "-c", "from app import create_app\nfrom app.core.migrate import upgrade\n"
                            "upgrade(create_app())"], env=env, cwd=REPO, check=True)
            workers[(interval, mode)] = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "generate,bulk",
                 "--concurrency", "1", "--without-mingle", "--without-gossip", "-n", f"idle-{interval}-{mode}@%h"],
                env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(args.settle)
        start = {i: group_cpu_seconds(w.pid) for i, w in workers.items()}
        t0 = time.monotonic()
        time.sleep(args.seconds)
        wall = time.monotonic() - t0
        share = {i: (group_cpu_seconds(w.pid) - start[i]) / wall for i, w in workers.items()}
    finally:
        for worker in workers.values():
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
                worker.wait(60)
        for workdir in workdirs:
            sweep(f"sqlite:///{workdir / 'broker.sqlite3'}")  # a socket left by a worker that had to be killed
            shutil.rmtree(workdir, ignore_errors=True)
    first = settings[0]
    rows = [(f"{i * 1000:g}", mode, f"{share[(i, mode)]:.3f}", f"{share[(i, mode)] / share[first]:.2f}")
            for i, mode in settings]
    table = markdown_table(["poll interval ms", "local wake-ups", "idle CPU (cores)",
                            f"vs {first[0] * 1000:g} ms, {first[1]}"], rows)
    emit(table, {"bench": "broker_idle_cpu", "seconds": wall, "cpu_cores": os.cpu_count(),
                 "load_average": os.getloadavg(),
                 "idle_cpu_cores": {f"{i} {mode}": share[(i, mode)] for i, mode in settings}},
         args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
