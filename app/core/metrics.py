"""Prometheus metrics of every process of the service (``prometheus-client`` in multiprocess mode).

Each process (a gunicorn worker, a Celery worker's main process and its pool processes) writes its counters and
histograms to memory-mapped files of its own in ``METRICS_DIR`` (``PROMETHEUS_MULTIPROC_DIR``); ``/metrics``
reads all of that folder's files and adds the gauges read from the database at scrape time
(:mod:`app.services.metrics`). So what one process counts is seen whichever web process is scraped, and a
process that exits keeps its counts until the folder is cleared (``scripts/run.sh`` clears it at start).

The folder is set up by :func:`configure`, called by every process's app factory
(:func:`app.core.factory.create_base_app`) before any metric is recorded. The library reads
``PROMETHEUS_MULTIPROC_DIR`` when a process opens its files, so :func:`configure` sets it; within one process a
change of folder (tests build many apps) starts a fresh set of metrics writing to the new folder.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import socket
import threading
from pathlib import Path
from typing import Any

from flask import Flask, current_app, has_app_context

log = logging.getLogger(__name__)

# seconds: from a request (or a batch) to the start of its job, and to its end
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
# images and jobs decoded by one task (micro-batching, up to BATCH_MAX_IMAGES)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

_lock = threading.Lock()
_sets: dict[str, "_Metrics"] = {}
_exit_hook: list = []


def metrics_dir(app: Flask) -> str:
    return app.config["METRICS_DIR"]


def configure(app: Flask) -> None:
    """Resolve ``METRICS_DIR`` (the setting, else ``PROMETHEUS_MULTIPROC_DIR``, else ``instance/metrics``) and
    point ``PROMETHEUS_MULTIPROC_DIR`` at it for this process."""
    folder = app.config.get("METRICS_DIR") or os.environ.get("PROMETHEUS_MULTIPROC_DIR") \
        or str(Path(app.instance_path) / "metrics")
    app.config["METRICS_DIR"] = str(folder)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)  # created when a process first writes or reads it


# the host's name in this process's file names: processes of several containers (or machines) may share one
# METRICS_DIR (deploy/compose.yaml mounts one volume into the web, the workers and the trainer, so a scrape of
# the web sees the workers' counts), and their pids repeat (each container counts from 1); the library names
# a file <kind>_<id>.db and splits the name at "_", so the host's name carries none
_HOST = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "host"


def process_identifier() -> str:
    """``<host>-<pid>``: this process's part of its metric files' names (read again after a fork)."""
    return f"{_HOST}-{os.getpid()}"


class _Metrics:
    """The metric objects writing to one folder."""

    def __init__(self, folder: str):
        from prometheus_client import Counter, Histogram, values

        os.makedirs(folder, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        # a value class of its own: its files are opened in this folder (the library keeps one file per kind
        # and process, whichever folder it was opened in); those of a previous folder are closed
        values.close_all_multiprocess_files()
        values.ValueClass = values.MultiProcessValue(process_identifier=process_identifier)
        if not _exit_hook:
            _exit_hook.append(atexit.register(values.close_all_multiprocess_files))
        common: dict[str, Any] = {"registry": None}
        self.start_latency = Histogram(
            "priorforge_job_start_latency_seconds", "From a job's submission to the start of the attempt that "
            "finished it", ["lane"], buckets=LATENCY_BUCKETS, **common)
        self.finish_latency = Histogram(
            "priorforge_job_latency_seconds", "From a job's submission to its end, by final status",
            ["lane", "status"], buckets=LATENCY_BUCKETS, **common)
        self.finished = Counter("priorforge_jobs_finished", "Jobs ended by a worker, by model, status and lane",
                                ["model", "status", "lane"], **common)
        self.finished_images = Counter("priorforge_images_finished", "Images of the jobs ended by a worker",
                                       ["model", "status", "lane"], **common)
        self.decode_images = Histogram("priorforge_decode_batch_images", "Images decoded by one task "
                                       "(micro-batching)", buckets=BATCH_BUCKETS, **common)
        self.decode_jobs = Histogram("priorforge_decode_batch_jobs", "Jobs decoded by one task",
                                     buckets=BATCH_BUCKETS, **common)
        self.leases_lost = Counter("priorforge_leases_lost", "Running jobs whose worker found its lease gone "
                                   "(canceled, or taken over after it was thought dead)", **common)
        self.recovered = Counter("priorforge_jobs_recovered", "Repairs of the reconciliation: jobs of dead "
                                 "workers re-queued or failed, lost messages sent again, training runs",
                                 ["action"], **common)
        self.refusals = Counter("priorforge_refusals", "Requests refused by an abuse limit", ["reason"], **common)
        self.webhooks = Counter("priorforge_webhook_deliveries", "Webhook delivery attempts by outcome",
                                ["outcome"], **common)


def _metrics() -> _Metrics | None:
    """This process's metrics for the current app's folder (None outside an app, or when they cannot work)."""
    if not has_app_context():
        return None
    folder = current_app.config.get("METRICS_DIR")
    if not folder:
        return None
    found = _sets.get(folder)
    if found is not None and len(_sets) == 1:
        return found
    with _lock:
        if folder not in _sets or len(_sets) > 1:
            _sets.clear()  # another folder in this process (tests): a fresh set writing there
            try:
                _sets[folder] = _Metrics(folder)
            except Exception as exc:  # metrics never fail the work they count
                log.warning("metrics: cannot write to %s: %s", folder, exc)
                return None
        return _sets[folder]


def _safe(fn):
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            m = _metrics()
            if m is not None:
                fn(m, *args, **kwargs)
        except Exception as exc:  # a full disk must not fail a job: the metric is lost, the work is not
            log.warning("metrics: %s: %s", type(exc).__name__, exc)
    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@_safe
def job_finished(m: _Metrics, model: str, status: str, lane: str, n: int, start_latency: float | None,
                 finish_latency: float | None) -> None:
    m.finished.labels(model, status, lane).inc()
    m.finished_images.labels(model, status, lane).inc(n)
    if start_latency is not None:
        m.start_latency.labels(lane).observe(max(0.0, start_latency))
    if finish_latency is not None:
        m.finish_latency.labels(lane, status).observe(max(0.0, finish_latency))


@_safe
def decode_batch(m: _Metrics, jobs: int, images: int) -> None:
    m.decode_jobs.observe(jobs)
    m.decode_images.observe(images)


@_safe
def leases_lost(m: _Metrics, count: int) -> None:
    if count:
        m.leases_lost.inc(count)


@_safe
def recovered(m: _Metrics, counts: dict[str, int]) -> None:
    for action, count in counts.items():
        if count:
            m.recovered.labels(action).inc(count)


@_safe
def refused(m: _Metrics, reason: str) -> None:
    m.refusals.labels(reason).inc()


@_safe
def webhook_attempt(m: _Metrics, outcome: str) -> None:
    m.webhooks.labels(outcome).inc()


def ensure_metric_families() -> None:
    """Create the metric set of this process now (so a scrape lists every family, even at zero)."""
    _metrics()
