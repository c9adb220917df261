"""Where a generation job's time goes inside the worker: the task run in this process, per stage.

It builds the app on a fresh temporary instance (SQLite by default, or a fresh database on the PostgreSQL
server of ``--database-url``, dropped afterwards), registers the shipped checkpoint ``tests/fixtures/digits-aae-cg``
as ``digits``, and for each image count n and each number B of jobs decoded together runs the real task
``workers.tasks.generate_images`` in this process (no broker, no HTTP): B queued jobs of label ``7`` are
created, the task is run on the first, and it claims the other B - 1 as companions (micro-batching), exactly
as a worker does. The config is the app's own (``BATCH_WAIT_MS``, ``GENERATE_CHUNK``...), ``OMP_NUM_THREADS``
and torch threads are 1, like the benchmarked worker.

The stages are timed by ``workers.batching.stage_clock`` (enabled here only): lookup (the job row at the start),
claim (the conditional UPDATE + commit of the message's job), model (the LRU cache hit), batch_wait (the
``BATCH_WAIT_MS`` sleep), companions (the query for queued jobs + one claim per companion), members (job rows
and conditions), latents, decode, progress (the lease renewal after each decode group), png (PIL encoding,
per image), storage (the file write, per image), finish (per job: the fenced UPDATE to ``succeeded``, the
image rows, the commit), and "other" = the task's wall time minus the stages (lease thread, Python). A stage
run in several threads at once counts the sum of their times. Each figure is the median over ``--repeats``
runs after ``--warmup`` runs; per job and per image divide the task's figure by B and by B * n. The SQL
statements and commits of one task (engine events, all threads) are counted too: unlike the times, they do
not depend on how busy the (shared) machine is.

It also times the no-op a batched job's own message costs when it arrives (the job is already done).

    python bench/job_breakdown.py                         # SQLite
    python bench/job_breakdown.py --database-url postgresql://postgres@127.0.0.1:5432/test
    python bench/job_breakdown.py --quick                 # n = 1; B = 1, 4; 2 repeats: a smoke test
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.common import counts, emit, machine_info, markdown_table  # noqa: E402

CHECKPOINT = REPO / "tests" / "fixtures" / "digits-aae-cg"
MODEL, LABEL = "digits", "7"
STAGES = ["lookup", "claim", "model", "batch_wait", "companions", "members", "latents", "decode", "progress",
          "png", "storage", "finish"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=counts, default="1,16", help="n values: images per job, comma-separated")
    p.add_argument("--batched", type=counts, default="1,4,32", help="B values: jobs decoded together, comma-separated")
    p.add_argument("--database-url", default=None,
                   help="a PostgreSQL server (any database on it): a fresh database is created there and dropped")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json-out", default=None, help="also write the results JSON here")
    p.add_argument("--label", default="", help="a free-form note stored in the JSON (e.g. before/after)")
    p.add_argument("--untrained-shape", default=None, metavar="CxHxW",
                   help="a freshly initialised class-conditional aae-cg of this image shape instead of "
                        "tests/fixtures/digits-aae-cg (as bench/service_throughput.py: the speed of a bigger model)")
    p.add_argument("--quick", action="store_true", help="n = 1; B = 1, 4; 1 warm-up, 2 repeats")
    args = p.parse_args(argv)
    if args.untrained_shape:
        from bench.service_throughput import parse_shape

        args.untrained_shape = parse_shape(args.untrained_shape, p)
    if args.quick:
        args.images, args.batched, args.warmup, args.repeats = [1], [1, 4], 1, 2
    return args


def make_app(workdir: Path, db_url: str, checkpoint: Path = CHECKPOINT):
    from app import create_app
    from app.core.extensions import db
    from app.core.migrate import upgrade
    from app.services.model_versions import register_model

    app = create_app({"SQLALCHEMY_DATABASE_URI": db_url,
                      "CELERY_BROKER_URL": f"sqla+sqlite:///{workdir / 'broker.sqlite3'}",
                      "STORAGE_ROOT": str(workdir / "images"), "DATASET_ROOT": str(workdir / "datasets"),
                      "SECRET_KEY_FILE": str(workdir / "secret_key"),
                      "METRICS_DIR": str(workdir / "metrics"),  # not the checkout's instance/metrics
                      "DEVICE": "cpu", "DEFAULT_MODEL": MODEL})
    upgrade(app)
    with app.app_context():
        register_model(MODEL, checkpoint, serve=True)
        db.session.remove()
    return app


@contextmanager
def task_instance(args: argparse.Namespace, prefix: str) -> Iterator[Any]:
    """The app on a fresh temporary instance: SQLite in a temporary folder, or a fresh database on the
    PostgreSQL server of ``args.database_url``; the shipped checkpoint, or an untrained aae-cg of
    ``args.untrained_shape``, registered as ``digits``. Everything is removed (the database dropped) on the
    way out."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    pg = None
    try:
        from bench.service_throughput import instance_database

        db_url, pg = instance_database(args.database_url, workdir)
        checkpoint = CHECKPOINT
        if args.untrained_shape:
            from bench.service_throughput import untrained_checkpoint

            checkpoint = untrained_checkpoint(args.untrained_shape, workdir / "model")
        app = make_app(workdir, db_url, checkpoint)
        try:
            yield app
        finally:
            with app.app_context():
                from app.core.extensions import db

                db.session.remove()
                db.engine.dispose()
    finally:
        if pg is not None:
            from bench.service_throughput import drop_pg_database

            drop_pg_database(*pg)
        shutil.rmtree(workdir, ignore_errors=True)


def queued_jobs(app, n: int, count: int, seed: int) -> list[str]:
    from app.core.extensions import db
    from app.services.jobs import _job_from_spec, validate_job

    with app.test_request_context():
        jobs = [_job_from_spec(validate_job({"model": MODEL, "label": LABEL, "n": n, "seed": seed + i * n}))
                for i in range(count)]
        db.session.add_all(jobs)
        db.session.commit()
        ids = [job.id for job in jobs]
        db.session.remove()
    return ids


class StatementCounter:
    """SQL statements and commits on the app's engine (all threads), by SQLAlchemy engine events: counts do
    not depend on the machine's load, unlike the times."""

    def __init__(self, engine) -> None:
        from sqlalchemy import event

        self.statements = self.commits = 0
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)

    def _statement(self, *args) -> None:
        self.statements += 1

    def _commit(self, *args) -> None:
        self.commits += 1

    def reset(self) -> None:
        self.statements = self.commits = 0


def run_case(app, n: int, batched: int, args: argparse.Namespace, seed: int, counter: StatementCounter) -> dict:
    from app.core.extensions import db
    from workers.batching import stage_clock
    from workers.tasks import generate_images

    samples: list[dict[str, float]] = []
    noops: list[float] = []
    tallies: list[tuple[int, int]] = []
    for r in range(args.warmup + args.repeats):
        jobs = queued_jobs(app, n, batched, seed + r * 1000)
        with app.app_context():
            stage_clock.reset()
            counter.reset()
            stage_clock.enabled = True
            t0 = time.perf_counter()
            try:
                outcome = generate_images.run(jobs[0])
            finally:
                stage_clock.enabled = False
            wall = time.perf_counter() - t0
            statements, commits = counter.statements, counter.commits
            if outcome != "succeeded":
                raise RuntimeError(f"job {jobs[0]}: {outcome}")
            seconds = dict(stage_clock.seconds)
            if batched > 1:  # the companions' own messages, when they come: no-ops
                t1 = time.perf_counter()
                skipped = generate_images.run(jobs[1])
                noop = time.perf_counter() - t1
                if not skipped.startswith("skipped"):
                    raise RuntimeError(f"companion {jobs[1]} was not batched: {skipped}")
            db.session.remove()
        if r < args.warmup:
            continue
        sample = {stage: seconds.get(stage, 0.0) for stage in STAGES}
        sample["other"] = wall - sum(sample.values())
        sample["total"] = wall
        samples.append(sample)
        tallies.append((statements, commits))
        if batched > 1:
            noops.append(noop)
    medians = {key: statistics.median(s[key] for s in samples) for key in [*STAGES, "other", "total"]}
    row = {"n": n, "batched_jobs": batched, "images": n * batched, "repeats": args.repeats,
           "task_ms": {k: round(v * 1e3, 3) for k, v in medians.items()},
           "per_job_ms": {k: round(v * 1e3 / batched, 3) for k, v in medians.items()},
           "per_image_ms": {k: round(v * 1e3 / (batched * n), 3) for k, v in medians.items()},
           "noop_message_ms": round(statistics.median(noops) * 1e3, 3) if noops else None,
           "statements_per_task": max(c[0] for c in tallies), "commits_per_task": max(c[1] for c in tallies)}
    return row


def worker_settings() -> dict:
    import workers.tasks as tasks

    return {"LOG_STAGE_TIMES": tasks.LOG_STAGE_TIMES}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    images, batched = args.images, args.batched
    machine = machine_info(torch.device("cpu"))
    started = time.perf_counter()
    with task_instance(args, "pf-bench-breakdown-") as app:
        with app.app_context():
            from app.core.extensions import db

            counter = StatementCounter(db.engine)
        config = {k: app.config[k] for k in ("BATCH_WAIT_MS", "BATCH_MAX_IMAGES", "GENERATE_CHUNK", "PNG_THREADS")}
        rows = []
        seed = 1
        for n in images:
            for b in batched:
                if n * b > int(app.config["BATCH_MAX_IMAGES"]):
                    continue  # more than one task would take them
                rows.append(run_case(app, n, b, args, seed, counter))
                seed += 100_000

    headers = ["n", "B", "per", *STAGES, "other", "total", "no-op msg", "SQL statements", "commits"]
    table_rows = []
    for row in rows:
        for per, key in (("task", "task_ms"), ("job", "per_job_ms"), ("image", "per_image_ms")):
            if per == "job" and row["batched_jobs"] == 1:
                continue
            if per == "image" and row["n"] == 1 and row["batched_jobs"] == 1:
                continue
            table_rows.append([row["n"], row["batched_jobs"], per, *[row[key][s] for s in STAGES],
                               row[key]["other"], row[key]["total"],
                               row["noop_message_ms"] if per == "task" else None,
                               row["statements_per_task"] if per == "task" else None,
                               row["commits_per_task"] if per == "task" else None])
    table = ("milliseconds (median of %d runs) per task, per job and per image\n\n" % args.repeats
             + markdown_table(headers, table_rows))
    payload = {"benchmark": "job_breakdown", "machine": machine, "rows": rows, "stages": STAGES,
               "settings": {"backend": "postgresql" if args.database_url else "sqlite", "images": images,
                            "batched": batched, "warmup": args.warmup, "repeats": args.repeats,
                            "quick": args.quick, "label": args.label,
                            "model": "x".join(map(str, args.untrained_shape)) + " aae-cg, untrained"
                                     if args.untrained_shape else "tests/fixtures/digits-aae-cg",
                            **config, **worker_settings(),
                            "command": " ".join(["job_breakdown.py",
                                                 *(argv if argv is not None else sys.argv[1:])])},
               "wall_seconds": round(time.perf_counter() - started, 1)}
    emit(table, payload, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
