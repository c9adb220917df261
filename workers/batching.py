"""Micro-batching for the generation task: several jobs of one model version decoded together.

Each job draws its latents exactly as it does alone (image *i* from a CPU generator seeded ``seed + i``), the
codes of all jobs are concatenated and decoded in passes of a fixed size
(:func:`generation.sampling.decode_fixed_passes`), and the images are split back per job. A fixed pass size
is what makes a job's pixels independent of the jobs it is batched with: CPU kernels choose their blocking
by batch size, so a pass of 1 row and a pass of 64 rows can round one pixel differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from sqlalchemy import select
from torch import Tensor

from app.extensions import db
from app.models import Job
from generation.base import Condition, GenerativeModel
from generation.sampling import decode_fixed_passes, decode_group_key


@dataclass(frozen=True)
class JobRequest:
    """What one job asks the model for: ``n`` images, image *i* seeded ``seed + i``."""

    condition: Condition
    n: int
    seed: int


def job_latents(model: GenerativeModel, request: JobRequest) -> Tensor:
    """The job's codes ``(n, latent_dim)``, one generator per image, as a job run alone draws them."""
    return torch.cat([model.sample_latents(1, request.condition, torch.Generator().manual_seed(request.seed + i))
                      for i in range(request.n)])


@torch.inference_mode()
def decode_jobs(model: GenerativeModel, requests: list[JobRequest], pass_size: int,
                after_pass: Callable[[], None] | None = None) -> list[Tensor]:
    """Images ``(n, C, H, W)`` in [-1, 1] per request, the codes of all requests decoded together.

    Requests whose decoder needs the condition (``decode_group_key`` not None) are decoded with the other
    requests of the same condition only. ``after_pass`` runs between groups (lease checks, progress).
    """
    model.eval()
    latents = [job_latents(model, request) for request in requests]
    groups: dict[object, list[int]] = {}
    for i, request in enumerate(requests):
        groups.setdefault(decode_group_key(model, request.condition), []).append(i)
    out: list[Tensor | None] = [None] * len(requests)
    for key, members in groups.items():
        condition = None if key is None else requests[members[0]].condition
        images = decode_fixed_passes(model, torch.cat([latents[i] for i in members]), condition,
                                     max(1, pass_size))  # (sum n, C, H, W)
        for i, part in zip(members, images.split([requests[i].n for i in members])):
            out[i] = part
        if after_pass is not None:
            after_pass()
    assert all(images is not None for images in out)
    return out  # type: ignore[return-value]


def companion_candidates(primary: Job, budget: int) -> list[tuple[str, int]]:
    """(id, n) of queued jobs of the primary's model version whose message was sent, oldest first, whose
    images fit in ``budget`` together (greedy, FIFO order; a job too big for what is left is skipped)."""
    if budget < 1:
        return []
    rows = db.session.execute(
        select(Job.id, Job.n).where(Job.status == "queued", Job.model_version_id == primary.model_version_id,
                                    Job.id != primary.id, Job.enqueued_at.is_not(None))
        .order_by(Job.enqueued_at, Job.created_at).limit(budget)).all()
    db.session.commit()  # end the read transaction before the claims
    chosen: list[tuple[str, int]] = []
    for job_id, n in rows:
        if n <= budget:
            chosen.append((job_id, n))
            budget -= n
    return chosen
