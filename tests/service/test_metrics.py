"""``/metrics``: the Prometheus text format from prometheus-client, read while jobs run through a real Celery
worker (SQLite and the embedded broker, the default set-up), and who may read it."""

from __future__ import annotations

import pytest

from tests.service.conftest import FAST_WORKER, base_config, register_test_models, wait_for
from tests.support.faults import InjectedFaults

pytestmark = pytest.mark.integration


def scrape(client, token: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    response = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.data
    assert response.content_type.startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.data.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples, name: str, **labels: str) -> float:
    return sum(value for (sample, sample_labels), value in samples.items()
               if sample == name and set(labels.items()) <= set(sample_labels))


def make_app(tmp_path, checkpoints, **overrides):
    from app import create_app
    from app.core.migrate import upgrade

    config = base_config(tmp_path, **FAST_WORKER, METRICS_DIR=str(tmp_path / "metrics"), **overrides)
    config.pop("TESTING")
    app = create_app({"TESTING": True, **config})
    upgrade(app)
    with app.app_context():
        register_test_models(checkpoints)
    return app, config


def admin_token(app, admin: bool = True) -> str:
    from app.services.accounts import create_user, issue_token

    with app.app_context():
        user = create_user("ops" if admin else "someone", "correct horse battery", is_admin=admin)
        return issue_token(user).token


def test_metrics_count_jobs_latencies_batches_and_refusals_of_a_real_worker(tmp_path, checkpoints, start_worker):
    app, config = make_app(tmp_path, checkpoints, MAX_IMAGES_IN_FLIGHT_PER_CLIENT=40)
    token = admin_token(app)
    client = app.test_client()
    # FOR TESTS ONLY: each job takes a second (and runs alone), so the scrape below sees a run in progress
    start_worker(config, faults=InjectedFaults(task_delay=1.0))

    for i in range(3):
        assert client.post("/api/v1/jobs", json={"model": "tiny", "label": "3", "n": 2, "seed": i}).status_code == 202
    batch = client.post("/api/v1/batches", json=[{"model": "tiny", "label": "1", "n": 3}] * 2).get_json()
    assert batch["total"] == 2

    # refused: over the image quota (40 queued or running per client: 12 are, and these 40 more pass it as long
    # as any of them is still queued or running, however slowly this machine sends the requests)
    refused = client.post("/api/v1/jobs", json={"model": "tiny", "label": "3", "n": 40})
    assert refused.status_code == 429

    # during the run: one job running, the others queued in their lanes
    def mid_run():
        s = scrape(client, token)
        return s if total(s, "priorforge_jobs", status="running") == 1 and \
            total(s, "priorforge_jobs", status="queued") >= 2 else None
    s = wait_for(mid_run, 60, "a scrape with one job running and others queued", interval=0.1)
    assert total(s, "priorforge_jobs", model="tiny") == 5
    assert total(s, "priorforge_images", model="tiny") == 12
    queued = total(s, "priorforge_queue_depth")
    assert queued == total(s, "priorforge_jobs", status="queued") >= 2
    busy_lanes = [lane for lane in ("interactive", "bulk") if total(s, "priorforge_queue_depth", lane=lane) > 0]
    assert busy_lanes and all(total(s, "priorforge_queue_oldest_age_seconds", lane=lane) > 0 for lane in busy_lanes)
    assert total(s, "priorforge_refusals_total", reason="quota") == 1

    with app.app_context():
        from app.core.tables import Job
        from app.core.extensions import db

        def all_done():
            db.session.expire_all()
            return all(job.status == "succeeded" for job in db.session.query(Job).all())
        wait_for(all_done, 90, "every job to succeed")

    s = scrape(client, token)
    assert total(s, "priorforge_jobs", model="tiny", status="succeeded", lane="interactive") == 3
    assert total(s, "priorforge_jobs", model="tiny", status="succeeded", lane="bulk") == 2
    assert total(s, "priorforge_images", model="tiny", status="succeeded", lane="bulk") == 6
    assert total(s, "priorforge_queue_depth") == 0
    assert total(s, "priorforge_queue_oldest_age_seconds") == 0
    # counted by the worker's pool process, read from its files in METRICS_DIR
    assert total(s, "priorforge_jobs_finished_total", model="tiny", status="succeeded", lane="interactive") == 3
    assert total(s, "priorforge_jobs_finished_total", model="tiny", status="succeeded", lane="bulk") == 2
    assert total(s, "priorforge_images_finished_total", model="tiny", status="succeeded") == 12
    assert total(s, "priorforge_job_start_latency_seconds_count") == 5
    assert total(s, "priorforge_job_latency_seconds_count", status="succeeded") == 5
    # each job took at least its 1 s delay from submission to its end
    assert total(s, "priorforge_job_latency_seconds_bucket", le="0.5") == 0
    assert total(s, "priorforge_job_latency_seconds_sum") >= 5.0
    assert total(s, "priorforge_decode_batch_jobs_count") == 5  # a delayed job is decoded alone
    assert total(s, "priorforge_decode_batch_images_sum") == 12
    assert total(s, "priorforge_training_runs") == 0
    assert total(s, "priorforge_outbox_pending") == 0


def test_rate_limit_refusals_are_counted(tmp_path, checkpoints):
    app, _ = make_app(tmp_path, checkpoints, RATELIMIT_CREATE="1 per minute")
    token = admin_token(app)
    client = app.test_client()
    assert client.post("/api/v1/jobs", json={"label": "1"}).status_code == 202
    assert client.post("/api/v1/jobs", json={"label": "1"}).status_code == 429
    assert total(scrape(client, token), "priorforge_refusals_total", reason="rate_limit") == 1


def test_processes_of_two_hosts_with_the_same_pid_share_a_folder_without_sharing_a_file(tmp_path, checkpoints,
                                                                                       monkeypatch):
    """deploy/compose.yaml mounts one metrics volume into several containers, whose pids repeat: a file name
    carries the host's name too, so two processes never write one file and the scrape adds both up."""
    import os

    from app.core import metrics

    app, _ = make_app(tmp_path, checkpoints)
    token = admin_token(app)
    with app.app_context():
        for host in ("web-a", "worker_b"):  # "_" would split the library's file name: it becomes "-"
            monkeypatch.setattr(metrics, "_HOST", metrics.re.sub(r"[^A-Za-z0-9.-]", "-", host))
            metrics.refused("quota")  # the library sees a new identifier (as after a fork): a file of its own
    files = sorted(f.name for f in (tmp_path / "metrics").glob("counter_*.db"))
    assert files == [f"counter_web-a-{os.getpid()}.db", f"counter_worker-b-{os.getpid()}.db"]
    assert total(scrape(app.test_client(), token), "priorforge_refusals_total", reason="quota") == 2


def test_metrics_need_an_admin_or_an_allowed_network(tmp_path, checkpoints):
    app, _ = make_app(tmp_path, checkpoints)
    client = app.test_client()
    anonymous = client.get("/metrics")
    assert anonymous.status_code == 401 and "error" in anonymous.get_json()
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    user_token = admin_token(app, admin=False)
    assert client.get("/metrics", headers={"Authorization": f"Bearer {user_token}"}).status_code == 403
    assert client.get("/metrics", headers={"Authorization": "Bearer pf_not-a-token"}).status_code == 401
    # a signed-in admin's session
    from app.services.accounts import create_user

    with app.app_context():
        create_user("boss", "correct horse battery", is_admin=True)
    client.post("/admin/login", data={"username": "boss", "password": "correct horse battery"})
    assert client.get("/metrics").status_code == 200
    # a configured network, without signing in (the test client's address is 127.0.0.1)
    app.config["METRICS_ALLOW_NETWORKS"] = ["127.0.0.0/8"]
    assert app.test_client().get("/metrics").status_code == 200
    app.config["METRICS_ALLOW_NETWORKS"] = ["10.0.0.0/8"]
    assert app.test_client().get("/metrics").status_code == 401


def test_a_bad_network_setting_is_refused_at_start(tmp_path):
    from app import create_app

    with pytest.raises(ValueError, match="METRICS_ALLOW_NETWORKS"):
        create_app(base_config(tmp_path, METRICS_ALLOW_NETWORKS=["not a network"]))
