"""Object storage with real parts: moto's S3 server on 127.0.0.1 (started here, nothing from the
network), and for the integration test two ``celery`` generation workers with separate instance folders and
no shared disk, on PostgreSQL and Redis. A model registered (and promoted) through one node's store is served
by the others, every image comes back through the API whichever worker stored it, and bad settings, a missing
bucket and an unreachable store give clear errors and a degraded health, never a lost job."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from typing import Any

import pytest

from tests.service.conftest import REPO, free_port, make_checkpoint, wait_for

BUCKET = "priorforge-test"


class MotoS3:
    """moto's standalone S3 server (``ThreadedMotoServer``) on a free port of 127.0.0.1. Its state lives in this
    process, so a stop and a start on the same port is a store that went away and came back, objects kept."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1")


@pytest.fixture
def s3(monkeypatch):
    pytest.importorskip("moto.server", reason="moto[server] is a test dependency (pip install 'moto[server]')")
    # boto3's standard variables; the worker processes inherit them
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    server = MotoS3()
    server.start()
    server.client().create_bucket(Bucket=BUCKET)
    yield server
    server.stop()


def store_config(s3: MotoS3, bucket: str = BUCKET, prefix: str = "pf") -> dict[str, Any]:
    return {"STORAGE_URL": f"s3://{bucket}/{prefix}", "S3_ENDPOINT_URL": s3.url, "STORAGE_TIMEOUT": 2.0}


# -- the backend and its settings -------------------------------------------------------------------
def test_s3_backend_round_trip_and_presigned_url(s3):
    import urllib.request

    from app.core.storage import storage_from_config

    storage = storage_from_config(store_config(s3))
    storage.check()
    assert storage.remote and "s3://priorforge-test/pf" in storage.describe()
    storage.put_many([(f"jobs/j/{i:03d}.png", bytes([i]) * 10) for i in range(3)])
    assert storage.get("jobs/j/001.png") == b"\x01" * 10
    assert b"".join(storage.chunks("jobs/j/002.png")) == b"\x02" * 10
    assert storage.list("jobs/j") == [f"jobs/j/{i:03d}.png" for i in range(3)]
    assert storage.exists("jobs/j/000.png") and not storage.exists("jobs/j/009.png")
    with pytest.raises(KeyError):
        storage.get("jobs/j/009.png")
    with urllib.request.urlopen(storage.url("jobs/j/000.png")) as resp:  # presigned: no credentials needed
        assert resp.read() == b"\x00" * 10
    storage.delete("jobs/j/000.png")
    assert not storage.exists("jobs/j/000.png")
    # the objects are under the prefix of STORAGE_URL
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert sorted(keys) == ["pf/jobs/j/001.png", "pf/jobs/j/002.png"]


@pytest.mark.parametrize("url, message", [
    ("s3://", "is not a bucket name"),
    ("s3://Bad_Bucket/x", "is not a bucket name"),
    ("s3://bucket/../x", "the prefix"),
    ("gs://bucket/x", "unknown scheme"),
    ("file://host/x", "local folder"),
])
def test_bad_storage_urls_stop_the_start(tmp_path, url, message):
    from app import create_app

    with pytest.raises(ValueError, match="STORAGE_URL") as info:
        create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'a.sqlite3'}",
                    "CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'b.sqlite3'}", "STORAGE_URL": url})
    assert message in str(info.value)


def test_bad_delivery_and_routing_settings(tmp_path):
    from app import create_app

    base = {"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'a.sqlite3'}",
            "CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'b.sqlite3'}"}
    with pytest.raises(ValueError, match="IMAGE_DELIVERY"):
        create_app({**base, "IMAGE_DELIVERY": "email"})
    with pytest.raises(ValueError, match="MODEL_QUEUES"):
        create_app({**base, "MODEL_QUEUES": ["generate.gpu"]})


def test_missing_bucket_and_unreachable_store(s3, tmp_path, checkpoints):
    """The web starts (and says why the store is unusable in its log and its health); a job is accepted and
    waits as queued; a worker refuses to start with the reason."""
    from app import create_app
    from app.core.migrate import upgrade
    from app.core.storage import StorageUnavailable, storage_from_config
    from tests.service.conftest import base_config, register_test_models

    with pytest.raises(StorageUnavailable, match="bucket 'no-such-bucket' does not exist"):
        storage_from_config(store_config(s3, bucket="no-such-bucket")).check()
    with pytest.raises(StorageUnavailable, match="unreachable"):
        storage_from_config({"STORAGE_URL": f"s3://{BUCKET}", "S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
                             "STORAGE_TIMEOUT": 1.0}).check()

    app = create_app(base_config(tmp_path))
    upgrade(app)
    with app.app_context():
        register_test_models(checkpoints)  # local store: registered as they are
        from app.services.accounts import create_user, issue_token

        admin = {"Authorization": "Bearer " + issue_token(create_user("admin", "correct horse battery",
                                                                      is_admin=True), "t").token}
    missing = create_app(base_config(tmp_path, **store_config(s3, bucket="no-such-bucket")))
    assert "does not exist" in missing.extensions["priorforge_storage_error"]
    client = missing.test_client()
    assert client.get("/api/v1/health").get_json() == {"status": "degraded"}  # the details are for admins
    resp = client.get("/api/v1/health", headers=admin)
    body = resp.get_json()
    assert resp.status_code == 503 and body["status"] == "degraded"
    assert body["database"]["ok"] and not body["storage"]["ok"]
    assert "bucket 'no-such-bucket' does not exist" in body["storage"]["error"]
    resp = client.post("/api/v1/jobs", json={"label": "3", "n": 1})
    assert resp.status_code == 202 and resp.get_json()["status"] == "queued"  # stored, waiting for a worker

    from tests.conftest import subprocess_env

    env = subprocess_env()
    config = {**base_config(tmp_path, **store_config(s3, bucket="no-such-bucket"))}
    config.pop("TESTING")
    import json

    env.update({f"PRIORFORGE_{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items()})
    env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    proc = subprocess.run([sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "generate"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    assert "cannot start, the object store is not usable" in proc.stderr + proc.stdout
    assert "bucket 'no-such-bucket' does not exist" in proc.stderr + proc.stdout

    # the store comes back (the bucket is created): the same job is healthy and still queued, nothing lost
    s3.client().create_bucket(Bucket="no-such-bucket")
    assert client.get("/api/v1/health", headers=admin).get_json()["storage"]["ok"]
    for a in (app, missing):
        with a.app_context():
            from app.core.extensions import db

            db.session.remove()
            db.engine.dispose()


def test_checkpoint_is_published_fetched_and_verified(s3, tmp_path, checkpoints):
    from app.core.checkpoint_store import ChecksumMismatch, checkpoint_folder, fetch_checkpoint, upload_checkpoint
    from app.core.storage import storage_from_config

    storage = storage_from_config(store_config(s3))
    key, files = upload_checkpoint(storage, checkpoints["class"])
    assert {"config.json", "model.safetensors"} <= set(files)
    folder = fetch_checkpoint(storage, key, files, tmp_path / "cache")
    assert (folder / "model.safetensors").read_bytes() == (checkpoints["class"] / "model.safetensors").read_bytes()

    class Version:  # what a worker knows of a model version
        name, version, checkpoint_path = "tiny", 1, "/nowhere"
        checkpoint_key, checkpoint_files = key, files
        weights_sha256 = files["model.safetensors"]

    assert checkpoint_folder(Version, storage, tmp_path / "cache") == folder
    (folder / "model.safetensors").write_bytes(b"tampered")  # the cached copy changed: an error
    with pytest.raises(ChecksumMismatch, match="refusing to load"):
        checkpoint_folder(Version, storage, tmp_path / "cache")
    storage.put(f"{key}/model.safetensors", b"not the registered weights")  # the store's copy changed
    with pytest.raises(ChecksumMismatch, match="refusing to load"):
        fetch_checkpoint(storage, key, files, tmp_path / "other-cache")
    assert not list((tmp_path / "other-cache").iterdir())  # no half checkpoint left in the cache


# -- two generation workers, no shared disk ---------------------------------------------------------
def _png_pixels(client, url: str) -> bytes:
    from PIL import Image as PILImage

    resp = client.get(url)
    assert resp.status_code == 200 and resp.mimetype == "image/png", resp.data[:200]
    with PILImage.open(io.BytesIO(resp.data)) as picture:
        return picture.tobytes()


@pytest.mark.integration
def test_two_workers_share_only_the_store(s3, tmp_path, pg_url, redis_url, checkpoints, start_worker):
    from app import create_app
    from app.core.extensions import db
    from app.core.migrate import upgrade
    from app.services.model_versions import promote, register_model

    broker, prefix = redis_url
    shared = {"SQLALCHEMY_DATABASE_URI": pg_url, "CELERY_BROKER_URL": broker, "BROKER_KEY_PREFIX": prefix,
              **store_config(s3), "DEFAULT_MODEL": "tiny", "HEARTBEAT_INTERVAL": 0.5, "LEASE_TIMEOUT": 4,
              "RECONCILE_INTERVAL": 1, "QUEUED_STALE_AFTER": 3,
              # heterogeneous nodes: "tiny" runs on the CPU node, "big" on the GPU node (both CPUs here)
              "MODEL_QUEUES": {"tiny": "generate.cpu", "big": "generate.gpu"}}

    def node(name: str) -> dict[str, Any]:  # a machine of its own: nothing on disk is shared
        root = tmp_path / name
        return {**shared, "STORAGE_ROOT": str(root / "unused-images"), "MODEL_CACHE_DIR": str(root / "cache"),
                "DATASET_ROOT": str(root / "datasets"), "TRAINING_ROOT": str(root / "trainings")}

    # the "trainer" node registers the models from its own disk, then that disk is gone
    web = create_app({"TESTING": True, **node("web")})
    upgrade(web)
    own = tmp_path / "trainer-disk"
    shutil.copytree(checkpoints["class"], own / "tiny-v1")
    shutil.copytree(checkpoints["class"], own / "big-v1")
    make_checkpoint(own / "tiny-v2", "class")
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(own / "tiny-v2" / "model.safetensors")  # other weights: other pixels
    save_file({k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in weights.items()},
              own / "tiny-v2" / "model.safetensors")
    with web.app_context():
        v1, _ = register_model("tiny", own / "tiny-v1")
        register_model("big", own / "big-v1")
        assert v1.checkpoint_key and v1.weights_sha256 and "model.safetensors" in v1.checkpoint_files
    shutil.rmtree(own / "tiny-v1")
    shutil.rmtree(own / "big-v1")

    # a CPU node (its model's queue and the default one), a GPU node, a trainer: three machines
    cpu = start_worker(node("cpu-node"), "cpu-node", queues="generate.cpu,generate", wait=False)
    gpu = start_worker(node("gpu-node"), "gpu-node", queues="generate.gpu", wait=False)
    trainer = start_worker({**node("trainer-node"), "TRAINING_PROGRESS_INTERVAL": 0.2, "DEVICE": "cpu"},
                           "trainer-node", queues="train", wait=False)
    for worker in (cpu, gpu, trainer):
        worker.wait_ready()
    client = web.test_client()

    def run(**body) -> dict:
        resp = client.post("/api/v1/jobs?wait=60", json={"n": 2, "seed": 5, **body})
        assert resp.status_code == 200, resp.get_json()
        job = resp.get_json()
        assert job["status"] == "succeeded", job
        return job

    first = run(model="tiny", label="3")
    other = run(model="big", label="3")
    with web.app_context():
        from app.core.tables import Job

        workers = {db.session.get(Job, j["id"]).worker for j in (first, other)}
    assert len(workers) == 2  # one job on each node
    # every image through the API, whichever node stored it; same version and seed: same pixels
    assert [_png_pixels(client, i["png_url"]) for i in first["images"]] == \
           [_png_pixels(client, i["png_url"]) for i in other["images"]]
    assert client.get(f"/api/v1/images/{first['images'][0]['id']}").get_json()["parameters"]["seed"] == 5

    # a new version registered and promoted through the trainer's store: the CPU node serves it, fetched
    with web.app_context():
        v2, _ = register_model("tiny", own / "tiny-v2")
        promote(v2.id)
    shutil.rmtree(own / "tiny-v2")
    second = run(model="tiny", label="3")
    assert second["model_version"] == 2
    assert [_png_pixels(client, i["png_url"]) for i in second["images"]] != \
           [_png_pixels(client, i["png_url"]) for i in first["images"]]
    # each node's own cache: the CPU node fetched both versions of "tiny", the GPU node "big" alone
    assert len(list((tmp_path / "cpu-node" / "cache").iterdir())) == 2
    assert len(list((tmp_path / "gpu-node" / "cache").iterdir())) == 1

    # a data set uploaded to the web node, trained on the trainer node (which fetches it from the store), its
    # history and grid read back by the web from the store, promoted, then served by the CPU node
    from app.services.accounts import create_user, issue_token
    from tests.admin.conftest import make_zip
    from tests.admin.test_training_worker import pattern_png, request

    with web.app_context():
        headers = {"Authorization": f"Bearer {issue_token(create_user('admin', 'correct horse battery', is_admin=True), 't').token}"}
    archive = make_zip({f"{name}/{i:02d}.png": pattern_png(k, i)
                        for k, name in enumerate(("squares", "bars")) for i in range(12)})
    resp = client.post("/api/v1/admin/datasets", headers=headers, content_type="multipart/form-data",
                       data={"file": (io.BytesIO(archive), "shapes.zip")})
    assert resp.status_code == 201, resp.get_json()
    shutil.rmtree(tmp_path / "web" / "datasets")  # only the store has it now
    resp = client.post("/api/v1/admin/trainings", headers=headers, json=request(max_steps=8, eval_samples=16))
    assert resp.status_code == 202, resp.get_json()
    run_url = resp.get_json()["url"]
    done = wait_for(lambda: (lambda r: r if r["status"] in ("succeeded", "failed") else None)(
        client.get(run_url, headers=headers).get_json()), 180, "the training run to end")
    assert done["status"] == "succeeded", done["error"]
    assert [row["step"] for row in done["history"]] == list(range(1, 9)) and done["sample_url"]
    assert (tmp_path / "trainer-node" / "datasets" / "shapes").is_dir()
    version_id = done["model_version"]["id"]
    resp = client.post(f"/api/v1/admin/models/{version_id}/promote", headers=headers)
    assert resp.status_code == 200, resp.get_json()
    trained = run(model="shapes", label="bars")
    assert trained["model_version_id"] == version_id
    assert _png_pixels(client, trained["images"][0]["png_url"])

    # redirect delivery: a 302 to a presigned URL of the store
    redirecting = create_app({"TESTING": True, **node("web"), "IMAGE_DELIVERY": "redirect"})
    resp = redirecting.test_client().get(second["images"][0]["png_url"])
    assert resp.status_code == 302 and resp.location.startswith(s3.url)

    # the store goes away: the job is not lost; it waits as queued and is done once the store is back
    s3.stop()
    health = client.get("/api/v1/health", headers=headers)
    assert health.status_code == 503 and not health.get_json()["storage"]["ok"]
    job_id = client.post("/api/v1/jobs", json={"model": "tiny", "label": "1", "n": 1}).get_json()["id"]
    wait_for(lambda: "waiting for the object store" in (client.get(f"/api/v1/jobs/{job_id}").get_json()["error"] or ""),
             60, "the job to be put back in the queue")
    s3.start()
    job = wait_for(lambda: (lambda j: j if j["status"] == "succeeded" else None)(
        client.get(f"/api/v1/jobs/{job_id}").get_json()), 60, "the job to succeed once the store is back")
    assert _png_pixels(client, job["images"][0]["png_url"])
    for a in (web, redirecting):
        a.extensions["celery"].pool.force_close_all()
        with a.app_context():
            db.session.remove()
            db.engine.dispose()


def test_register_shipped_publishes_what_a_local_registration_left_out(s3, tmp_path, checkpoints):
    """A deployment that turns the store on: the shipped models registered before (read from the local folder)
    are registered again, into the store, and serve; a second run changes nothing."""
    import json

    from app import create_app
    from app.core.extensions import db
    from app.core.migrate import upgrade
    from app.services.model_versions import register_shipped, serving_version
    from tests.service.conftest import base_config

    shutil.copytree(checkpoints["class"], tmp_path / "models" / "tiny")
    (tmp_path / "models" / "tiny" / "card.json").write_text(json.dumps({"name": "tiny"}))
    local = create_app(base_config(tmp_path))
    upgrade(local)
    with local.app_context():
        assert [what for _, what in register_shipped(tmp_path / "models")] == ["registered"]
    remote = create_app(base_config(tmp_path, **store_config(s3)))
    with remote.app_context():
        assert [what for _, what in register_shipped(tmp_path / "models")] == ["updated"]
        version = serving_version("tiny")
        assert version.version == 2 and version.checkpoint_key and version.weights_sha256
        assert [what for _, what in register_shipped(tmp_path / "models")] == ["unchanged"]
    for app in (local, remote):
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
