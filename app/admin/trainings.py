"""Admin routes for training runs and model promotion, on the admin blueprints (so their access hook guards
every one of them): JSON under ``/api/v1/admin`` (bearer tokens), HTML under ``/admin`` (session sign-in, CSRF
on the forms). The run page polls ``/admin/trainings/<id>.json`` (a GET read with the session) for live
progress.
"""

from __future__ import annotations

import io
import json
from typing import Any

from flask import current_app, g, jsonify, redirect, render_template, request, send_file, url_for

from app.admin.blueprints import api_bp, bp
from app.admin.views import run_to_dict
from app.core.errors import ApiError
from app.core.extensions import db
from app.core.http import json_body
from app.core.tables import ModelVersion
from app.core.storage import StorageError
from app.services import cards, model_versions, trainings
from app.services.datasets import builtin_datasets, uploaded_datasets
from priorforge_spec.backends import backend_names

# form fields that hold numbers (blank: the default), and the checkbox
INT_FIELDS = ("max_steps", "batch_size", "seed", "image_size", "channels", "clusters", "checkpoint_every",
              "sample_every", "eval_samples")
FLOAT_FIELDS = ("lr", "max_cpu_minutes")


# -- JSON ----------------------------------------------------------------------------------------------
@api_bp.get("/trainings")
def list_trainings():
    return jsonify({"trainings": [run_to_dict(r) for r in trainings.list_runs()]})


@api_bp.post("/trainings")
def create_training():
    settings = trainings.validate_training(json_body())
    run = trainings.create_run(settings, g.admin_user)
    body = run_to_dict(run)
    return jsonify(body), 202, {"Location": body["url"]}


@api_bp.get("/trainings/<run_id>")
def get_training(run_id: str):
    return jsonify(run_to_dict(trainings.get_run(run_id), history=True))


@api_bp.post("/trainings/<run_id>/cancel")
def cancel_training(run_id: str):
    return jsonify(run_to_dict(trainings.cancel_run(run_id)))


@api_bp.get("/models")
def list_model_versions():
    return jsonify({"versions": [model_versions.version_to_dict(v) for v in model_versions.list_versions()]})


@api_bp.get("/models/<int:version_id>/compare")
def compare_model_version(version_id: int):
    return jsonify(model_versions.compare(version_id))


@api_bp.post("/models/<int:version_id>/promote")
def promote_model_version(version_id: int):
    """Serve this version; an optional JSON body ``{"card": {...}}`` writes its card in the same transaction
    (a card that does not validate promotes nothing)."""
    card = None
    if request.get_data(cache=True):
        body = json_body()
        if not isinstance(body, dict) or set(body) - {"card"}:
            raise ApiError(422, "the body of a promotion is empty or {\"card\": {...}}")
        card = body.get("card")
    return jsonify(model_versions.version_to_dict(_promote_with_card(version_id, card)))


@api_bp.route("/models/<int:version_id>/card", methods=["PATCH"])
def edit_model_card(version_id: int):
    """Write a version's card: the fields sent (title, description, examples) replace those of the card;
    null or an empty value removes one; fields left out stay."""
    version = model_versions.get_version(version_id)
    cards.write_card(version, cards.validate_card(version, json_body()))
    db.session.commit()
    return jsonify(model_versions.version_to_dict(version))


def _promote_with_card(version_id: int, card: Any) -> ModelVersion:
    version = model_versions.get_version(version_id)
    if card is not None:
        cards.write_card(version, cards.validate_card(version, card))  # before anything changes: 422, no promotion
    return model_versions.promote(version_id)


# -- HTML ----------------------------------------------------------------------------------------------
def _form_choices() -> dict[str, Any]:
    return {"backends": backend_names(),
            "datasets": [d["name"] for d in builtin_datasets() if d["available"]]
            + [d.name for d in uploaded_datasets()]}


def _request_from_form(form: Any) -> dict[str, Any]:
    """The form as a training request (the same validation as the JSON API then applies)."""
    body: dict[str, Any] = {}
    for key in ("backend", "dataset", "condition", "model_name"):
        if form.get(key, "").strip():
            body[key] = form[key].strip()
    for key in (*INT_FIELDS, *FLOAT_FIELDS):
        raw = form.get(key, "").strip()
        if not raw:
            continue
        try:
            body[key] = int(raw) if key in INT_FIELDS else float(raw)
        except ValueError:
            raise ApiError(422, f"{key} must be a number, got {raw!r}", field=key) from None
    body["evaluate"] = form.get("evaluate") == "on"
    for key in ("model_options", "hparams"):
        raw = form.get(key, "").strip()
        if raw:
            try:
                body[key] = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ApiError(422, f"{key} must be a JSON object such as {{\"latent_dim\": 16}}: {exc}",
                               field=key) from None
    return body


@bp.get("/trainings")
def trainings_page():
    return _render_trainings()


def _render_trainings(*, error: str | None = None, form: Any = None, status: int = 200):
    return render_template("admin/trainings.html", runs=trainings.list_runs(), error=error, form=form or {},
                           **_form_choices()), status


@bp.post("/trainings")
def start_training():
    try:
        settings = trainings.validate_training(_request_from_form(request.form))
    except ApiError as exc:
        return _render_trainings(error=exc.message, form=request.form, status=exc.status)
    run = trainings.create_run(settings, g.admin_user)
    return redirect(url_for("admin.training_page", run_id=run.id), code=303)


@bp.get("/trainings/<run_id>")
def training_page(run_id: str):
    from app.services.metrics_table import plain_json, seconds_text

    run = trainings.get_run(run_id)
    return render_template("admin/training.html", run=run, body=run_to_dict(run, history=True),
                           plain_json=plain_json, seconds_text=seconds_text)


@bp.get("/trainings/<run_id>.json")
def training_json(run_id: str):
    return jsonify(run_to_dict(trainings.get_run(run_id), history=True))


@bp.get("/trainings/<run_id>/sample.png")
def training_sample(run_id: str):
    path = trainings.latest_sample(trainings.get_run(run_id))
    if path is None:
        raise ApiError(404, "this run has no sample grid yet")
    if isinstance(path, str):  # a key of the object store: the trainer may be another machine
        try:
            return send_file(io.BytesIO(current_app.extensions["priorforge_storage"].get(path)),
                             mimetype="image/png", max_age=0)
        except (KeyError, StorageError):
            raise ApiError(404, "the sample grid is not available from the store") from None
    return send_file(path, mimetype="image/png", max_age=0)


@bp.post("/trainings/<run_id>/cancel")
def cancel_training_form(run_id: str):
    trainings.cancel_run(run_id)
    return redirect(url_for("admin.training_page", run_id=run_id), code=303)


@bp.get("/models")
def models_page():
    versions = model_versions.list_versions()
    return render_template("admin/models.html", versions=versions)


@bp.get("/models/<int:version_id>")
def model_version_page(version_id: int):
    return _render_version(version_id, saved=request.args.get("saved") == "card")


def _render_version(version_id: int, *, error: str | None = None, form: Any = None, saved: bool = False,
                    status: int = 200):
    version = model_versions.get_version(version_id)
    values = dict(form) if form is not None else cards.form_values(version, model_versions.serving_version(version.name))
    return render_template("admin/model_version.html", comparison=model_versions.compare(version_id), card_form=values,
                           card_error=error, card_saved=saved, limits={
                               "title": cards.MAX_TITLE, "description": cards.MAX_DESCRIPTION,
                               "examples": cards.MAX_EXAMPLES,
                               "prompt": current_app.config["MAX_PROMPT_LENGTH"]}), status


@bp.post("/models/<int:version_id>/promote")
def promote_form(version_id: int):
    """Promote; the page's card fields, when the form sends them, are written with it (a card that does not
    validate is shown again with its message, and nothing is promoted)."""
    card = cards.card_fields_from_form(request.form) if any(k in request.form for k in cards.CARD_FIELDS) else None
    try:
        _promote_with_card(version_id, card)
    except ApiError as exc:
        if exc.status != 422:
            raise
        db.session.rollback()
        return _render_version(version_id, error=exc.message, form=request.form, status=422)
    return redirect(url_for("admin.model_version_page", version_id=version_id), code=303)


@bp.post("/models/<int:version_id>/card")
def card_form(version_id: int):
    version = model_versions.get_version(version_id)
    try:
        cards.write_card(version, cards.validate_card(version, cards.card_fields_from_form(request.form),
                                                      partial=False))
    except ApiError as exc:
        db.session.rollback()
        return _render_version(version_id, error=exc.message, form=request.form, status=exc.status)
    db.session.commit()
    return redirect(url_for("admin.model_version_page", version_id=version_id, saved="card",
                            _anchor="card-heading"), code=303)
