"""What ``/metrics`` answers: the counters and histograms every process of this machine wrote
(:mod:`app.core.metrics`, multiprocess mode) plus gauges read from the database at scrape time, so they are
the same whichever web process or machine is scraped: jobs and images by model, status and lane, each lane's
depth and oldest queued job, training runs by status, and the outbox and webhook backlogs.

A job's lane is ``bulk`` for a batch's jobs and jobs of more than INTERACTIVE_MAX_IMAGES images, else
``interactive`` (the ``generate`` queue; MODEL_QUEUES may route a model's jobs to another queue, the lane
stays).
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any, Iterator

from flask import current_app
from sqlalchemy import case, func, select

from app.core.extensions import db
from app.core.tables import Job, ModelVersion, OutboxMessage, TrainingRun, WebhookDelivery, aware, utcnow
from app.core.status import JobStatus, LIVE

LANES = ("interactive", "bulk")


def lane_expression() -> Any:
    """SQL: a job's lane (see the module's docstring)."""
    limit = current_app.config["INTERACTIVE_MAX_IMAGES"]
    return case((Job.batch_id.is_not(None) | (Job.n > limit), "bulk"), else_="interactive")


def lane_name(batch_id: str | None, n: int) -> str:
    return "bulk" if batch_id is not None or n > current_app.config["INTERACTIVE_MAX_IMAGES"] else "interactive"


def queue_state(now: datetime | None = None) -> dict[str, dict[str, Any]]:
    """lane -> {depth (queued jobs), images (their images), running, oldest_age_seconds (None: empty)}."""
    now = now or utcnow()
    lane = lane_expression()
    out = {name: {"depth": 0, "images": 0, "running": 0, "oldest_age_seconds": None} for name in LANES}
    rows = db.session.execute(select(lane, Job.status, func.count(), func.coalesce(func.sum(Job.n), 0),
                                     func.min(Job.created_at))
                              .where(Job.status.in_(LIVE)).group_by(lane, Job.status)).all()
    for name, status, count, images, oldest in rows:
        entry = out[name]
        if status == JobStatus.QUEUED:
            entry["depth"], entry["images"] = int(count), int(images)
            entry["oldest_age_seconds"] = round(max(0.0, (now - aware(oldest)).total_seconds()), 3) if oldest else None
        else:
            entry["running"] = int(count)
    return out


class DatabaseCollector:
    """The gauges read from the database at each scrape (a prometheus_client custom collector)."""

    def __init__(self, app: Any):
        self.app = app

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        with self.app.app_context():
            lane = lane_expression()
            jobs = GaugeMetricFamily("priorforge_jobs", "Jobs in the database by model, status and lane",
                                     labels=["model", "status", "lane"])
            images = GaugeMetricFamily("priorforge_images", "Images asked for by the jobs in the database, by "
                                       "model, status and lane", labels=["model", "status", "lane"])
            for model, status, name, count, n in db.session.execute(
                    select(ModelVersion.name, Job.status, lane, func.count(), func.coalesce(func.sum(Job.n), 0))
                    .join(ModelVersion, Job.model_version_id == ModelVersion.id)
                    .group_by(ModelVersion.name, Job.status, lane)):
                jobs.add_metric([model, status, name], int(count))
                images.add_metric([model, status, name], int(n))
            yield jobs
            yield images

            state = queue_state()
            depth = GaugeMetricFamily("priorforge_queue_depth", "Queued jobs per lane", labels=["lane"])
            depth_images = GaugeMetricFamily("priorforge_queue_depth_images", "Images of the queued jobs per lane",
                                             labels=["lane"])
            oldest = GaugeMetricFamily("priorforge_queue_oldest_age_seconds", "Age of the oldest queued job per "
                                       "lane (0 when none is queued)", labels=["lane"])
            running = GaugeMetricFamily("priorforge_jobs_running", "Running jobs per lane", labels=["lane"])
            for name, entry in state.items():
                depth.add_metric([name], entry["depth"])
                depth_images.add_metric([name], entry["images"])
                oldest.add_metric([name], entry["oldest_age_seconds"] or 0.0)
                running.add_metric([name], entry["running"])
            yield depth
            yield depth_images
            yield oldest
            yield running

            runs = GaugeMetricFamily("priorforge_training_runs", "Training runs by status", labels=["status"])
            for status, count in db.session.execute(select(TrainingRun.status, func.count())
                                                    .group_by(TrainingRun.status)):
                runs.add_metric([status], int(count))
            yield runs

            pending = GaugeMetricFamily("priorforge_outbox_pending", "Task messages not yet taken by the broker")
            pending.add_metric([], int(db.session.scalar(select(func.count()).select_from(OutboxMessage)) or 0))
            yield pending
            hooks = GaugeMetricFamily("priorforge_webhooks", "Webhook deliveries by state", labels=["state"])
            for state_name, count in db.session.execute(select(WebhookDelivery.state, func.count())
                                                        .group_by(WebhookDelivery.state)):
                hooks.add_metric([state_name], int(count))
            yield hooks
            db.session.remove()


def render(app: Any) -> tuple[bytes, str]:
    """(body, content type) of a scrape: every process's files in METRICS_DIR plus the database's gauges."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    from app.core import metrics

    os.makedirs(metrics.metrics_dir(app), exist_ok=True)
    metrics.ensure_metric_families()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics.metrics_dir(app))
    registry.register(DatabaseCollector(app))
    return generate_latest(registry), CONTENT_TYPE_LATEST
