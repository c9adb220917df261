"""gunicorn in front of the app, as the Procfile starts it: the errors it answers itself, before the app sees
the request (a malformed request line, a header line too large), carry the same security headers as the app's
answers; and clients sending their headers slowly (Slowloris) cannot hold every web thread
(docs/security.md)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.service.conftest import REPO, WorkerProcess, free_port, sqlite_app_for_worker, wait_for
from tests.web.test_browser import WebServer

pytestmark = pytest.mark.integration


def raw_request(port: int, data: bytes) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("latin-1")


def test_gunicorns_own_errors_carry_the_security_headers(tmp_path, checkpoints):
    from app.core.headers import HEADERS

    app, config = sqlite_app_for_worker(tmp_path, checkpoints)
    server = WebServer(config, tmp_path / "gunicorn.log").start()
    try:
        for request, status in [(b"NOT AN HTTP REQUEST LINE\r\n\r\n", "400"),
                                (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", "431"),
                                (b"GET /<script>alert(1)</script> HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", "400")]:
            answer = raw_request(server.port, request)
            head, _, body = answer.partition("\r\n\r\n")
            assert head.split()[1] == status, answer[:300]
            for name, value in HEADERS.items():
                assert f"\r\n{name}: {value}" in head, (name, head)
            assert "<script>" not in body
        ok = raw_request(server.port, b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert ok.startswith("HTTP/1.1 200") and "Content-Security-Policy" in ok
    finally:
        server.stop()


def slow_client(port: int, stop: threading.Event, every: float) -> None:
    """A Slowloris connection: a request line, then one header line every ``every`` seconds, never the end;
    connects again when the server closes it."""
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
                while not stop.wait(every):
                    sock.sendall(b"X-Slow: 1\r\n")
        except OSError:
            stop.wait(0.05)


def test_slow_header_senders_do_not_hold_every_web_thread(tmp_path, checkpoints):
    """34 connections sending a header line each second, more than the default 2 workers x 16 threads (the
    figures of docs/security.md come from 40, where the health check's median answer took 0.01-0.02 s and the
    slowest 3-8 s; with 40 and the other test process busy beside it, one call passed 30 s): the health check
    keeps answering. Without the header deadline (gunicorn.conf.py's HEADER_TIMEOUT, 5 s) every thread that took such a
    connection was held for as long as it lasted and the requests queued behind them waited as long: no
    answer within 60 s."""
    import urllib.request

    app, config = sqlite_app_for_worker(tmp_path, checkpoints)
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "--bind",
                             f"127.0.0.1:{port}", "--workers", "2", "--worker-class", "gthread", "--threads", "16",
                             "app.wsgi:app"], cwd=REPO, env=WorkerProcess(config, tmp_path / "w.log").env(),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    stop = threading.Event()
    attackers = [threading.Thread(target=slow_client, args=(port, stop, 1.0), daemon=True) for _ in range(34)]

    def health() -> float:
        t0 = time.monotonic()
        # 60 s: most calls answer at once, but one in eight waited up to 30 s here (a thread pool queue behind
        # the slow connections); without the deadline none answered at all
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=60) as response:
            assert response.status == 200
        return time.monotonic() - t0

    try:
        wait_for(lambda: _answers(health), 120, "gunicorn to answer", interval=0.5)
        for thread in attackers:
            thread.start()
        time.sleep(2)  # every slow connection is in, holding a thread
        latencies = [health() for _ in range(8)]
        print(f"health under 34 slow-header connections: {[round(x, 2) for x in latencies]} s")
        # every request answered (health() fails after 60 s; before the header deadline none answered at all);
        # how fast is the benchmark's business, not a test's (a loaded machine doubles it)
        assert len(latencies) == 8
    finally:
        stop.set()
        proc.terminate()
        proc.wait(30)
        log.close()


def _answers(check) -> bool:
    try:
        check()
        return True
    except OSError:
        return False


def test_a_request_whose_headers_never_end_is_closed_after_the_deadline(tmp_path, checkpoints):
    app, config = sqlite_app_for_worker(tmp_path, checkpoints)
    server = WebServer(config, tmp_path / "gunicorn.log").start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
            t0 = time.monotonic()
            closed = None
            while closed is None and time.monotonic() - t0 < 20:
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                    sock.settimeout(1.0)
                    if sock.recv(100) == b"":
                        closed = time.monotonic() - t0
                except socket.timeout:
                    continue
                except OSError:
                    closed = time.monotonic() - t0
        assert closed is not None and 4.0 <= closed <= 9.0, closed  # HEADER_TIMEOUT is 5 s
    finally:
        server.stop()
