"""``/api/v1/models``, ``/api/v1/health`` and the OpenAPI document."""

from __future__ import annotations

import logging

from flask import g, jsonify

from app.api.blueprint import bp
from app.api.openapi import spec
from app.services.health import health as service_health
from app.services.model_versions import model_to_dict, serving_models


@bp.get("/models")
def list_models():
    return jsonify({"models": [model_to_dict(m) for m in serving_models()]})


log = logging.getLogger(__name__)


@bp.get("/health")
def health():
    """ok or degraded for everyone; what failed and why (exception text) only for an admin's token and in the
    log (it can name hosts, users and paths)."""
    body = service_health()
    status = 200 if body["status"] == "ok" else 503
    if status != 200:
        log.warning("health check degraded: %s", body)
    if not g.client.is_admin:
        body = {"status": body["status"]}
    return jsonify(body), status


@bp.get("/openapi.json")
def openapi():
    return jsonify(spec())


@bp.get("/webhook-secret")
def webhook_secret():
    """The secret that signs the webhooks of this token's jobs (made on first use; docs/service.md)."""
    from app.core.errors import ApiError
    from app.services.webhooks import secret_of

    if g.client.token_id is None:
        raise ApiError(401, "send the API token whose webhook secret you want: Authorization: Bearer <token>")
    return jsonify({"secret": secret_of(g.client.token_id), "algorithm": "HMAC-SHA256",
                    "signed": "<Webhook-Timestamp>.<body>", "header": "Webhook-Signature: v1=<hex digest>"})
