"""Webhooks (cog's convention): a job or batch names ``webhook`` (an http(s) URL) and optionally
``webhook_events_filter`` (``["start", "completed"]``; default ``["completed"]``), and gets a signed POST when
it starts and when it ends.

Nothing is lost across restarts because every step starts from committed rows:

1. the request stores the URL on the job (or batch) row with ``webhook_pending = true``, in the transaction
   that creates it: the promise to call back is committed exactly when the job is;
2. a worker's dispatcher (:class:`Dispatcher`, a thread of every worker's main process) finds the pending rows
   whose event has happened (``started_at`` set, a final status, every job of a batch final) and records one
   ``webhook_deliveries`` row per (job or batch, event), unique in the database, so two dispatchers record it
   once; a row that will see no more events loses its ``webhook_pending``. Whatever ended the job (a worker,
   a cancel, the reconciliation) needs no code of its own: the committed state is the outbox;
3. the dispatcher claims a due delivery with a conditional update that also pushes its next try into the
   future (a lease: a dispatcher killed mid-POST leaves it to be tried again), POSTs it, and records the
   answer: delivered on 2xx, else tried again after WEBHOOK_RETRY_BASE * 2^(tries-1) seconds (at most
   WEBHOOK_RETRY_MAX) until WEBHOOK_MAX_ATTEMPTS, then failed.

Delivery is at least once: a process killed after the receiver answered and before the record is committed
sends it again, with the same ``Webhook-Id``, by which receivers drop a repeat.

Signature: ``Webhook-Signature: v1=<hex HMAC-SHA256(secret, "<Webhook-Timestamp>." + body)>`` with the secret of
the API token that created the job (``GET /api/v1/webhook-secret``); receivers check it and refuse old
timestamps (replay). Webhooks therefore need a token.

SSRF: the target's host is resolved at each try and every address must be public: private, loopback,
link-local, multicast, reserved and unspecified addresses are refused unless inside WEBHOOK_ALLOW_NETWORKS;
the connection goes to the address that was checked (no second lookup), and redirects are not followed.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import secrets
import socket
import ssl
import threading
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, current_app
from sqlalchemy import exists, select, update
from sqlalchemy.exc import IntegrityError

from app.core import metrics
from app.core.errors import ApiError
from app.core.extensions import db, rowcount
from app.core.tables import ApiToken, Batch, get_row, Image, Job, WebhookDelivery, iso, utcnow
from app.core.status import FINAL, JobStatus, count_by_status

log = logging.getLogger(__name__)

EVENTS = ("start", "completed")
DEFAULT_EVENTS = ["completed"]
MAX_URL_LENGTH = 2000
USER_AGENT = "priorforge-webhook/1"
BATCH = 100  # rows a dispatcher handles per pass


# -- validation (at the request) -------------------------------------------------------------------
def validate(url: Any, events: Any, token_id: int | None) -> tuple[str | None, list[str] | None]:
    """(url, events) of a request's ``webhook`` and ``webhook_events_filter``, (None, None) without a webhook;
    ApiError(422) when malformed or refused."""
    if url is None:
        if events is not None:
            raise ApiError(422, "webhook_events_filter needs a webhook", field="webhook_events_filter")
        return None, None
    if not isinstance(url, str) or not url.strip():
        raise ApiError(422, "webhook must be an http or https URL", field="webhook")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH or any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise ApiError(422, f"webhook must be a URL of at most {MAX_URL_LENGTH} characters without spaces or "
                            "control characters", field="webhook")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ApiError(422, "webhook is not a valid URL", field="webhook") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(422, "webhook must be an http or https URL with a host", field="webhook")
    if parts.username is not None or parts.password is not None:
        raise ApiError(422, "webhook must not hold credentials (user:password@)", field="webhook")
    del port
    try:  # a literal address is checked now; a name at each try (it may change)
        address = ipaddress.ip_address(parts.hostname)
    except ValueError:
        address = None
    if address is not None and not address_allowed(address):
        raise ApiError(422, f"webhook: {address} is a private, loopback or link-local address, which this "
                            "service does not call (an operator may allow networks: WEBHOOK_ALLOW_NETWORKS)",
                       field="webhook")
    if parts.hostname.lower() in ("localhost", "localhost.localdomain") and not address_allowed(
            ipaddress.ip_address("127.0.0.1")):
        raise ApiError(422, "webhook: localhost is not called by this service", field="webhook")
    if events is None:
        events = list(DEFAULT_EVENTS)
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise ApiError(422, f"webhook_events_filter must be a non-empty list of: {', '.join(EVENTS)}",
                       field="webhook_events_filter")
    unknown = sorted(set(events) - set(EVENTS))
    if unknown:
        raise ApiError(422, f"unknown webhook event(s): {', '.join(unknown[:5])}; valid: {', '.join(EVENTS)}",
                       field="webhook_events_filter")
    if token_id is None:
        raise ApiError(422, "a webhook needs an API token (its deliveries are signed with the token's secret: "
                            "GET /api/v1/webhook-secret)", field="webhook")
    return url, [e for e in EVENTS if e in events]


def address_allowed(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A public address, or one inside WEBHOOK_ALLOW_NETWORKS."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for network in current_app.config["WEBHOOK_ALLOW_NETWORKS"]:
        if address in ipaddress.ip_network(str(network), strict=False):
            return True
    return address.is_global and not (address.is_private or address.is_loopback or address.is_link_local or
                                      address.is_multicast or address.is_reserved or address.is_unspecified)


def secret_of(token_id: int) -> str:
    """The token's signing secret, made (and committed) the first time it is asked for."""
    token = db.session.get(ApiToken, token_id)
    if token is None:
        raise ApiError(404, "no such token")
    if not token.webhook_secret:
        db.session.execute(update(ApiToken).where(ApiToken.id == token_id, ApiToken.webhook_secret.is_(None))
                           .values(webhook_secret="whsec_" + secrets.token_hex(32)))
        db.session.commit()
        db.session.refresh(token)
    return str(token.webhook_secret)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    return "v1=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def deliveries_of(job_id: str | None = None, batch_id: str | None = None) -> list[dict[str, Any]]:
    """The recorded deliveries of a job or batch (shown to its owner)."""
    cond = WebhookDelivery.job_id == job_id if job_id else WebhookDelivery.batch_id == batch_id
    return [{"id": d.id, "event": d.event, "state": d.state, "attempts": d.attempts,
             "last_status_code": d.last_status_code, "last_error": d.last_error,
             "created_at": iso(d.created_at), "delivered_at": iso(d.delivered_at)}
            for d in db.session.scalars(select(WebhookDelivery).where(cond).order_by(WebhookDelivery.created_at))]


# -- recording events (the dispatcher) ---------------------------------------------------------------
def _record(rows: list[dict[str, Any]]) -> None:
    """Insert deliveries; one that exists already (another dispatcher) is skipped."""
    for row in rows:
        try:
            with db.session.begin_nested():
                db.session.add(WebhookDelivery(**row))
        except IntegrityError:
            pass


def record_events() -> int:
    """Record the deliveries of the events that have happened (see the module's docstring); returns how many
    rows were looked at."""
    now = utcnow()
    seen = 0
    jobs = db.session.execute(select(Job.id, Job.status, Job.started_at, Job.webhook, Job.webhook_events,
                                     Job.owner_token_id).where(Job.webhook_pending.is_(True)).limit(BATCH)).all()
    done_jobs: list[str] = []
    for job in jobs:
        seen += 1
        events = job.webhook_events or DEFAULT_EVENTS
        existing = set(db.session.scalars(select(WebhookDelivery.event).where(WebhookDelivery.job_id == job.id)))
        rows = []
        final = job.status in FINAL
        if "start" in events and "start" not in existing and job.started_at is not None:
            rows.append({"job_id": job.id, "event": "start"})
        if "completed" in events and "completed" not in existing and final:
            rows.append({"job_id": job.id, "event": "completed"})
        _record([{**r, "url": job.webhook, "token_id": job.owner_token_id, "next_attempt_at": now} for r in rows])
        if final:
            done_jobs.append(job.id)
    if done_jobs:
        db.session.execute(update(Job).where(Job.id.in_(done_jobs)).values(webhook_pending=False))
    batches = db.session.execute(select(Batch.id, Batch.webhook, Batch.webhook_events, Batch.owner_token_id)
                                 .where(Batch.webhook_pending.is_(True)).limit(BATCH)).all()
    done_batches: list[str] = []
    for batch in batches:
        seen += 1
        events = batch.webhook_events or DEFAULT_EVENTS
        existing = set(db.session.scalars(select(WebhookDelivery.event).where(WebhookDelivery.batch_id == batch.id)))
        started = db.session.scalar(select(exists().where(Job.batch_id == batch.id, Job.started_at.is_not(None))))
        unfinished = db.session.scalar(select(exists().where(Job.batch_id == batch.id,
                                                             Job.status.not_in(FINAL))))
        rows = []
        if "start" in events and "start" not in existing and started:
            rows.append({"batch_id": batch.id, "event": "start"})
        if "completed" in events and "completed" not in existing and not unfinished:
            rows.append({"batch_id": batch.id, "event": "completed"})
        _record([{**r, "url": batch.webhook, "token_id": batch.owner_token_id, "next_attempt_at": now} for r in rows])
        if not unfinished:
            done_batches.append(batch.id)
    if done_batches:
        db.session.execute(update(Batch).where(Batch.id.in_(done_batches)).values(webhook_pending=False))
    db.session.commit()
    return seen


# -- the body ---------------------------------------------------------------------------------------
def _job_body(job: Job) -> dict[str, Any]:
    version = job.model_version
    images = db.session.scalars(select(Image).where(Image.job_id == job.id).order_by(Image.index)).all() \
        if job.status == JobStatus.SUCCEEDED else []
    return {"id": job.id, "url": f"/api/v1/jobs/{job.id}", "status": job.status, "error": job.error,
            "model": version.name, "model_version": version.version, "condition": job.condition_kind,
            "label": job.label, "cluster": job.cluster, "prompt": job.prompt, "n": job.n, "seed": job.seed,
            "attempts": job.attempts, "batch_id": job.batch_id, "created_at": iso(job.created_at),
            "started_at": iso(job.started_at), "finished_at": iso(job.finished_at),
            "images": [{"id": i.id, "index": i.index, "seed": i.seed, "url": f"/api/v1/images/{i.id}",
                        "png_url": f"/api/v1/images/{i.id}.png"} for i in images]}


def body_of(delivery: WebhookDelivery) -> dict[str, Any]:
    if delivery.job_id:
        return {"event": delivery.event, "type": "job", "job": _job_body(get_row(Job, delivery.job_id))}
    batch = get_row(Batch, delivery.batch_id)
    statuses = [j.status for j in batch.jobs]  # (app.services.jobs imports this module: no import back)
    counts = count_by_status(statuses)
    return {"event": delivery.event, "type": "batch", "batch": {
        "id": batch.id, "url": f"/api/v1/batches/{batch.id}", "total": len(statuses), "counts": counts,
        "created_at": iso(batch.created_at),
        "jobs": [{"id": j.id, "url": f"/api/v1/jobs/{j.id}", "status": j.status, "error": j.error}
                 for j in batch.jobs]}}


# -- sending ----------------------------------------------------------------------------------------
class Refused(Exception):
    """The target is not called (SSRF guard)."""


def resolve_checked(host: str, port: int) -> str:
    """An address of ``host`` after checking every address it resolves to; Refused otherwise."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc}") from None
    addresses = [str(info[4][0]) for info in infos]
    for address in addresses:
        if not address_allowed(ipaddress.ip_address(address.split("%", 1)[0])):
            raise Refused(f"{host} resolves to {address}, a private, loopback or link-local address "
                          "(WEBHOOK_ALLOW_NETWORKS allows networks)")
    return addresses[0]


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    """POST to the checked address of the URL's host; the status code (redirects are not followed)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = resolve_checked(host, port)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        context = ssl.create_default_context()

        class Pinned(http.client.HTTPSConnection):
            def connect(self) -> None:
                sock = socket.create_connection((address, port), timeout)
                self.sock = context.wrap_socket(sock, server_hostname=host)
        conn: http.client.HTTPConnection = Pinned(host, port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Host": parts.netloc, **headers})
        response = conn.getresponse()
        response.read(65536)
        return response.status
    finally:
        conn.close()


def deliver_due(limit: int = BATCH) -> int:
    """Claim and send the deliveries that are due; returns how many were tried."""
    cfg = current_app.config
    timeout = cfg["WEBHOOK_TIMEOUT"]
    now = utcnow()
    due = list(db.session.scalars(select(WebhookDelivery.id).where(
        WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.created_at).limit(limit)))
    db.session.commit()
    tried = 0
    for delivery_id in due:
        claim_until = utcnow() + timedelta(seconds=timeout + 30)  # a dispatcher that dies mid-POST: tried later
        claimed = rowcount(db.session.execute(update(WebhookDelivery).where(
            WebhookDelivery.id == delivery_id, WebhookDelivery.state == "pending",
            WebhookDelivery.next_attempt_at <= utcnow()).values(
            next_attempt_at=claim_until, attempts=WebhookDelivery.attempts + 1)))
        db.session.commit()
        if not claimed:
            continue
        tried += 1
        _send(get_row(WebhookDelivery, delivery_id), timeout)
    return tried


def _send(delivery: WebhookDelivery, timeout: float) -> None:
    cfg = current_app.config
    status, error = None, None
    try:
        body = json.dumps(body_of(delivery), separators=(",", ":")).encode()
        secret = secret_of(delivery.token_id) if delivery.token_id else None
        if secret is None:
            raise Refused("the job's API token is gone: nothing to sign with")
        timestamp = int(time.time())
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, "Webhook-Id": delivery.id,
                   "Webhook-Timestamp": str(timestamp), "Webhook-Event": delivery.event,
                   "Webhook-Signature": sign(secret, timestamp, body)}
        status = post(delivery.url, body, headers, timeout)
        if not 200 <= status < 300:
            error = f"the receiver answered {status}"
    except Refused as exc:
        error = f"refused: {exc}"
    except Exception as exc:  # unreachable, timed out, TLS: try again later
        error = f"{type(exc).__name__}: {exc}"
    attempts = delivery.attempts
    values: dict[str, Any] = {"last_status_code": status, "last_error": error and error[:1000]}
    if error is None:
        values.update(state="delivered", delivered_at=utcnow())
        outcome = "delivered"
    elif error.startswith("refused:") or attempts >= cfg["WEBHOOK_MAX_ATTEMPTS"]:
        values.update(state="failed")
        outcome = "failed"
    else:
        delay = min(cfg["WEBHOOK_RETRY_MAX"], cfg["WEBHOOK_RETRY_BASE"] * 2 ** (attempts - 1))
        values.update(next_attempt_at=utcnow() + timedelta(seconds=delay))
        outcome = "retry"
    db.session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery.id).values(**values))
    db.session.commit()
    metrics.webhook_attempt(outcome)
    if error:
        log.warning("webhook %s (%s) to %s: %s (%s)", delivery.id, delivery.event, delivery.url, error, outcome)


class Dispatcher:
    """A thread (in a worker's main process) that records webhook events and sends the due deliveries every
    WEBHOOK_INTERVAL seconds."""

    def __init__(self, app: Flask):
        self.app = app
        self.interval = app.config["WEBHOOK_INTERVAL"]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="priorforge-webhooks", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def run_once(self) -> None:
        with self.app.app_context():
            try:
                record_events()
                deliver_due()
            except Exception as exc:  # the database is down: next interval
                db.session.rollback()
                log.warning("webhooks: %s: %s", type(exc).__name__, exc)
            finally:
                db.session.remove()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.run_once()



