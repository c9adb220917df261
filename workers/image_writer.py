"""Encoding and writing a task's images off the decoder's path.

The generation task hands each job to an :class:`ImageWriter` as soon as the job's last row is decoded
(:func:`workers.batching.decode_jobs`, ``on_ready``); with ``PNG_THREADS`` > 0 the PNG encoding and the file
writes run on that many threads of the pool process while the next pass decodes. The jobs of the task's last
pass are stored by the task's own thread: no decode is left to overlap with, and a hand-off to a thread would
only add latency (a lone job never touches the threads). Both sides spend most of
their time outside the GIL (PyTorch's kernels, zlib in Pillow's encoder, file I/O), so a worker process of one
pool slot can keep a second core busy. ``PNG_THREADS`` = 0 runs the same work inline, in the task's thread.

The executor is per process (created lazily, after the prefork pool has forked) and shared by the tasks that
process runs one after another; a task waits for all of its own writes before it commits or cleans up, so no
write outlives its task.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Callable, TypeVar

T = TypeVar("T")

_executors: dict[tuple[int, int], ThreadPoolExecutor] = {}
_executors_lock = threading.Lock()


def _executor(threads: int) -> ThreadPoolExecutor:
    key = (os.getpid(), threads)  # a forked child never reuses its parent's (threadless) executor
    with _executors_lock:
        found = _executors.get(key)
        if found is None:
            found = _executors[key] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="png-writer")
        return found


class ImageWriter:
    """Runs one piece of work per job (``submit``), on ``threads`` shared threads or inline (0); ``result``
    gives a job's outcome (its exception re-raised), ``wait_all`` waits for every piece, whatever happened."""

    def __init__(self, threads: int):
        if threads < 0:
            raise ValueError(f"PNG_THREADS must be 0 or more, got {threads}")
        self.threads = threads
        self._futures: dict[str, Future] = {}

    def submit(self, job_id: str, work: Callable[[], T], *, inline: bool = False) -> None:
        """Run ``work`` for the job: on a thread, or here and now with ``inline`` (or 0 threads)."""
        if inline or self.threads == 0:
            future: Future = Future()
            try:
                future.set_result(work())
            except BaseException as exc:  # kept for result(), as a thread's exception would be
                future.set_exception(exc)
        else:
            future = _executor(self.threads).submit(work)
        self._futures[job_id] = future

    def submitted(self, job_id: str) -> bool:
        return job_id in self._futures

    def result(self, job_id: str):
        """The job's work's return value, once done; its exception if it raised."""
        return self._futures[job_id].result()

    def wait(self, job_id: str) -> None:
        """Until the job's work (if any) has ended, successful or not."""
        future = self._futures.get(job_id)
        if future is not None:
            wait([future])

    def wait_all(self) -> None:
        wait(list(self._futures.values()))
