"""What a failed job's error says: the stage it failed in (loading the model, building the condition,
generating, storing) and the exception, readable on the job page."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from celery.exceptions import SoftTimeLimitExceeded

from workers.lease import JobAborted

_STAGE = "_priorforge_stage"  # the attribute an exception carries its stage in


def readable(exc: BaseException) -> str:
    """``stage: ExceptionType: message`` (the stage when one was tagged)."""
    message = str(exc).strip() or type(exc).__name__
    where = getattr(exc, _STAGE, None)
    return f"{where}: {type(exc).__name__}: {message}" if where else f"{type(exc).__name__}: {message}"


@contextmanager
def failing_stage(stage: str) -> Iterator[None]:
    """An exception raised in the block is tagged with ``stage`` (the innermost stage wins); a cancel or a
    time limit is not a failure of the stage and passes untagged."""
    try:
        yield
    except (JobAborted, SoftTimeLimitExceeded):
        raise
    except BaseException as exc:
        if getattr(exc, _STAGE, None) is None:
            try:
                setattr(exc, _STAGE, stage)
            except AttributeError:  # an exception type that refuses new attributes
                pass
        raise
