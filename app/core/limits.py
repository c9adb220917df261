"""Request rate limits with Flask-Limiter (docs/security.md, "Quotas"): ``RATELIMIT_DEFAULT`` per client on
every route, ``RATELIMIT_CREATE`` more on the routes that queue work. A client is what ``g.client_key`` says
(the API token, set by the app's identify hook), else the remote address. The counters live in the broker's
Redis when the service uses Redis (shared by every web process), else in this process's memory.

One Limiter per app (not a module-level one): its storage is per instance, and tests build many apps.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from flask import Flask, Response, current_app, g, request
from flask_limiter import Limiter
from limits.storage import RedisStorage

from app.core import metrics

# the routes that queue work, sharing one RATELIMIT_CREATE budget per client
CREATE_ENDPOINTS = ("api.create_job", "api.create_batch", "web.submit_job", "web.create_batch")
# no limit: files a page embeds by the dozen (gallery thumbnails), and the health check of load balancers
EXEMPT_ENDPOINTS = ("static", "api.get_image_png", "web.model_samples", "api.health")


def client_key() -> str:
    return g.get("client_key") or f"addr:{request.remote_addr or 'unknown'}"


def _storage_uri(config) -> str:
    broker = config["CELERY_BROKER_URL"]
    return f"{ONE_TRIP_SCHEME}+{broker}" if broker.startswith(("redis://", "rediss://")) else "memory://"


ONE_TRIP_SCHEME = "priorforge"


class OneTripRedisStorage(RedisStorage):
    """The limits library's Redis storage, in one round trip per request instead of three.

    A fixed-window limit costs a request three Redis round trips: the counter's increment (a script), then,
    for the X-RateLimit headers, the counter (GET) and its time to live (TTL). Here the increment's script
    also returns the TTL, and the GET and TTL that follow in the same thread for the same key are answered
    from what it returned, which is what they would read a moment later. Anything else goes to Redis as
    before (the limits library has no call that returns the headers' figures with the increment)."""

    STORAGE_SCHEME = [f"{ONE_TRIP_SCHEME}+redis", f"{ONE_TRIP_SCHEME}+rediss"]
    SCRIPT_INCR_EXPIRE_TTL = """
        local amount = tonumber(ARGV[2])
        local current = redis.call("incrby", KEYS[1], amount)
        if tonumber(current) == amount then
            redis.call("expire", KEYS[1], ARGV[1])
        end
        return {current, redis.call("ttl", KEYS[1])}
    """.encode()
    FRESH_FOR = 1.0  # seconds an increment's figures answer a GET and TTL of the same key in this thread

    def __init__(self, uri: str, **options: Any) -> None:
        self._last = threading.local()
        super().__init__(uri.removeprefix(f"{ONE_TRIP_SCHEME}+"), **options)

    def initialize_storage(self, uri: str) -> None:
        super().initialize_storage(uri)
        self.lua_incr_expire_ttl = self.get_connection().register_script(self.SCRIPT_INCR_EXPIRE_TTL)

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        count, ttl = self.lua_incr_expire_ttl([self.prefixed_key(key)], [expiry, amount])
        self._last.figures = (key, int(count), max(int(ttl), 0) + time.time(), time.monotonic())
        return int(count)

    def _fresh(self, key: str) -> tuple[str, int, float, float] | None:
        last = getattr(self._last, "figures", None)
        return last if last and last[0] == key and time.monotonic() - last[3] < self.FRESH_FOR else None

    def get(self, key: str) -> int:
        last = self._fresh(key)
        return last[1] if last else super().get(key)

    def get_expiry(self, key: str) -> float:
        last = self._fresh(key)
        self._last.figures = None  # the headers' last read: the next request increments first
        return last[2] if last else super().get_expiry(key)


def init_limiter(app: Flask) -> Limiter:
    """Bind a Limiter to ``app`` (after every blueprint is registered: it wraps their views)."""
    cfg = app.config
    if not cfg.get("RATELIMIT_STORAGE_URI"):
        cfg["RATELIMIT_STORAGE_URI"] = _storage_uri(cfg)
    cfg.setdefault("RATELIMIT_HEADERS_ENABLED", True)  # X-RateLimit-*, and Retry-After on its 429s
    cfg.setdefault("RATELIMIT_SWALLOW_ERRORS", True)  # Redis down: serve without limits rather than fail
    cfg.setdefault("RATELIMIT_KEY_PREFIX", f"{cfg.get('BROKER_KEY_PREFIX') or ''}priorforge")
    # Retry-After only where it belongs: Flask-Limiter's header injection (an after_request hook) sets it on
    # every response, 200s included, and raises an answer's own value to its window's reset. The hook below,
    # registered first, runs after that injection (Flask runs them in reverse): it puts back the value the
    # answer set itself (the image quota's, the sign-in throttle's: header and body agree), keeps the
    # Limiter's on its own 429s, and drops it from every other response. The one registered after the
    # Limiter runs before its injection and notes the answer's own value.
    app.after_request(_final_retry_after)
    limiter = Limiter(client_key, app=app, on_breach=_count_breach)
    app.after_request(_note_own_retry_after)
    create = limiter.shared_limit(lambda: current_app.config["RATELIMIT_CREATE"], scope="create")
    for endpoint in CREATE_ENDPOINTS:
        # flask-limiter types its wrapper as an async view; it returns what the view returns
        app.view_functions[endpoint] = create(app.view_functions[endpoint])  # type: ignore[assignment]
    for endpoint in EXEMPT_ENDPOINTS:
        app.view_functions[endpoint] = limiter.exempt(app.view_functions[endpoint])  # type: ignore[assignment]
    app.extensions["priorforge_limiter"] = limiter
    return limiter


def _count_breach(_limit: object) -> None:
    metrics.refused("rate_limit")  # /metrics: priorforge_refusals_total{reason="rate_limit"}


def _note_own_retry_after(response: Response) -> Response:
    if "Retry-After" in response.headers:
        g.own_retry_after = response.headers["Retry-After"]
    return response


def _final_retry_after(response: Response) -> Response:
    own = g.pop("own_retry_after", None)
    if own is not None:
        response.headers["Retry-After"] = own
    elif response.status_code != 429:
        response.headers.pop("Retry-After", None)
    return response
