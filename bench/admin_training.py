"""The admin path on real data, end to end: upload a class-folder zip cut from a real data set, train a model of
default size on it through the admin API on a real Celery worker (queue ``train``), watch the progress, compare
the result with the serving version, promote it, and generate with it.

The instance is the service's default (SQLite + the embedded broker) in a temporary folder; the API calls go
through the app's test client (the same routes and code as over HTTP), the training and generation through a
real ``celery worker`` process. Prints a table and a ``BENCH_JSON`` line.

    python bench/admin_training.py --data-root ../shared/data --dataset mnist --per-class 500 \\
        --max-cpu-minutes 5 --eval-samples 1000 --json-out bench/results/admin_training-mnist.json
    python bench/admin_training.py --quick          # digits, 20 steps of a tiny model, no evaluation (smoke test)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import emit, markdown_table  # noqa: E402

TINY = {"base_channels": 4, "hidden_dim": 16, "disc_hidden": 8, "code_disc_hidden": [8], "latent_dim": 8}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist, cifar10 or digits")
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--per-class", type=int, default=500, help="images per class in the uploaded zip")
    p.add_argument("--backend", default="aae-cg")
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--max-cpu-minutes", type=float, default=4.0, help="the run's CPU budget")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--eval-samples", type=int, default=1000)
    p.add_argument("--quick", action="store_true", help="digits, 20 steps of a tiny model")
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.dataset, args.per_class, args.max_steps, args.max_cpu_minutes = "digits", 20, 20, None
        args.batch_size, args.eval_samples = 16, 50
    return args


def class_zip(dataset: str, data_root: str, per_class: int) -> tuple[bytes, int]:
    """A zip of ``<class>/<n>.png``: the first ``per_class`` training images of every class."""
    import numpy as np
    from PIL import Image

    from training.data import load_dataset

    data = load_dataset(dataset, data_root, "train")
    buffer, count = io.BytesIO(), 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for label, name in enumerate(data.class_names):
            index = (data.labels == label).nonzero().squeeze(1)[:per_class]
            for i in index.tolist():
                array = data.images[i].permute(1, 2, 0).numpy()
                img = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else np.ascontiguousarray(array))
                png = io.BytesIO()
                img.save(png, format="PNG")
                zf.writestr(f"{name}/{i:05d}.png", png.getvalue())
                count += 1
    return buffer.getvalue(), count


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="pf-bench-admin-"))
    config = {
        "METRICS_DIR": str(workdir / "metrics"),  # not the checkout's instance/metrics
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{workdir / 'priorforge.sqlite3'}",
        "CELERY_BROKER_URL": f"sqla+sqlite:///{workdir / 'broker.sqlite3'}",
        "STORAGE_ROOT": str(workdir / "images"), "DATASET_ROOT": str(workdir / "datasets"),
        "SECRET_KEY_FILE": str(workdir / "secret_key"),  # not the checkout's instance/
        "TRAINING_ROOT": str(workdir / "trainings"), "DEVICE": "cpu", "RECONCILE_INTERVAL": 5,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIORFORGE_") or k == "PRIORFORGE_CACHE"}
    env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1")})
    env.update({f"PRIORFORGE_{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items()})
    worker = None
    try:
        from app import create_app
        from app.services.accounts import create_user, issue_token
        from app.core.migrate import upgrade
        from app.services.model_versions import register_model

        app = create_app({"TESTING": True, **config})
        upgrade(app)
        with app.app_context():
            token = issue_token(create_user("bench-admin", "a long bench password", is_admin=True), "bench").token
        client = app.test_client()
        headers = {"Authorization": f"Bearer {token}"}
        name = f"{args.dataset}-admin"
        log = open(workdir / "worker.log", "ab")
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "generate,bulk,train",
             "--concurrency", "1", "--loglevel", "INFO", "--without-mingle", "--without-gossip"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        t0 = time.perf_counter()
        archive, n_images = class_zip(args.dataset, args.data_root, args.per_class)
        t_zip = time.perf_counter() - t0
        t0 = time.perf_counter()
        uploaded = client.post("/api/v1/admin/datasets", headers=headers, content_type="multipart/form-data",
                               data={"file": (io.BytesIO(archive), f"{args.dataset}.zip"), "name": name})
        t_upload = time.perf_counter() - t0
        assert uploaded.status_code == 201, uploaded.get_json()
        # a serving version of the same name to compare with: the shipped digits model for digit data
        if args.dataset in ("mnist", "digits"):
            with app.app_context():
                register_model(name, REPO / "tests" / "fixtures" / "digits-aae-cg")

        request: dict[str, Any] = {"backend": args.backend, "dataset": name, "model_name": name,
                                   "max_steps": args.max_steps, "batch_size": args.batch_size,
                                   "eval_samples": args.eval_samples, "sample_every": 500, "checkpoint_every": 500}
        if args.max_cpu_minutes:
            request["max_cpu_minutes"] = args.max_cpu_minutes
        shape = (1, 28) if args.dataset in ("mnist", "fashion-mnist", "digits") else (3, 32)
        request["channels"], request["image_size"] = shape
        if args.quick:  # a smoke test: no evaluation (its classifier alone trains 600 steps)
            request["model_options"], request["evaluate"] = TINY, False
        t0 = time.perf_counter()
        created = client.post("/api/v1/admin/trainings", headers=headers, json=request)
        assert created.status_code == 202, created.get_json()
        url = created.get_json()["url"]
        last_print, last_seen = 0.0, None
        while True:
            run = client.get(url, headers=headers).get_json()
            if run["status"] in ("succeeded", "failed", "canceled"):
                break
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited: {(workdir / 'worker.log').read_text()[-3000:]}")
            seen = (run["phase"], run["step"])
            if seen != last_seen and time.perf_counter() - last_print > 15:
                last_print, last_seen = time.perf_counter(), seen
                print(f"  {run['phase']}: step {run['step']}/{run['total_steps']}, elapsed "
                      f"{run['elapsed_seconds']} s, eta {run['eta_seconds']} s, losses {run['losses']}", flush=True)
            time.sleep(1)
        t_train = time.perf_counter() - t0
        assert run["status"] == "succeeded", run["error"]
        version = run["model_version"]
        comparison = client.get(version["compare_url"], headers=headers).get_json()
        client.post(f"/api/v1/admin/models/{version['id']}/promote", headers=headers)
        t0 = time.perf_counter()
        label = comparison["candidate"]["class_names"][0]
        job = client.post("/api/v1/jobs", json={"model": name, "label": label, "n": 16, "seed": 1}).get_json()
        while (state := client.get(job["url"]).get_json())["status"] not in ("succeeded", "failed"):
            time.sleep(0.2)
        t_job = time.perf_counter() - t0
        assert state["status"] == "succeeded", state["error"]
        assert {image["model_version_id"] for image in state["images"]} == {version["id"]}

        evaluation = run["metrics"].get("evaluation", {})
        rows = [(r["metric"], r["candidate"], r["serving"], r["better"] or "")
                for r in comparison["metrics"] if r["metric"].startswith("evaluation.")
                and r["metric"].rsplit(".", 1)[-1] in ("feature_fid", "label_accuracy", "precision", "recall",
                                                       "reconstruction_mse")]
        summary = [("images uploaded", n_images), ("zip build s", round(t_zip, 1)), ("upload + checks s", round(t_upload, 1)),
                   ("steps", run["step"]), ("run wall s (queue to registered)", round(t_train, 1)),
                   ("train CPU s", run["metrics"].get("cpu_seconds")), ("promote -> 16 images s", round(t_job, 2))]
        table = (markdown_table(["figure", "value"], summary) + "\n\n"
                 + markdown_table(["metric", f"new v{version['version']}", "serving", "better"], rows))
        emit(table, {"bench": "admin_training", "dataset": args.dataset, "backend": args.backend,
                     "images": n_images, "zip_seconds": t_zip, "upload_seconds": t_upload, "steps": run["step"],
                     "run_wall_seconds": t_train, "metrics": run["metrics"], "comparison": comparison["metrics"],
                     "promote_to_images_seconds": t_job, "settings": request, "evaluation": evaluation},
             args.json_out)
        return 0
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
