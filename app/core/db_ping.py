"""Checking a pooled PostgreSQL connection before it is used, when it has been idle.

SQLAlchemy's ``pool_pre_ping`` pings on every checkout: one more round trip for every request and every task,
about a fifth of a lone job read's database work. A connection that was just used is as alive as the ping
would find it, so here a connection is pinged only when it comes out of the pool after resting at least
``DB_PING_AFTER_IDLE`` seconds: after a quiet spell, which is when a database restart or a dropped
connection goes unnoticed. A failed ping raises ``DisconnectionError``, and the pool replaces the connection
and checks out another (SQLAlchemy's documented custom pessimistic ping). A database that restarts in the
middle of steady traffic fails the statements in flight, as it does with ``pool_pre_ping``, and SQLAlchemy
then replaces the whole pool.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import DisconnectionError

IDLE_SINCE = "priorforge_idle_since"  # in a pooled connection's record: when it went back to the pool


def ping_idle_connections(engine: Engine, after_idle: float) -> None:
    """Ping a connection at checkout when it rested in the pool ``after_idle`` seconds or more."""
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def _rested(_dbapi_connection: Any, record: Any) -> None:
        record.info[IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop(IDLE_SINCE, None)
        if since is None or time.monotonic() - since < after_idle:  # new, or back from use a moment ago
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"a pooled connection idle for {time.monotonic() - since:.1f} s is gone: "
                                     f"{type(exc).__name__}") from exc
