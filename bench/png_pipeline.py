"""PNG encoding and file writes beside the decode, or inline: the generation task at ``PNG_THREADS``
= 0, 1, 2..., run in this process, alternating the settings run by run.

Like ``bench/job_breakdown.py`` (whose instance set-up it uses): a fresh temporary instance (SQLite, or a fresh
database on the PostgreSQL server of ``--database-url``), the shipped ``tests/fixtures/digits-aae-cg`` (or an
untrained aae-cg of ``--untrained-shape``), B queued jobs of n images, and the real task
``workers.tasks.generate_images`` on the first, which decodes the B jobs together. Each repeat runs every
``--threads`` value once, in turn, so a slow moment of this shared machine falls on all of them alike. Per
value: the task's median wall time, and its median CPU time (this process, all threads: what the threads
cost), per image, and the wall and CPU ratios to the first value (inline when it is 0).

    python bench/png_pipeline.py                                   # 28x28 shipped model, SQLite
    python bench/png_pipeline.py --untrained-shape 3x64x64 --database-url postgresql://postgres@127.0.0.1:5432/test
    python bench/png_pipeline.py --quick                           # n = 16, B = 1; 1 repeat: a smoke test
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.common import counts, emit, machine_info, markdown_table  # noqa: E402
from bench.job_breakdown import queued_jobs, task_instance  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--threads", default="0,1,2", help="PNG_THREADS values, comma-separated (the first is the "
                                                       "reference of the ratios)")
    p.add_argument("--images", type=counts, default="1,16", help="n values: images per job")
    p.add_argument("--batched", type=counts, default="4", help="B values: jobs decoded together by one task")
    p.add_argument("--database-url", default=None,
                   help="a PostgreSQL server (any database on it): a fresh database is created there and dropped")
    p.add_argument("--untrained-shape", default=None, metavar="CxHxW",
                   help="a freshly initialised class-conditional aae-cg of this image shape instead of "
                        "tests/fixtures/digits-aae-cg (its speed is a trained model's; its images are noise)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds (every value once each)")
    p.add_argument("--repeats", type=int, default=9, help="timed rounds")
    p.add_argument("--json-out", default=None, help="also write the results JSON here")
    p.add_argument("--quick", action="store_true", help="n = 16; B = 1; 1 warm-up and 1 timed round")
    args = p.parse_args(argv)
    try:
        args.threads = [int(x) for x in args.threads.split(",") if x]
        if not args.threads or min(args.threads) < 0:
            raise ValueError
    except ValueError:
        p.error(f"--threads {args.threads!r}: expected whole numbers >= 0, comma-separated")
    if args.untrained_shape:
        from bench.service_throughput import parse_shape

        args.untrained_shape = parse_shape(args.untrained_shape, p)
    if args.quick:
        args.images, args.batched, args.warmup, args.repeats = [16], [1], 1, 1
    return args


def run_case(app, n: int, batched: int, args: argparse.Namespace, seed: int) -> list[dict]:
    """Rows (one per ``--threads`` value) for B jobs of n images."""
    from app.core.extensions import db
    from workers.tasks import generate_images

    wall: dict[int, list[float]] = {t: [] for t in args.threads}
    cpu: dict[int, list[float]] = {t: [] for t in args.threads}
    for r in range(args.warmup + args.repeats):
        for t in args.threads:
            jobs = queued_jobs(app, n, batched, seed)
            seed += batched * n
            app.config["PNG_THREADS"] = t  # read by the task at its start
            with app.app_context():
                c0, t0 = time.process_time(), time.perf_counter()
                outcome = generate_images.run(jobs[0])
                w, c = time.perf_counter() - t0, time.process_time() - c0
                db.session.remove()
            if outcome != "succeeded":
                raise RuntimeError(f"job {jobs[0]}: {outcome}")
            if r >= args.warmup:
                wall[t].append(w)
                cpu[t].append(c)
    images = n * batched
    ref = args.threads[0]
    rows = []
    for t in args.threads:
        w, c = statistics.median(wall[t]), statistics.median(cpu[t])
        rows.append({"png_threads": t, "n": n, "batched_jobs": batched, "images": images, "repeats": args.repeats,
                     "task_wall_ms": round(w * 1e3, 3), "task_cpu_ms": round(c * 1e3, 3),
                     "wall_ms_per_image": round(w * 1e3 / images, 4), "cpu_ms_per_image": round(c * 1e3 / images, 4),
                     "wall_vs_first": round(w / statistics.median(wall[ref]), 3),
                     "cpu_vs_first": round(c / statistics.median(cpu[ref]), 3)})
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    images, batched = args.images, args.batched
    machine = machine_info(torch.device("cpu"))
    started = time.perf_counter()
    rows: list[dict] = []
    with task_instance(args, "pf-bench-png-") as app:
        seed = 1
        for n in images:
            for b in batched:
                if n * b > int(app.config["BATCH_MAX_IMAGES"]):
                    continue  # more than one task would take them
                rows.extend(run_case(app, n, b, args, seed))
                seed += 1_000_000

    model = ("x".join(map(str, args.untrained_shape)) + " aae-cg, untrained") if args.untrained_shape \
        else "tests/fixtures/digits-aae-cg"
    table = markdown_table(
        ["n", "B", "PNG_THREADS", "task wall ms", "task CPU ms", "wall ms/image", "CPU ms/image",
         f"wall vs {args.threads[0]}", f"CPU vs {args.threads[0]}"],
        [[r["n"], r["batched_jobs"], r["png_threads"], r["task_wall_ms"], r["task_cpu_ms"], r["wall_ms_per_image"],
          r["cpu_ms_per_image"], r["wall_vs_first"], r["cpu_vs_first"]] for r in rows])
    table += f"\n\nmodel: {model}; medians of {args.repeats} rounds, the settings alternating within each round"
    payload = {"benchmark": "png_pipeline", "machine": machine, "rows": rows,
               "settings": {"backend": "postgresql" if args.database_url else "sqlite", "model": model,
                            "threads": args.threads, "images": images, "batched": batched, "warmup": args.warmup,
                            "repeats": args.repeats, "quick": args.quick,
                            "command": " ".join(["png_pipeline.py", *(argv if argv is not None else sys.argv[1:])])},
               "wall_seconds": round(time.perf_counter() - started, 1)}
    emit(table, payload, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
