"""workers.image_writer.ImageWriter: a job's encoding and writing, on shared threads or inline."""

from __future__ import annotations

import threading

import pytest

from workers.image_writer import ImageWriter


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_results_and_exceptions_come_back_per_job(threads):
    writer = ImageWriter(threads)
    ran_on: dict[str, int] = {}

    def work(job_id: str, fail: bool = False):
        def run():
            ran_on[job_id] = threading.get_ident()
            if fail:
                raise OSError(f"{job_id}: no space left")
            return [f"{job_id}/0.png"]
        return run

    writer.submit("a", work("a"))
    writer.submit("b", work("b", fail=True))
    writer.wait_all()
    assert writer.submitted("a") and writer.submitted("b") and not writer.submitted("c")
    assert writer.result("a") == ["a/0.png"]
    with pytest.raises(OSError, match="b: no space left"):
        writer.result("b")
    writer.wait("c")  # nothing submitted: returns at once
    caller = threading.get_ident()
    assert (ran_on["a"] == caller) == (threads == 0)  # inline only at 0


def test_inline_work_runs_in_the_callers_thread_even_with_threads():
    writer = ImageWriter(2)
    writer.submit("last", lambda: threading.get_ident(), inline=True)
    writer.submit("earlier", lambda: threading.get_ident())
    writer.wait_all()
    assert writer.result("last") == threading.get_ident() != writer.result("earlier")


def test_wait_all_waits_for_running_work():
    writer = ImageWriter(2)
    release, started, finished = threading.Event(), threading.Event(), []

    def slow():
        started.set()
        release.wait(10)
        finished.append(True)

    writer.submit("slow", slow)
    started.wait(10)
    threading.Timer(0.2, release.set).start()
    writer.wait_all()
    assert finished == [True]


def test_negative_threads_are_refused():
    with pytest.raises(ValueError, match="PNG_THREADS"):
        ImageWriter(-1)


@pytest.mark.parametrize("bad", [-1, "2", 1.5, True])
def test_the_app_refuses_a_bad_png_threads_naming_it(tmp_path, bad):
    from app import create_app
    from tests.service.conftest import base_config

    with pytest.raises(ValueError, match="PNG_THREADS"):
        create_app(base_config(tmp_path, PNG_THREADS=bad))
