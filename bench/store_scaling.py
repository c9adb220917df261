"""Throughput of one and two generation worker processes that share only PostgreSQL, Redis and the object store:
no shared disk, each worker with a model cache of its own, the model fetched from the store.

The store is moto's S3 server on 127.0.0.1 (started here, in this process); the database is a fresh PostgreSQL
database (dropped at the end) and the broker a Redis key prefix of this run. The shipped checkpoint
``tests/fixtures/digits-aae-cg`` is registered as ``digits`` through the store. For each P in ``--workers``:
P ``celery`` worker processes (``--concurrency 1`` each, separate ``MODEL_CACHE_DIR``), a warm-up of 2P
one-image jobs (each worker fetches and loads the model), then ``--jobs`` jobs of ``--images`` images submitted
at once through the API (the Flask app in this process); images/s from the first submission to the last job's
end. Then every PNG is read back through ``GET /api/v1/images/<id>.png`` (streamed from the store) and timed.

    python bench/store_scaling.py                                 # 1 and 2 workers, 160 jobs x 4 images
    python bench/store_scaling.py --workers 1,2 --jobs 24 --output bench/results/store_scaling.json

Run it nice'd on a shared machine; the machine's other load is part of the figures (``load_average``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import counts  # noqa: E402

CHECKPOINT = REPO / "tests" / "fixtures" / "digits-aae-cg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workers", type=counts, default="1,2", help="worker processes of each phase")
    p.add_argument("--jobs", type=int, default=160, help="jobs of each timed phase, submitted at once")
    p.add_argument("--images", type=int, default=4, help="images per job")
    p.add_argument("--batch-max-images", type=int, default=16,
                   help="BATCH_MAX_IMAGES of the workers: smaller batches share a backlog between the workers")
    p.add_argument("--database-url", default=os.environ.get(
        "PRIORFORGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    p.add_argument("--redis-url", default=os.environ.get("PRIORFORGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--output", type=Path, help="also write the figures here (JSON)")
    return p.parse_args(argv)


class Worker:
    def __init__(self, env: dict[str, str], log: Path):
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "generate", "--concurrency",
             "1", "--without-mingle", "--without-gossip", "--loglevel", "INFO", "-n", f"bench-{uuid.uuid4().hex[:6]}@%h"],
            cwd=REPO, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while " ready." not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"worker did not start:\n{self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.3)

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import logging

    import boto3
    import psycopg
    import redis
    from moto.server import ThreadedMotoServer
    from sqlalchemy import func, select
    from sqlalchemy.engine import make_url

    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    port = free_port()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request otherwise
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")

    admin = make_url(args.database_url)
    name = f"pf_bench_{uuid.uuid4().hex[:10]}"
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    prefix = f"pfbench-{uuid.uuid4().hex[:8]}:"
    config = {"SQLALCHEMY_DATABASE_URI": admin.set(database=name).render_as_string(hide_password=False),
              "CELERY_BROKER_URL": args.redis_url, "BROKER_KEY_PREFIX": prefix, "STORAGE_URL": "s3://bench/pf",
              "S3_ENDPOINT_URL": endpoint, "DEFAULT_MODEL": "digits", "BATCH_MAX_IMAGES": args.batch_max_images}
    work = Path(tempfile.mkdtemp(prefix="pf-store-bench-"))
    config["SECRET_KEY_FILE"] = str(work / "secret_key")  # not the checkout's instance/
    config["METRICS_DIR"] = str(work / "metrics")
    results = {"load_average_start": [round(x, 2) for x in os.getloadavg()], "cpu_cores": os.cpu_count(),
               "jobs": args.jobs, "images_per_job": args.images, "batch_max_images": args.batch_max_images,
               "phases": []}
    workers: list[Worker] = []
    try:
        from app import create_app
        from app.core.extensions import db
        from app.core.migrate import upgrade
        from app.core.tables import Job
        from app.services.model_versions import register_model

        app = create_app({"TESTING": True, **config, "STORAGE_ROOT": str(work / "web")})
        upgrade(app)
        with app.app_context():
            register_model("digits", CHECKPOINT)
        client = app.test_client()

        def submit(n_jobs: int, n: int) -> list[str]:
            out = []
            for i in range(n_jobs):
                resp = client.post("/api/v1/jobs", json={"label": str(i % 10), "n": n, "seed": i})
                assert resp.status_code == 202, resp.get_json()
                out.append(resp.get_json()["id"])
            return out

        def wait_done(ids: list[str], timeout: float = 900) -> None:
            deadline = time.monotonic() + timeout
            with app.app_context():
                while True:
                    db.session.expire_all()
                    left = db.session.scalar(select(func.count()).select_from(Job).where(
                        Job.id.in_(ids), Job.status.in_(("queued", "running"))))
                    db.session.commit()
                    if not left:
                        failed = db.session.scalar(select(func.count()).select_from(Job).where(
                            Job.id.in_(ids), Job.status != "succeeded"))
                        assert not failed, f"{failed} jobs did not succeed"
                        return
                    if time.monotonic() > deadline:
                        raise SystemExit("gave up waiting for the jobs")
                    time.sleep(0.05)

        base_env = {k: v for k, v in os.environ.items() if not k.startswith("PRIORFORGE_")}
        base_env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
        for procs in args.workers:
            workers = []
            for w in range(procs):
                env = dict(base_env)
                node = work / f"p{procs}-node{w}"
                env.update({f"PRIORFORGE_{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items()})
                env.update({"PRIORFORGE_MODEL_CACHE_DIR": str(node / "cache"), "PRIORFORGE_STORAGE_ROOT": str(node / "x"),
                            "PRIORFORGE_DATASET_ROOT": str(node / "datasets"),
                            "PRIORFORGE_TRAINING_ROOT": str(node / "trainings")})
                workers.append(Worker(env, work / f"p{procs}-node{w}.log"))
            for worker in workers:
                worker.wait_ready()
            wait_done(submit(2 * procs, 1))  # warm-up: each worker fetches and loads the model
            t0 = time.perf_counter()
            ids = submit(args.jobs, args.images)
            wait_done(ids)
            elapsed = time.perf_counter() - t0
            with app.app_context():
                per_worker = sorted(n for _, n in db.session.execute(
                    select(Job.worker, func.count()).where(Job.id.in_(ids)).group_by(Job.worker)).all())
                urls = [f"/api/v1/images/{image.id}.png" for job in db.session.scalars(
                    select(Job).where(Job.id.in_(ids))) for image in job.images]
            t1 = time.perf_counter()
            for url in urls:
                resp = client.get(url)
                assert resp.status_code == 200 and resp.data[:4] == b"\x89PNG"
            fetch = time.perf_counter() - t1
            images = args.jobs * args.images
            phase = {"workers": procs, "seconds": round(elapsed, 2), "images_per_s": round(images / elapsed, 1),
                     "jobs_per_worker": per_worker, "fetch_images_per_s": round(len(urls) / fetch, 1)}
            results["phases"].append(phase)
            print(f"workers={procs}: {images} images in {elapsed:.2f} s = {images / elapsed:.1f} img/s "
                  f"(jobs per worker {per_worker}); read back through the API: {len(urls) / fetch:.1f} img/s",
                  flush=True)
            for worker in workers:
                worker.stop()
            workers = []
        base = results["phases"][0]["images_per_s"]
        for phase in results["phases"]:
            phase["vs_one"] = round(phase["images_per_s"] / base, 2)
        results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        print("\n| worker processes | img/s | vs 1 | jobs per worker | read back img/s |\n| --- | --- | --- | --- | --- |")
        for phase in results["phases"]:
            print(f"| {phase['workers']} | {phase['images_per_s']} | {phase['vs_one']} | {phase['jobs_per_worker']} | "
                  f"{phase['fetch_images_per_s']} |")
        print("BENCH_JSON " + json.dumps(results))
        if args.output:
            args.output.write_text(json.dumps(results, indent=2) + "\n")
        app.extensions["celery"].pool.force_close_all()
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
    finally:
        for worker in workers:
            worker.stop()
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        client_r = redis.Redis.from_url(args.redis_url)
        keys = list(client_r.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client_r.delete(*keys)
        moto.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
