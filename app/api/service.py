"""``/api/v1/models``, ``/api/v1/health`` and the OpenAPI document."""

from __future__ import annotations

from flask import jsonify

from app.api.blueprint import bp
from app.api.openapi import spec
from app.services.health import health as service_health
from app.services.models import model_to_dict, serving_models


@bp.get("/models")
def list_models():
    return jsonify({"models": [model_to_dict(m) for m in serving_models()]})


@bp.get("/health")
def health():
    body = service_health()
    return jsonify(body), 200 if body["status"] == "ok" else 503


@bp.get("/openapi.json")
def openapi():
    return jsonify(spec())
