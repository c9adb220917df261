"""What ``GET /api/v1/health`` reports: whether the database, the broker and the object store answer."""

from __future__ import annotations

from typing import Any

from flask import current_app
from sqlalchemy import select

from app.core.extensions import db


def health() -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        db.session.execute(select(1))
        out["database"] = {"ok": True}
    except Exception as exc:  # report, do not raise: this is the health check
        db.session.rollback()
        out["database"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    celery = current_app.extensions["celery"]
    try:
        with celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)
        out["broker"] = {"ok": True, "transport": conn.transport_cls if isinstance(conn.transport_cls, str) else "?"}
    except Exception as exc:
        out["broker"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    storage = current_app.extensions["priorforge_storage"]
    try:
        storage.check()
        out["storage"] = {"ok": True, "backend": storage.describe()}
    except Exception as exc:  # a missing bucket, an unreachable store: jobs wait in the queue meanwhile
        out["storage"] = {"ok": False, "backend": storage.describe(), "error": str(exc)}
    out["status"] = "ok" if all(out[part]["ok"] for part in ("database", "broker", "storage")) else "degraded"
    return out
