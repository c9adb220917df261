"""Rate limits on the broker's Redis (the production set-up): the counts and headers a client sees, in one
Redis round trip per request (app/core/limits.py)."""

from __future__ import annotations

import pytest
from limits.storage import RedisStorage

from tests.service.conftest import base_config, register_test_models

pytestmark = pytest.mark.integration


def test_limits_and_headers_come_from_one_round_trip_per_request(tmp_path, checkpoints, redis_url, monkeypatch):
    from app import create_app
    from app.core.limits import OneTripRedisStorage
    from app.core.migrate import upgrade

    url, prefix = redis_url
    app = create_app(base_config(tmp_path, CELERY_BROKER_URL=url, BROKER_KEY_PREFIX=prefix,
                                 RATELIMIT_DEFAULT="5 per minute"))
    upgrade(app)
    with app.app_context():
        register_test_models(checkpoints)
    storage = app.extensions["priorforge_limiter"].storage
    assert isinstance(storage, OneTripRedisStorage)
    fallbacks: list[str] = []  # reads that went to Redis apart from the increment
    for name in ("get", "get_expiry"):
        original = getattr(RedisStorage, name)
        monkeypatch.setattr(RedisStorage, name, lambda self, key, _o=original, _n=name: fallbacks.append(_n) or _o(self, key))
    client = app.test_client()
    answers = [client.get("/api/v1/models") for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 5 + [429]
    assert [a.headers["X-RateLimit-Remaining"] for a in answers[:5]] == ["4", "3", "2", "1", "0"]
    assert all(a.headers["X-RateLimit-Limit"] == "5" for a in answers)
    resets = {int(a.headers["X-RateLimit-Reset"]) for a in answers[:5]}
    assert max(resets) - min(resets) <= 1  # one window
    assert 0 < int(answers[5].headers["Retry-After"]) <= 61
    assert fallbacks == []
    # what another process reads from Redis agrees with the headers (the counter is the shared truth)
    fresh = OneTripRedisStorage(f"priorforge+{url}", key_prefix=storage.key_prefix)
    key = next(iter(fresh.get_connection().scan_iter(match=f"{storage.key_prefix}*models*")))
    assert fresh.get(key.decode().removeprefix(f"{storage.key_prefix}:")) == 6
    assert fallbacks == ["get"]
