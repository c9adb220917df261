"""The experiment forms (``/compare``, ``/sweep``, ``/interpolate``, ``/reconstruct``, ``/mix``) and the experiment
page (``/experiments/<id>``).

As with the job form, every rule lives in the service (:mod:`app.services.experiments`): a form's posted strings
become the dict ``POST /api/v1/experiments`` takes, and a bad entry shows the service's message (HTTP 422) with
the values kept.
"""

from __future__ import annotations

from typing import Any

from flask import current_app, redirect, render_template, request, url_for
from werkzeug.exceptions import RequestEntityTooLarge

from app.core.errors import ApiError
from app.services import experiments, jobs
from app.services.model_versions import serving_models, serving_version
from app.web.blueprint import bp
from app.web.jobs import _form_owner, _keep_capability
from app.core.status import FINAL
from priorforge_spec.experiments import SWEEP_WORDS

FORM_FIELDS = {
    "compare": ("label", "prompt", "n", "seed"),
    "sweep": ("model", "labels", "clusters", "prompt", "word", "values", "n", "seed"),
    "interpolate": ("model", "from_condition", "from_seed", "to_condition", "to_seed", "steps"),
    "reconstruct": ("model", "image", "condition", "as"),
    "mix": ("model", "a", "b", "steps", "condition"),
}
TITLES = {"compare": "Compare models", "sweep": "Attribute sweep", "interpolate": "Interpolate",
          "reconstruct": "Reconstruct an image", "mix": "Mix two images"}


def _int_or_text(value: str) -> Any:
    number = jobs.parse_int_text(value)
    return number if number is not None else value


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _condition(version, text: str) -> dict[str, Any]:
    """An end's condition as typed (a label, a cluster number or a prompt, by the model's condition)."""
    if not text.strip():
        return {}
    kind = version.condition if version is not None else "class"
    if kind == "text":
        return {"prompt": text}
    if kind == "cluster":
        return {"cluster": _int_or_text(text.strip())}
    return {"label": text.strip()}


def experiment_request(kind: str, form: Any) -> dict[str, Any]:
    """The posted strings of an experiment form -> the dict ``validate_experiment`` takes (empty fields left out,
    so the service's defaults apply; integers parsed where they parse)."""
    values = {key: (form.get(key) or "") for key in FORM_FIELDS[kind]}
    data: dict[str, Any] = {"kind": kind}
    for key in ("n", "seed", "steps"):
        if values.get(key, "").strip():
            data[key] = _int_or_text(values[key].strip())
    if kind == "compare":
        models = [name for name in form.getlist("models") if name.strip()]
        if models:
            data["models"] = models
        for key in ("label", "prompt"):
            if values[key].strip():
                data[key] = values[key]
    elif kind == "sweep":
        for key in ("model", "prompt", "word"):
            if values[key].strip():
                data[key] = values[key]
        if values["labels"].strip():
            data["labels"] = _split(values["labels"])
        if values["clusters"].strip():
            data["clusters"] = [_int_or_text(part) for part in _split(values["clusters"])]
        if values["values"].strip():
            data["values"] = _split(values["values"])
    elif kind in ("reconstruct", "mix"):
        if values["model"].strip():
            data["model"] = values["model"].strip()
        version = serving_version(values["model"].strip()) if values["model"].strip() else None
        data.update(_condition(version, values["condition"]))
        if kind == "reconstruct" and values["as"].strip():  # one label, cluster or prompt per line
            key = next(iter(_condition(version, "x")), "label")
            data["as"] = [_condition(version, line)[key] for line in values["as"].splitlines() if line.strip()]
        for name in experiments.INPUTS[kind]:
            if values[name].strip():
                data[name] = values[name].strip()  # a gallery image's id
    else:
        if values["model"].strip():
            data["model"] = values["model"].strip()
        version = serving_version(values["model"].strip()) if values["model"].strip() else None
        for end in ("from", "to"):
            part = _condition(version, values[f"{end}_condition"])
            if values[f"{end}_seed"].strip():
                part["seed"] = _int_or_text(values[f"{end}_seed"].strip())
            if part:
                data[end] = part
    return data


def _render(kind: str, values: dict[str, Any], error: str | None = None, status: int = 200):
    models = serving_models()
    return render_template("experiment_new.html", kind=kind, title=TITLES[kind], models=models, values=values,
                           chosen=set(values.get("models") or []), error=error, sweep_words=SWEEP_WORDS,
                           max_rows=experiments.MAX_ROWS, max_columns=experiments.MAX_COLUMNS), status


def _form(kind: str):
    values: dict[str, Any] = {key: request.args.get(key, "") for key in FORM_FIELDS[kind] if request.args.get(key)}
    if kind == "compare":
        values["models"] = request.args.getlist("models")
    return _render(kind, values)


def _submit(kind: str):
    try:
        request.files  # noqa: B018  (reads the body: an upload over MAX_CONTENT_LENGTH raises here)
    except RequestEntityTooLarge:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        return _render(kind, {}, f"the upload is too large (the limit is {limit} bytes)", 413)
    values: dict[str, Any] = {key: request.form.get(key, "") for key in FORM_FIELDS[kind]}
    if kind == "compare":
        values["models"] = request.form.getlist("models")
    try:
        owner = _form_owner()
        files = {name: (upload.filename, upload.read()) for name in experiments.INPUTS.get(kind, ())
                 if (upload := request.files.get(name)) is not None and upload.filename}
        plan = experiments.validate_experiment(experiment_request(kind, request.form), files)
        created = experiments.create_experiment(plan, owner)
    except ApiError as exc:
        return _render(kind, values, exc.message, exc.status)[0], exc.status, exc.headers()
    _keep_capability(created.id, created.cancel_secret)
    return redirect(url_for("web.experiment", experiment_id=created.id), code=303)


@bp.get("/compare")
def compare_form():
    return _form("compare")


@bp.post("/compare")
def compare_submit():
    return _submit("compare")


@bp.get("/sweep")
def sweep_form():
    return _form("sweep")


@bp.post("/sweep")
def sweep_submit():
    return _submit("sweep")


@bp.get("/interpolate")
def interpolate_form():
    return _form("interpolate")


@bp.post("/interpolate")
def interpolate_submit():
    return _submit("interpolate")


@bp.get("/reconstruct")
def reconstruct_form():
    return _form("reconstruct")


@bp.post("/reconstruct")
def reconstruct_submit():
    return _submit("reconstruct")


@bp.get("/mix")
def mix_form():
    return _form("mix")


@bp.post("/mix")
def mix_submit():
    return _submit("mix")


@bp.get("/experiments/<experiment_id>")
def experiment(experiment_id: str):
    found = experiments.get_experiment(experiment_id)
    job_rows = experiments.jobs_of(found)
    summary = experiments.summary(job_rows)
    return render_template("experiment.html", experiment=found, jobs=job_rows, summary=summary,
                           grid=experiments.grid(found, job_rows), final=summary["status"] in FINAL,
                           title=TITLES[found.kind],
                           api_url=url_for("api.get_experiment", experiment_id=found.id))
