"""The points where a test injects a fault into a worker: a job that takes its time, a job that kills its
worker process, a slow training step.

Production code calls these points and they do nothing: no setting turns a fault on. A test installs its
own :class:`Faults` in the worker process before the worker starts (``tests/support/faults.py``: a worker
launched through ``python -m tests.support.fault_worker``, or :func:`install` in the test's own process).
"""
from __future__ import annotations

from typing import Protocol


class LeaseCheck(Protocol):
    def check(self) -> None: ...


class Faults:
    """No faults. Each method is one injection point; a test's subclass overrides the ones it needs."""

    def batching_allowed(self) -> bool:
        """False: every job is decoded alone (a fault that slows a job must not slow others with it)."""
        return True

    def job_started(self, lease: LeaseCheck) -> None:
        """A job (the message's, before any batched with it) is about to load its model; ``lease.check()``
        raises once the job is no longer this worker's."""

    def batch_claimed(self, seeds: list[int | None]) -> None:
        """The jobs decoded together (their seeds) are claimed and about to be generated."""

    def training_step(self) -> None:
        """A training run has finished one step."""


_active = Faults()


def active() -> Faults:
    return _active


def install(faults: Faults) -> Faults:
    """Make ``faults`` this process's faults (a forked pool process inherits them); returns the previous."""
    global _active
    previous, _active = _active, faults
    return previous
