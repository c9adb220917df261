"""deploy/compose.yaml's Prometheus: it scrapes the web's /metrics (deploy/prometheus.yml), the web lets in
that container's address and not the network's gateway (through which the published port arrives), and the
web, the workers and the trainer share one metrics folder, so the scrape reads the workers' counts too.
Docker is not run here: the files are read as Compose and Prometheus would read them."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
APP_SERVICES = ("web", "worker-cpu", "worker-gpu", "trainer")


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_prometheus_scrapes_the_web_s_metrics():
    compose = _compose()
    prometheus = compose["services"]["prometheus"]
    mount = next(v for v in prometheus["volumes"] if v.endswith(":/etc/prometheus/prometheus.yml:ro"))
    config = yaml.safe_load((DEPLOY / mount.split(":")[0]).read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (target,) = [t for group in job["static_configs"] for t in group["targets"]]
    host, port = target.split(":")
    web = compose["services"][host]
    assert f"0.0.0.0:{port}" in web["command"]  # gunicorn's --bind
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_only_the_prometheus_address_reads_metrics_without_a_token():
    compose = _compose()
    address = ipaddress.ip_address(compose["services"]["prometheus"]["networks"]["default"]["ipv4_address"])
    (subnet,) = [ipaddress.ip_network(c["subnet"]) for c in compose["networks"]["default"]["ipam"]["config"]]
    gateway = next(subnet.hosts())  # Docker's default gateway: the port published on the host arrives from it
    allowed = [ipaddress.ip_network(n) for n in
               json.loads(compose["services"]["web"]["environment"]["PRIORFORGE_METRICS_ALLOW_NETWORKS"])]
    assert address in subnet and any(address in n for n in allowed)
    assert not any(gateway in n for n in allowed)


def test_the_web_the_workers_and_the_trainer_share_one_metrics_folder():
    compose = _compose()
    for name in APP_SERVICES:
        service = compose["services"][name]
        folder = service["environment"]["PRIORFORGE_METRICS_DIR"]
        assert f"metrics:{folder}" in service["volumes"], name
    assert "metrics" in compose["volumes"]
