"""The public Models page (``/models``): every serving model with its card (what it makes, examples to try,
its metrics and the recipe that made it) and its sample grid (``/models/<name>/samples.png``)."""

from __future__ import annotations

from pathlib import Path

from flask import abort, render_template, send_file

from app.services.model_versions import card_summary, serving_models, serving_version
from app.web.blueprint import bp
from priorforge_spec.checkpoint import SAMPLES_FILE


@bp.get("/models")
def models_page():
    models = [(m, card_summary(m)) for m in serving_models()]
    return render_template("models.html", models=models)


@bp.get("/models/<name>/samples.png")
def model_samples(name: str):
    """The serving version's sample grid, read from its checkpoint folder (a fixed file name, never a path
    taken from the request)."""
    version = serving_version(name)
    if version is None:
        abort(404)
    path = Path(version.checkpoint_path) / SAMPLES_FILE
    if not path.is_file():
        abort(404)
    response = send_file(path, mimetype="image/png", max_age=3600)
    response.headers["X-Model-Version"] = str(version.version)
    return response
