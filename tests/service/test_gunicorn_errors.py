"""Errors that gunicorn answers itself, before the app sees the request (a malformed request line, a header
line too large), carry the same security headers as the app's answers (docs/security.md, "Headers")."""

from __future__ import annotations

import socket

import pytest

from tests.service.conftest import sqlite_app_for_worker
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
