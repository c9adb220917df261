"""Micro-batching for the generation task: several jobs of one model version decoded together.

Each job draws its latents exactly as it does alone (image *i* from a CPU generator seeded ``seed + i``), the
codes of all jobs are concatenated and decoded in passes of a fixed size
(:func:`generation.sampling.decode_fixed_passes`), and the images are split back per job, each handed on as
soon as its last row is decoded. A fixed pass size is what makes a job's pixels independent of the jobs it is
batched with: CPU kernels choose their blocking by batch size, so a pass of 1 row and a pass of 64 rows can
round one pixel differently.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Iterator

import torch
from sqlalchemy import func, select
from torch import Tensor

from app.core.extensions import db
from app.core.tables import Job, utcnow
from app.core.status import JobStatus
from generation.base import Condition, GenerativeModel
from generation.sampling import decode_group_key, iter_decode_passes, per_image_latents


class StageClock:
    """Seconds spent in each stage of the generation task, summed while :attr:`enabled` (off by default: a
    stage then costs one attribute check). ``bench/job_breakdown.py`` turns it on in its own process to see
    where a job's time goes. A stage inside another counts for itself only (not for its parent); a stage
    run by several threads at once sums their times."""

    def __init__(self) -> None:
        self.enabled = False
        self.seconds: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()
        self._local = threading.local()  # per thread: the nested stages' time to leave out of their parent

    def reset(self) -> None:
        with self._lock:
            self.seconds = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        stack = self._local.__dict__.setdefault("stack", [])
        stack.append(0.0)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - t0
            nested = stack.pop()
            if stack:
                stack[-1] += elapsed  # a stage inside another counts once, as itself
            with self._lock:
                self.seconds[stage] += elapsed - nested


stage_clock = StageClock()


@dataclass(frozen=True)
class JobRequest:
    """What one job asks the model for: ``n`` images, image *i* seeded ``seed + i``."""

    condition: Condition
    n: int
    seed: int


def job_latents(model: GenerativeModel, request: JobRequest) -> Tensor:
    """The job's codes ``(n, latent_dim)``, one generator per image, as a job run alone draws them."""
    return per_image_latents(model, request.n, request.condition, request.seed)


@torch.inference_mode()
def decode_jobs(model: GenerativeModel, requests: list[JobRequest], pass_size: int,
                after_pass: Callable[[], None] | None = None, precision: str = "fp32",
                on_ready: Callable[[int, Tensor, bool], None] | None = None) -> list[Tensor]:
    """Images ``(n, C, H, W)`` in [-1, 1] per request, the codes of all requests decoded together.

    Requests whose decoder needs the condition (``decode_group_key`` not None) are decoded with the other
    requests of the same condition only. ``after_pass`` runs between groups (lease checks, progress).
    ``on_ready(i, images, final)`` runs as soon as the last row of request ``i`` is decoded, before the next
    pass: the worker starts encoding and writing that job's images while the next pass decodes; ``final`` says
    no pass follows (nothing left to overlap with).
    ``precision`` (resolved: fp32, bf16 or fp16) is the decoder's autocast; codes are always drawn in fp32.
    """
    from generation.precision import autocast

    if model.training:  # a cached model is in eval mode from its load; eval() walks every submodule
        model.eval()
    with stage_clock("latents"):
        latents = [job_latents(model, request) for request in requests]
    groups: dict[object, list[int]] = {}
    for i, request in enumerate(requests):
        groups.setdefault(decode_group_key(model, request.condition), []).append(i)
    out: list[Tensor | None] = [None] * len(requests)
    last_request = list(groups.values())[-1][-1] if groups else None  # its rows come out of the last pass
    for key, members in groups.items():
        condition = None if key is None else requests[members[0]].condition
        passes = iter_decode_passes(model, torch.cat([latents[i] for i in members]), condition, max(1, pass_size),
                                    set_eval=False)
        waiting = deque(members)  # requests of this group not complete yet, in row order
        decoded: list[Tensor] = []  # decoded rows not handed out yet
        while waiting:
            with stage_clock("decode"), autocast(model.device, precision):
                piece = next(passes)  # (rows, C, H, W)
            decoded.append(piece)
            while waiting and sum(part.shape[0] for part in decoded) >= requests[waiting[0]].n:
                i = waiting.popleft()
                rows = torch.cat(decoded) if len(decoded) > 1 else decoded[0]
                mine, rest = rows[:requests[i].n], rows[requests[i].n:]
                out[i] = mine
                decoded = [rest] if rest.shape[0] else []
                if on_ready is not None:
                    on_ready(i, mine, i == last_request)
        if after_pass is not None:
            with stage_clock("progress"):
                after_pass()
    assert all(images is not None for images in out)
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class JobSnapshot:
    """The fields of a job row the generation task reads. None of them changes once the job is created, so
    the task reads them once (before its claims commit) instead of reloading expired ORM objects."""

    id: str
    model_version_id: int
    condition_kind: str
    label: str | None
    label_index: int | None
    cluster: int | None
    prompt: str | None
    n: int
    seed: int
    experiment_id: str | None = None
    operation: dict | None = None  # None: plain sampling; else e.g. an interpolation (never batched)
    batch_id: str | None = None  # with created_at and n: the job's lane and latencies for /metrics
    created_at: datetime | None = None

    @classmethod
    def columns(cls) -> list:
        return [getattr(Job, name) for name in cls.__dataclass_fields__]

    @classmethod
    def of(cls, job: Job) -> "JobSnapshot":
        return cls(**{name: getattr(job, name) for name in cls.__dataclass_fields__})


# the fair share: a client's jobs claimed within this many seconds count against its next ones
FAIR_SHARE_WINDOW = 30.0


def companion_candidates(primary: JobSnapshot, budget: int, *, in_transaction: bool = False) -> list[JobSnapshot]:
    """Queued jobs of the primary's model version whose message was sent, in fair-share order, whose images fit
    in ``budget`` together (greedy; a job too big for what is left is skipped). An ``isolated`` job (its worker
    died while it was batched, :mod:`app.services.reconcile`) is never a companion: it runs alone; nor is a job
    with an ``operation`` (an interpolation decodes codes of its own, not seeded samples).

    Fair share across clients (``client_key``: the token, else the address): a queued job's place is its
    position among its own client's queued jobs (1 for the oldest) plus the jobs that client had claimed in the
    last FAIR_SHARE_WINDOW seconds (running or done; the primary, claimed in this transaction, included); ties
    go oldest first. So a client flooding the queue takes turns with the others instead of filling every
    micro-batch ahead of them, and one client alone gets first in, first out as before.

    The caller claims them next, in the same transaction. The order is read first (a window function, which
    PostgreSQL does not allow with FOR UPDATE), then those rows are locked ``FOR UPDATE SKIP LOCKED`` and read
    again (still queued): rows another worker is claiming are skipped, never waited for (two workers claiming
    each other's jobs would otherwise deadlock). SQLite has one writer at a time: there the read transaction is
    ended first (unless ``in_transaction``: the caller's transaction, which has written already), so the
    claims never upgrade a stale read snapshot."""
    if budget < 1:
        return []
    client = func.coalesce(Job.client_key, "")
    recent = (select(client.label("client"), func.count().label("claimed"))
              .where(Job.started_at >= utcnow() - timedelta(seconds=FAIR_SHARE_WINDOW))
              .group_by(client).subquery())
    queued = (select(Job.id, Job.enqueued_at, Job.created_at, client.label("client"),
                     func.row_number().over(partition_by=client, order_by=(Job.enqueued_at, Job.created_at))
                     .label("position"))
              .where(Job.status == JobStatus.QUEUED, Job.model_version_id == primary.model_version_id,
                     Job.id != primary.id, Job.enqueued_at.is_not(None), Job.isolated.is_(False),
                     Job.operation.is_(None))
              .subquery())
    order = list(db.session.scalars(
        select(queued.c.id).select_from(queued.outerjoin(recent, recent.c.client == queued.c.client))
        .order_by(queued.c.position + func.coalesce(recent.c.claimed, 0), queued.c.enqueued_at,
                  queued.c.created_at).limit(2 * budget)))  # slack for rows another worker holds
    rows = {row.id: row for row in db.session.execute(
        select(*JobSnapshot.columns()).where(Job.id.in_(order), Job.status == JobStatus.QUEUED)
        .with_for_update(skip_locked=True))} if order else {}  # FOR UPDATE is left out on SQLite
    if not in_transaction and db.engine.dialect.name == "sqlite":
        db.session.commit()  # end the read transaction before the claims
    chosen: list[JobSnapshot] = []
    for job_id in order:
        row = rows.get(job_id)
        if row is not None and row.n <= budget:
            chosen.append(JobSnapshot(*row))
            budget -= row.n
    return chosen
