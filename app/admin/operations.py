"""Operations: ``/metrics`` (Prometheus text format) and the admin's queue page, ``/admin/queue``.

``/metrics`` is on a blueprint of its own at the site's root, outside the admin guard, because besides an
admin (an admin's bearer token or a signed-in admin's session) a configured network may read it without
signing in: ``METRICS_ALLOW_NETWORKS`` (a Prometheus server scraping over a private network). Anyone else gets
a JSON 401 (no credentials) or 403.
"""

from __future__ import annotations

import ipaddress

from flask import Blueprint, Response, current_app, jsonify, render_template, request

from app.admin.blueprints import bp
from app.admin.sessions import session_user
from app.services.accounts import bearer_user
from app.services.dashboard import bar_chart, dashboard
from app.services.metrics import render

ops_bp = Blueprint("ops", __name__)


def _from_allowed_network() -> bool:
    networks = current_app.config["METRICS_ALLOW_NETWORKS"]
    if not networks or not request.remote_addr:
        return False
    try:
        address = ipaddress.ip_address(request.remote_addr)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(str(network), strict=False) for network in networks)


@ops_bp.get("/metrics")
def metrics():
    if not _from_allowed_network():
        authorization = request.headers.get("Authorization")
        user = bearer_user(authorization) if authorization else session_user()
        if user is None:
            return (jsonify({"error": "authentication required: an admin's token (Authorization: Bearer <token>) "
                                      "or session, or a network of METRICS_ALLOW_NETWORKS"}), 401,
                    {"WWW-Authenticate": 'Bearer realm="priorforge"'})
        if not user.is_admin:
            return jsonify({"error": "only admins may read the metrics"}), 403
    body, content_type = render(current_app._get_current_object())
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})


@bp.get("/queue")
def queue_page():
    data = dashboard()
    hour = data["hour"]
    charts = {
        "jobs": bar_chart([b["jobs"] for b in hour]),
        "images": bar_chart([b["images"] for b in hour]),
        "p50": bar_chart([b["p50_s"] for b in hour]),
        "p95": bar_chart([b["p95_s"] for b in hour]),
    }
    return render_template("admin/queue.html", data=data, charts=charts)
