"""The fast paths: what makes a job's round trip take milliseconds instead of poll intervals, and nothing else.

Every one of them only shortens a wait or skips a no-op; the database row stays the truth, and each has a plain
mechanism under it that keeps the service correct without it (docs/service.md, "Speed"):

============================  =====================================================  ==============================
fast path                     what it does                                           without it
============================  =====================================================  ==============================
:mod:`.doorbell`              a datagram on a Unix socket wakes a process of this    the sleeper's own poll
                              machine at once (``LOCAL_WAKEUPS``)                    interval
:mod:`.embedded_broker`       the embedded broker's worker sleeps on the doorbell    kombu's poll of the broker
                              and a publish rings it                                 table
:mod:`.job_events`            ``?wait=`` requests sleep until the job's end is       one query per process every
                              announced (Redis pub/sub, or a ring)                   ``JOB_WAIT_POLL_INTERVAL``
:mod:`.strategy`              the worker's main process drops messages of jobs       each message goes to the pool,
                              that are no longer queued                              whose task drops it
============================  =====================================================  ==============================

The worker's quick reconnection to a restarted broker (``workers.bootsteps.Consumer``) is a recovery measure, not
a shortcut, and stays with the worker's other start-up steps.

``FAST_PATHS = false`` switches all of them off at once (for a fault that might be theirs, or to measure what
they buy): no rings, no announcements, every message to the pool. Jobs then end and ``?wait=`` answers as
before, only later.
"""

from __future__ import annotations

from typing import Any


def enabled(config: Any) -> bool:
    """Whether the fast paths are on (``FAST_PATHS``, default on)."""
    return bool(config.get("FAST_PATHS", True))
