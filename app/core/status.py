"""The states of a job and of a training run (the same five), and the moves between them.

::

    queued ──claim──▶ running ──finish──▶ succeeded | failed
      ▲                  │
      └─────requeue──────┘   its worker died (no charge, or charged: docs/reliability.md), or the object
                             store was unavailable
    queued | running ──cancel──▶ canceled
    running ──give up──▶ failed   it killed its worker too often, or ran out of store attempts or tries

Every move is one conditional UPDATE, fenced by the state it leaves (and, out of ``running``, by the claim
token of the worker that holds the job), so two processes never both make it. :data:`MOVES` lists the allowed
moves; the tests check each writer against it.
"""
from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """A job's (or a training run's) state, stored as its value. A member equals its string, so rows read
    from the database compare equal to members."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def final(self) -> bool:
        return self in FINAL


FINAL: tuple[JobStatus, ...] = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)
LIVE: tuple[JobStatus, ...] = (JobStatus.QUEUED, JobStatus.RUNNING)
# state -> the states it may move to; a final state moves nowhere
MOVES: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELED}),
    JobStatus.RUNNING: frozenset({JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.SUCCEEDED, JobStatus.FAILED,
                                  JobStatus.CANCELED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELED: frozenset(),
}


def may_move(old: str, new: str) -> bool:
    """Whether a job (or run) in state ``old`` may move to ``new``."""
    return JobStatus(new) in MOVES[JobStatus(old)]


def overall_status(statuses: list[str]) -> JobStatus:
    """The state of a group of jobs (a batch, an experiment): queued while all are, succeeded when all did,
    running while any is not final, else failed if any failed, else canceled."""
    if all(s == JobStatus.QUEUED for s in statuses):
        return JobStatus.QUEUED
    if any(s not in FINAL for s in statuses):
        return JobStatus.RUNNING
    if all(s == JobStatus.SUCCEEDED for s in statuses):
        return JobStatus.SUCCEEDED
    return JobStatus.FAILED if JobStatus.FAILED in statuses else JobStatus.CANCELED


def count_by_status(statuses: list[str]) -> dict[str, int]:
    """How many of ``statuses`` are in each state (every state present, 0 where none is)."""
    return {status.value: statuses.count(status) for status in JobStatus}
