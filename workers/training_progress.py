"""What a training run's page shows while it runs, computed in the trainer process: the time left from the
measured step rate, and which stage of the evaluation runs and how far it is.

The step rate is measured over the recent past (the last :data:`RATE_WINDOW_SECONDS` of the attempt), not over
the whole attempt: a run whose steps slow down (a busier machine, a growing code schedule) or speed up is
estimated at the rate it runs at now, and the first step of a process (allocations, caches) drops out of the
window. The evaluation, which used to show nothing for minutes, reports each stage (the classifier, sampling,
the scores) with how far it is, and the time left in a stage follows that stage's own rate.

Pure arithmetic, no database and no torch: ``tests/admin/test_training_progress.py`` checks it directly.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable

RATE_WINDOW_SECONDS = 60.0  # the step rate is measured over this much recent wall time
RATE_RESOLUTION_SECONDS = 0.25  # at most one measuring point per this long (a fast run reports every step)

Point = tuple[int, float, float]  # (step, wall seconds, CPU seconds)


def estimate_seconds_left(start: Point, now: Point, total_steps: int, cpu_budget: float | None) -> float | None:
    """Seconds left, from two (step, elapsed wall seconds, CPU seconds) points: the steps left at the rate
    between them or, if sooner, the CPU budget left at their ratio of wall to CPU time. None before there is a
    rate to go by."""
    steps, wall, cpu = now[0] - start[0], now[1] - start[1], now[2] - start[2]
    if steps <= 0 or wall <= 0:
        return None
    left = (total_steps - now[0]) * wall / steps
    if cpu_budget and cpu > 0:
        left = min(left, max(0.0, cpu_budget - now[2]) * wall / cpu)
    return left


class StepRate:
    """The points of the last ``window`` seconds of an attempt, and the estimate they give."""

    def __init__(self, window: float = RATE_WINDOW_SECONDS, resolution: float = RATE_RESOLUTION_SECONDS):
        self.window, self.resolution = window, resolution
        self.points: deque[Point] = deque()
        self.now: Point | None = None

    def add(self, step: int, wall: float, cpu: float) -> None:
        self.now = (step, wall, cpu)
        if not self.points or wall - self.points[-1][1] >= self.resolution:
            self.points.append(self.now)
        # keep the newest point that is at least `window` old: the window spans `window` seconds once it can
        while len(self.points) > 1 and wall - self.points[1][1] >= self.window:
            self.points.popleft()

    def steps_per_second(self) -> float | None:
        if self.now is None or not self.points:
            return None
        steps, wall = self.now[0] - self.points[0][0], self.now[1] - self.points[0][1]
        return steps / wall if steps > 0 and wall > 0 else None

    def seconds_left(self, total_steps: int, cpu_budget: float | None) -> float | None:
        if self.now is None or not self.points:
            return None
        return estimate_seconds_left(self.points[0], self.now, total_steps, cpu_budget)

    def describe(self) -> dict[str, Any] | None:
        """The rate and what it was measured over, for the run page (None before there is a rate)."""
        rate = self.steps_per_second()
        if rate is None or self.now is None:
            return None
        return {"steps_per_second": round(rate, 4), "over_steps": self.now[0] - self.points[0][0],
                "over_seconds": round(self.now[1] - self.points[0][1], 1)}


class EvaluationProgress:
    """The evaluation's current stage (``update(stage, done, total, unit)``, as
    :func:`training.evaluate.evaluate_model` reports it), how long each finished stage took, and the time
    left in the current one at its own rate so far."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.started = clock()
        self.stage: str | None = None
        self.unit = ""
        self.done = self.total = 0
        self.stage_started = self.started
        self.first: tuple[int, float] = (0, self.started)  # (done, time) of the stage's first report
        self.finished: list[dict[str, Any]] = []

    def update(self, stage: str, done: int, total: int, unit: str = "") -> bool:
        """Record a report; True when it starts a new stage."""
        now = self.clock()
        new = stage != self.stage
        if new:
            self._close(now)
            self.stage, self.unit, self.stage_started, self.first = stage, unit, now, (done, now)
        self.done, self.total = int(done), int(total)
        return new

    def _close(self, now: float) -> None:
        if self.stage is not None:
            self.finished.append({"stage": self.stage, "seconds": round(now - self.stage_started, 1)})

    def finish(self) -> dict[str, Any]:
        """Close the last stage: the seconds of each stage and of the whole evaluation."""
        now = self.clock()
        self._close(now)
        self.stage = None
        return {"seconds": round(now - self.started, 1), "stages": list(self.finished)}

    def seconds_left(self) -> float | None:
        """The current stage's time left at its rate since its first report (None before it has one)."""
        done, since = self.first
        steps, wall = self.done - done, self.clock() - since
        if self.stage is None or steps <= 0 or wall <= 0 or not self.total:
            return None
        return max(0.0, (self.total - self.done) * wall / steps)

    def as_dict(self) -> dict[str, Any]:
        left = self.seconds_left()
        return {"stage": self.stage, "unit": self.unit, "done": self.done, "total": self.total,
                "fraction": round(min(1.0, self.done / self.total), 4) if self.total else None,
                "stage_seconds": round(self.clock() - self.stage_started, 1),
                "stage_seconds_left": None if left is None else round(left, 1),
                "seconds": round(self.clock() - self.started, 1), "finished_stages": list(self.finished)}
