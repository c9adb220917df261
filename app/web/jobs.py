"""The job form (``/``), the job pages and the batch pages.

Every rule about what a valid job is lives in :func:`app.services.jobs.validate_job`; the form only turns the
posted strings into the same dict the JSON API receives (:mod:`app.web.forms`) and shows the service's message
on the form (HTTP 422) with the entered values kept.
"""

from __future__ import annotations

from flask import current_app, g, redirect, render_template, request, session, url_for
from werkzeug.exceptions import RequestEntityTooLarge

from app.core.errors import ApiError
from app.core.tables import ModelVersion
from app.services import jobs
from app.services.experiments import compare_defaults
from app.services.schemas import JOB_FIELDS
from app.services.model_versions import default_model_name, serving_models
from app.web.blueprint import bp
from app.web.forms import field_of_error, job_request_from_form
from app.core.status import FINAL


def _selected_model(models: list[ModelVersion], wanted: str | None) -> str | None:
    names = [m.name for m in models]
    for candidate in (wanted, default_model_name(current_app.config.get("DEFAULT_MODEL"))):
        if candidate and candidate in names:
            return candidate
    return names[0] if names else None


def _render_form(values: dict[str, str], error: str | None = None, status: int = 200):
    models = serving_models()
    selected = _selected_model(models, values.get("model"))
    return render_template(
        "index.html", models=models, selected=selected, values=values, error=error,
        error_field=field_of_error(error) if error else None,
        max_images=current_app.config["MAX_IMAGES_PER_JOB"],
        max_prompt=current_app.config["MAX_PROMPT_LENGTH"]), status


@bp.get("/")
def index():
    values = {key: request.args.get(key, "") for key in JOB_FIELDS if request.args.get(key) is not None}
    return _render_form(values)


# the capabilities of what this browser created, in its signed session cookie: {job or batch id: secret}; the
# newest few only (a cookie holds about 4 KB)
CAPABILITIES = "cancel"
MAX_CAPABILITIES = 20


def _form_owner() -> jobs.Owner:
    if not current_app.config["ANONYMOUS_GENERATION"]:
        raise ApiError(403, "this service creates jobs for API token holders only (POST /api/v1/jobs)")
    return jobs.Owner(g.client.key)


def _keep_capability(row_id: str, secret: str | None) -> None:
    if secret is None:
        return
    kept = {k: v for k, v in dict(session.get(CAPABILITIES) or {}).items() if k != row_id}
    kept[row_id] = secret
    session[CAPABILITIES] = dict(list(kept.items())[-MAX_CAPABILITIES:])


def _capability(job) -> str | None:
    kept = session.get(CAPABILITIES) or {}
    return kept.get(job.id) or (kept.get(job.batch_id) if job.batch_id else None)


@bp.post("/")
def submit_job():
    values = {key: request.form.get(key, "") for key in JOB_FIELDS if request.form.get(key) is not None}
    try:
        owner = _form_owner()
        spec = jobs.validate_job(job_request_from_form(request.form))
        created = jobs.create_job(spec, owner)
    except ApiError as exc:
        return _render_form(values, exc.message, exc.status)[0], exc.status, exc.headers()
    _keep_capability(created.id, created.cancel_secret)
    return redirect(url_for("web.job", job_id=created.id), code=303)


# -- jobs -------------------------------------------------------------------------------------------
@bp.get("/jobs/<job_id>")
def job(job_id: str):
    job = jobs.get_job(job_id)
    return render_template("job.html", job=job, final=job.status in FINAL, compare_args=compare_defaults(job),
                           can_cancel=jobs.may_cancel(job, secret=_capability(job)),
                           api_url=url_for("api.get_job", job_id=job.id))


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    """Only the browser that created the job (its session holds the capability)."""
    job = jobs.get_job(job_id)
    try:
        jobs.cancel_job(job_id, secret=_capability(job))
    except ApiError as exc:
        if exc.status != 409:  # already finished: just show the job as it is
            raise
    return redirect(url_for("web.job", job_id=job_id), code=303)


# -- batches ----------------------------------------------------------------------------------------
def _render_batch_form(error: str | None = None, status: int = 200):
    models = serving_models()
    csv_example, jsonl_example = batch_examples(models)
    return render_template("batch_new.html", error=error, models=models, csv_example=csv_example,
                           jsonl_example=jsonl_example, max_items=current_app.config["MAX_BATCH_ITEMS"],
                           max_bytes=int(current_app.config.get("MAX_CONTENT_LENGTH") or 0)), status


def _example_items(models: list[ModelVersion]) -> list[dict]:
    """Two job requests per kind of condition among the serving models (the first model of each), built from
    what is served (its class names, its card's example prompts), so the page's examples are accepted as
    printed."""
    items: list[dict] = []
    seen: set[str] = set()
    for m in models:
        if m.condition in seen:
            continue
        seen.add(m.condition)
        if m.condition == "class" and m.class_names:
            items += [{"model": m.name, "label": m.class_names[0], "n": 4, "seed": 1},
                      {"model": m.name, "label": m.class_names[-1], "n": 2}]
        elif m.condition == "text":
            prompts = [p for p in ((m.card or {}).get("examples") or []) if isinstance(p, str) and p.strip()]
            prompts = (prompts + ["a picture"] * 2)[:2]
            items += [{"model": m.name, "prompt": prompts[0], "n": 4, "seed": 1},
                      {"model": m.name, "prompt": prompts[1], "n": 2}]
        elif m.condition == "cluster" and m.num_classes:
            items += [{"model": m.name, "cluster": 0, "n": 4, "seed": 1}, {"model": m.name, "n": 2}]
        elif m.condition == "none":
            items += [{"model": m.name, "n": 4, "seed": 1}]
    return items


def batch_examples(models: list[ModelVersion]) -> tuple[str, str]:
    """(CSV text, JSONL text) of the batch page's examples, from the serving models; empty when none."""
    import csv
    import io
    import json

    items = _example_items(models)
    if not items:
        return "", ""
    columns = [key for key in JOB_FIELDS if any(key in item for item in items)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(items)
    return buffer.getvalue(), "\n".join(json.dumps(item, ensure_ascii=False) for item in items) + "\n"


@bp.get("/batches/new")
def new_batch():
    return _render_batch_form()


@bp.post("/batches")
def create_batch():
    try:
        upload = request.files.get("file")
    except RequestEntityTooLarge:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        return _render_batch_form(f"the file is too large (the limit is {limit} bytes)", 413)
    if upload is None or not upload.filename:
        return _render_batch_form("choose a .csv or .jsonl file to upload", 422)
    try:
        owner = _form_owner()
        items = jobs.parse_batch_file(upload.filename, upload.read())
        specs = jobs.validate_batch(items)
        batch, secret = jobs.create_batch(specs, upload.filename, owner)
    except ApiError as exc:
        return _render_batch_form(exc.message, exc.status)[0], exc.status, exc.headers()
    _keep_capability(batch.id, secret)
    return redirect(url_for("web.batch", batch_id=batch.id), code=303)


@bp.get("/batches/<batch_id>")
def batch(batch_id: str):
    batch = jobs.get_batch(batch_id)
    summary = jobs.batch_summary(batch)
    return render_template("batch.html", batch=batch, summary=summary,
                           final=summary["status"] in FINAL,
                           api_url=url_for("api.get_batch", batch_id=batch.id))
