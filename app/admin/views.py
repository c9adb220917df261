"""JSON views of training runs, with the URLs of the admin's own routes (pages and API)."""

from __future__ import annotations

from typing import Any

from flask import url_for

from app.core.tables import ModelVersion, TrainingRun, iso
from app.services.metrics_table import metrics_rows
from app.services.model_versions import evaluation_summary, public_json
from app.services.trainings import LIVE_KEY, latest_sample, read_history
from app.core.status import JobStatus, LIVE


def run_evaluation(run: TrainingRun) -> dict[str, Any]:
    """Whether the run is (or will be) evaluated, and why not: shown on the run page before promotion."""
    settings = run.settings or {}
    if run.status in LIVE:
        if not settings.get("evaluate", True):
            return {"state": "off", "reason": "evaluate is off in this run's settings: the new version will "
                                              "have no evaluation figures", "notes": [], "evaluated_on": None}
        return {"state": "pending", "reason": None, "notes": [], "evaluated_on": None}
    if run.status != JobStatus.SUCCEEDED:
        return {"state": "not evaluated", "reason": f"the run {run.status}", "notes": [], "evaluated_on": None}
    if not settings.get("evaluate", True):
        return {"state": "off", "reason": "evaluate was off in this run's settings", "notes": [],
                "evaluated_on": None}
    return evaluation_summary(run.metrics)


def run_progress(run: TrainingRun) -> dict[str, Any] | None:
    """A running run's live figures (the worker writes them): ``rate`` (steps per second over the recent past,
    what the time left is estimated from) and, while it evaluates, ``evaluation`` (the stage, how far it is,
    the time left in it, the stages done). None once the run has ended."""
    live = (run.metrics or {}).get(LIVE_KEY)
    if run.status != JobStatus.RUNNING or not isinstance(live, dict):
        return None
    return {"rate": live.get("rate"), "evaluation": live.get("evaluation")}


def run_to_dict(run: TrainingRun, *, history: bool = False) -> dict[str, Any]:
    settings = {k: v for k, v in (run.settings or {}).items() if k != "source"}
    metrics = public_json({k: v for k, v in (run.metrics or {}).items() if k != LIVE_KEY})
    evaluation = metrics.get("evaluation") if run.status == JobStatus.SUCCEEDED else None
    body: dict[str, Any] = {
        "id": run.id, "status": run.status, "phase": run.phase, "backend": run.backend, "dataset": run.dataset,
        "condition": run.condition, "model_name": run.model_name, "settings": settings,
        "step": run.step, "total_steps": run.total_steps, "epoch": run.epoch, "losses": run.losses or {},
        "elapsed_seconds": round(run.elapsed_seconds or 0.0, 1),
        # a time left only while the run is alive (a canceled or failed run keeps its last estimate in the row)
        "eta_seconds": None if run.eta_seconds is None or run.status in (JobStatus.CANCELED, JobStatus.FAILED)
        else round(run.eta_seconds, 1),
        "cancel_requested": run.cancel_requested, "attempts": run.attempts, "error": run.error,
        "metrics": metrics, "evaluation": run_evaluation(run), "progress": run_progress(run),
        # the evaluation's metrics as the run page's table shows them (named, formatted)
        "evaluation_table": metrics_rows(evaluation) if isinstance(evaluation, dict) else [],
        "created_at": iso(run.created_at), "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "model_version": _version_ref(run.model_version) if run.model_version else None,
        "url": url_for("admin_api.get_training", run_id=run.id),
        "sample_url": url_for("admin.training_sample", run_id=run.id) if latest_sample(run) else None,
        "sample_step": run.sample_step, "sample_prompts": sample_prompts(run),
    }
    if history:
        body["history"] = read_history(run)
    return body


def sample_prompts(run: TrainingRun) -> list[str]:
    """A text run's grid rows' prompts (one row per prompt), from the JSON the trainer writes beside it."""
    import json
    from pathlib import Path

    grid = latest_sample(run)
    if not isinstance(grid, Path) or run.condition != "text":
        return []
    try:
        return [str(p) for p in json.loads(grid.with_suffix(".json").read_text())["prompts"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _version_ref(version: ModelVersion) -> dict[str, Any]:
    return {"id": version.id, "name": version.name, "version": version.version, "serving": version.serving,
            "compare_url": url_for("admin_api.compare_model_version", version_id=version.id),
            "page_url": url_for("admin.model_version_page", version_id=version.id)}
