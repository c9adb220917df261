"""How the service's cost grows: throughput with 1, 2 and 4 worker pool processes, and the memory of
a worker process as its model cache grows.

It starts the service as ``bench/service_throughput.py`` does (a real ``gunicorn app.wsgi:app`` and Celery
worker on a fresh temporary instance: SQLite + the embedded broker by default, or ``--database-url`` /
``--redis-url``), with the shipped checkpoint ``tests/fixtures/digits-aae-cg`` registered as ``digits`` and again as
``digits-2`` ... ``digits-M`` (M = the largest ``--models`` value; every registration is its own model
version, so its own entry in a worker's model cache).

* Memory: a fresh worker with ONE pool process and ``MODEL_CACHE_SIZE`` = M (the P = 1 worker below, before
  its phases): the resident set (VmRSS; psutil when installed) and the proportional set (PSS, shared pages
  split between the processes sharing them) of the pool process before any job, then after one job to each
  of ``digits``, ``digits-2``... (each loads its model into the cache). With ``--bounded-cache C`` (default
  2, the config default; 0: skip), the same again with ``MODEL_CACHE_SIZE`` = C, in a worker of its own: the
  resident set stops growing once the cache is full (it may not shrink: the allocator keeps freed memory).
* Scaling: for each P in ``--workers``, ONE Celery worker with ``--concurrency P`` (P prefork pool processes
  under one parent: this is what ``WORKER_CONCURRENCY`` sets); an untimed warm-up phase (2P clients, 4P
  jobs) loads the model in the pool processes; then, for each n in ``--images``, one phase of K =
  ``--clients`` concurrent clients as in ``service_throughput.py`` (images/s, latency percentiles, CPU time
  of the web server, the worker and the clients per job). The web server (``--web-workers`` gunicorn
  workers) and the database stay the same; the worker is restarted for each P. Ratios: img/s vs P = 1, and
  vs the raw model at the same n (timed in this process just before and after each phase, as
  ``service_throughput.py`` does; ``raw_drift`` shows how far the machine's speed moved across the phase).

The machine's CPU core count is recorded (``cpu_cores``, and ``usable_cores``: the CPUs this process may
run on): on a CPU-only machine every pool process, the web server and the clients share those cores.

    python bench/worker_scaling.py                                   # SQLite + embedded broker
    python bench/worker_scaling.py --database-url postgresql://postgres@127.0.0.1:5432/test \\
        --redis-url redis://127.0.0.1:6379/0                         # PostgreSQL + Redis
    python bench/worker_scaling.py --quick                           # P = 1, 2; K = 4; models 1, 2: a smoke test
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.common import counts, emit, machine_info, markdown_table  # noqa: E402
from bench.service_throughput import (CHECKPOINT, MODEL, Deadline, RawModel, Service,  # noqa: E402
                                      add_service_arguments, bracketed_phase, cpu_cell, install_signal_handlers,
                                      resolve_phase_defaults, run_job, run_phase, running_service, stage_env)

# The model is loaded by the first real job of each pool process; a batched job's own message is a no-op and
# loads nothing, so warming up takes rounds of concurrent jobs (see warm_pool).


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workers", type=counts, default="1,2,4",
                   help="P values: Celery pool processes, comma-separated")
    p.add_argument("--clients", type=int, default=32, help="K: concurrent clients of each timed phase")
    add_service_arguments(p)
    p.add_argument("--models", type=counts, default="1,2,4,8",
                   help="model versions loaded when the pool process's RSS is recorded (the series runs 1..max)")
    p.add_argument("--bounded-cache", type=int, default=2,
                   help="also run the memory series with this MODEL_CACHE_SIZE (0: skip)")
    p.add_argument("--log-stage-times", action="store_true",
                   help="the worker logs each task's time per stage (PRIORFORGE_LOG_STAGE_TIMES=1; with --keep)")
    p.add_argument("--quick", action="store_true",
                   help="P = 1, 2; K = 4; n = 1; 8 jobs a phase; models 1, 2; no bounded-cache series; "
                        "1 web worker")
    args = p.parse_args(argv)
    if args.quick:
        args.workers, args.clients, args.images, args.jobs_per_client, args.min_jobs = [1, 2], 4, [1], 2, 8
        args.models, args.bounded_cache, args.warmup, args.repeats = [1, 2], 0, 1, 5
        args.web_workers = 1
    resolve_phase_defaults(args)
    return args


_T0 = time.perf_counter()


def progress(message: str) -> None:
    """A line on stderr (stdout carries the table and the JSON line)."""
    print(f"[{time.perf_counter() - _T0:7.1f} s] {message}", file=sys.stderr, flush=True)


# -- memory -------------------------------------------------------------------------------------------
def rss_mib(pid: int) -> float | None:
    """Resident set of a process in MiB (psutil when installed, else /proc/<pid>/status VmRSS)."""
    try:
        import psutil  # type: ignore[import-not-found]

        return round(psutil.Process(pid).memory_info().rss / 2**20, 1)
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - the process is gone
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:
        return None
    return None


def pss_mib(pid: int) -> float | None:
    """Proportional set size in MiB (/proc/<pid>/smaps_rollup): pages shared with the parent after the fork
    count in part, so the PSS of all processes adds up to the memory they really use."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:
        return None
    return None


def pool_processes(parent: int) -> list[int]:
    """The pool processes of a Celery worker: the children of its main process (Linux /proc)."""
    children = []
    try:
        with open(f"/proc/{parent}/task/{parent}/children") as f:
            children = [int(pid) for pid in f.read().split()]
    except OSError:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == parent:
                            children.append(int(entry))
                except OSError:
                    continue
    return sorted(children)


def wait_pool(service: Service, count: int, deadline: Deadline) -> list[int]:
    end = time.monotonic() + 60
    while True:
        assert service.worker is not None
        pids = pool_processes(service.worker.pid)
        if len(pids) >= count:
            return pids
        deadline.check("waiting for the pool processes")
        if time.monotonic() > end:
            raise TimeoutError(f"the worker has {len(pids)} pool processes, not {count}")
        time.sleep(0.1)


def memory_series(service: Service, max_models: int, record: set[int], cache_size: int, deadline: Deadline,
                  seed: int) -> list[dict]:
    """The memory of a fresh one-process worker with MODEL_CACHE_SIZE = ``cache_size`` (the running worker,
    when one is running: it must be fresh, with one pool process and that cache size; else one is started
    and stopped): its pool process's RSS and PSS before any job and after one job to each of the first
    ``max_models`` model versions."""
    own = service.worker is None
    if own:
        service.start_worker(1, deadline, extra_env={"PRIORFORGE_MODEL_CACHE_SIZE": str(cache_size)})
    try:
        (pool,) = wait_pool(service, 1, deadline)
        assert service.worker is not None
        rows = []

        def sample(models: int) -> None:
            time.sleep(0.2)
            rows.append({"models_used": models, "models_cached": min(models, cache_size),
                         "cache_size": cache_size, "pool_rss_mib": rss_mib(pool), "pool_pss_mib": pss_mib(pool),
                         "parent_rss_mib": rss_mib(service.worker.pid)})

        sample(0)
        progress(f"memory series, MODEL_CACHE_SIZE={cache_size}")
        for m in range(1, max_models + 1):
            run_job(service.base, 1, seed + m, 0.02, deadline, model=MODEL if m == 1 else f"{MODEL}-{m}")
            if m in record:
                sample(m)
        if pool_processes(service.worker.pid) != [pool]:
            raise RuntimeError("the pool process was replaced during the memory series")
        base = rows[0]["pool_rss_mib"]
        for row in rows:
            row["delta_mib"] = round(row["pool_rss_mib"] - base, 1) if base is not None else None
        return rows
    finally:
        if own:
            service.wait_worker_idle(deadline)
            service.stop_worker()


def warm_pool(service: Service, procs: int, fresh: dict[int, float | None], deadline: Deadline, seed: int,
              rounds: int = 5) -> int:
    """Untimed rounds of 2P concurrent 1-image jobs until every pool process has loaded the model (its RSS
    grew by 20 MiB or more since it started: loading ``digits`` adds ~50), at most ``rounds``; returns the
    next seed. The timed phases then pay no model load."""
    for _ in range(rounds):
        run_phase(service.base, 2 * procs, 1, 2 * procs, 0.02, seed, deadline)
        seed += 2 * procs
        service.wait_worker_idle(deadline, quiet=0.3)
        if all(rss_mib(pid) is None or base is None or rss_mib(pid) >= base + 20  # type: ignore[operator]
               for pid, base in fresh.items()):
            break
    return seed


# -- main ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = Deadline(args.timeout)
    workers, images, record = args.workers, args.images, set(args.models)
    max_models = max(record)
    torch.set_num_threads(1)
    machine = machine_info(torch.device("cpu"))
    machine["usable_cores"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    started = time.perf_counter()
    previous = install_signal_handlers()
    scaling: list[dict] = []
    memory: list[dict] = []
    try:
        raw_model = RawModel.from_args(args)
        raw = {n: raw_model.time(n) for n in sorted(set(images))}  # before the servers start
        progress("raw model timed")
        extra = [f"{MODEL}-{m}" for m in range(2, max_models + 1)]
        with running_service(args, deadline, concurrency=None, models=extra, wait_web=False,
                             extra_env=stage_env(args)) as service:
            seed = 1000
            if args.bounded_cache and args.bounded_cache < max_models:
                memory += memory_series(service, max_models, record, args.bounded_cache, deadline, seed)
                seed += 100
            if 1 not in workers:
                memory += memory_series(service, max_models, record, max_models, deadline, seed)
                seed += 100
            for procs in workers:
                service.start_worker(procs, deadline,
                                     extra_env={"PRIORFORGE_MODEL_CACHE_SIZE": str(max_models)})
                try:
                    pool = wait_pool(service, procs, deadline)
                    fresh = {pid: rss_mib(pid) for pid in pool}
                    service.wait_web(deadline)  # the web server started with the first worker
                    progress(f"worker with {procs} pool process(es) ready")
                    if procs == 1:  # the fresh one-process worker first runs the memory series
                        memory += memory_series(service, max_models, record, max_models, deadline, seed)
                        seed += 100
                    seed = warm_pool(service, procs, fresh, deadline, seed)
                    progress("pool warm")
                    for n in images:
                        row = bracketed_phase(service, args, raw_model, args.clients, n, seed, deadline)
                        seed += row["jobs"] * n
                        service.wait_worker_idle(deadline)
                        row.update(pool_processes=procs, ratio_vs_raw=row.pop("ratio"),
                                   pool_rss_mib=[rss_mib(pid) for pid in pool])
                        scaling.append(row)
                        progress(f"P={procs} n={n}: {row['images_per_s']} img/s")
                finally:
                    service.stop_worker()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

    for row in scaling:
        base = next((r for r in scaling if r["pool_processes"] == workers[0] and r["n"] == row["n"]), None)
        row["ratio_vs_first"] = round(row["images_per_s"] / base["images_per_s"], 2) if base else None
    cores = f"{machine['cpu_cores']} CPU cores (usable: {machine['usable_cores']})"
    table = markdown_table(
        ["pool processes", "n", "K", "jobs", "img/s", f"vs {workers[0]} process(es)", "service/raw", "p50 ms",
         "p95 ms", "CPU ms/job web / worker / clients", "cores busy"],
        [[r["pool_processes"], r["n"], r["clients"], r["jobs"], r["images_per_s"], r["ratio_vs_first"],
          r["ratio_vs_raw"], r["p50_ms"], r["p95_ms"], cpu_cell(r), r["cpu_busy"]] for r in scaling])
    table += "\n\n" + markdown_table(
        ["MODEL_CACHE_SIZE", "model versions used", "in the cache", "pool process RSS MiB", "vs no model MiB",
         "pool process PSS MiB", "worker parent RSS MiB"],
        [[r["cache_size"], r["models_used"], r["models_cached"], r["pool_rss_mib"], r["delta_mib"],
          r["pool_pss_mib"], r["parent_rss_mib"]] for r in memory])
    weights = sum(p.stat().st_size for p in CHECKPOINT.glob("*.safetensors"))
    table += f"\n\n{cores}; checkpoint weights {weights / 2**20:.2f} MiB per model version"
    payload = {"benchmark": "worker_scaling", "machine": machine, "scaling": scaling, "memory": memory,
               "raw": [raw[n] for n in sorted(raw)], "checkpoint_weights_mib": round(weights / 2**20, 3),
               "settings": {"backend": "postgresql+redis" if args.database_url else "sqlite+embedded",
                            "workers": workers, "clients": args.clients, "images": images,
                            "models": sorted(record), "bounded_cache": args.bounded_cache,
                            "web_workers": args.web_workers, "web_threads": args.web_threads,
                            "client_mode": args.client_mode, "poll_ms": args.poll_ms,
                            "max_poll_rate": args.max_poll_rate, "quick": args.quick,
                            "warmup": args.warmup, "repeats": args.repeats, "raw_min_seconds": args.raw_min_seconds,
                            "min_seconds": args.min_seconds, "phase_warmup": args.phase_warmup,
                            "worker_processes": "one Celery worker, --concurrency P (prefork pool)",
                            "command": " ".join(["worker_scaling.py",
                                                 *(argv if argv is not None else sys.argv[1:])])},
               "wall_seconds": round(time.perf_counter() - started, 1)}
    emit(table, payload, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
