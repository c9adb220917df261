"""Faults a test injects into a worker (see workers/faults.py): a job that takes its time, a job that kills its
worker process, a slow training step."""
from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass

from workers.faults import Faults, LeaseCheck, install

# the environment variable a fault worker (tests/support/fault_worker.py) reads its faults from: not a
# PRIORFORGE_* setting, so nothing in the service's configuration can turn a fault on
ENV = "PF_TEST_FAULTS"


@dataclass
class InjectedFaults(Faults):
    """task_delay: seconds each job waits (checking its lease) before loading its model, decoded alone so
    that it delays no other job; poison_seed: a batch holding a job of this seed SIGKILLs its worker process;
    train_step_delay: seconds each training step takes on top of its own."""

    task_delay: float = 0.0
    poison_seed: int | None = None
    train_step_delay: float = 0.0

    def batching_allowed(self) -> bool:
        return self.task_delay <= 0

    def job_started(self, lease: LeaseCheck) -> None:
        deadline = time.monotonic() + self.task_delay
        while time.monotonic() < deadline:
            lease.check()
            time.sleep(0.1)

    def batch_claimed(self, seeds: list[int | None]) -> None:
        if self.poison_seed is not None and self.poison_seed in seeds:
            os.kill(os.getpid(), signal.SIGKILL)

    def training_step(self) -> None:
        if self.train_step_delay > 0:
            time.sleep(self.train_step_delay)

    def to_env(self) -> dict[str, str]:
        return {ENV: json.dumps(asdict(self))}


def install_from_env() -> None:
    """Install the faults that :meth:`InjectedFaults.to_env` put in this process's environment, if any."""
    if os.environ.get(ENV):
        install(InjectedFaults(**json.loads(os.environ[ENV])))
