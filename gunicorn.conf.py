"""gunicorn's settings for the web process (gunicorn reads ``./gunicorn.conf.py`` from the folder it starts in:
the Procfile, ``priorforge serve`` and the benchmarks run from the repository root). Command-line flags win.

Deploying new code without dropping a request (docs/service.md, "Zero-downtime restarts"): ``kill -HUP
<master pid>``. The master keeps the listening socket, starts new workers (which import the new code) and
stops the old ones gracefully: they stop accepting, answer what they hold, and exit. A connection made
meanwhile waits in the socket's backlog for a new worker; none is refused.
"""

import os

# threads, not processes, serve a web process's requests (the Procfile and `priorforge serve` alike): a ?wait=
# request sleeps in its thread without holding a database connection; JOB_WAIT_MAX_CONCURRENT (24) of a
# process's threads may wait at once, the rest stay for other requests
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "32"))
# an old worker finishes its requests before it exits, also a ?wait= request (JOB_WAIT_MAX_SECONDS, 60 s)
graceful_timeout = 75
# gunicorn >= 25 opens a control socket at one fixed path per user ($XDG_RUNTIME_DIR or ~/.gunicorn), so two
# instances on one machine took each other's; nothing here uses it (deploys use signals): off
control_socket_disable = True


def _errors_with_security_headers() -> None:
    """Errors that gunicorn answers itself (a malformed request line, a header too large) never reach the app,
    so the app's hook that adds the security headers (app/core/headers.py) does not run for them: gunicorn's
    error writer is replaced by one that sends the same headers, with the message escaped as before."""
    import html
    import sys
    from pathlib import Path

    from gunicorn import util

    here = globals().get("__file__")  # gunicorn loads this file as a module; a plain exec() has no __file__
    root = str(Path(here).resolve().parent) if here else str(Path.cwd())
    if root not in sys.path:
        sys.path.insert(0, root)
    from app.core.headers import HEADERS

    def write_error(sock, status_int, reason, mesg):  # gunicorn.util.write_error's signature
        body = (f"<!doctype html><html><head><title>{html.escape(reason)}</title></head><body>"
                f"<h1>{html.escape(reason)}</h1><p>{html.escape(mesg)}</p></body></html>").encode()
        head = [f"HTTP/1.1 {status_int} {reason}", "Connection: close", "Content-Type: text/html; charset=utf-8",
                f"Content-Length: {len(body)}", *(f"{name}: {value}" for name, value in HEADERS.items())]
        util.write_nonblock(sock, ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    util.write_error = write_error


_errors_with_security_headers()


# Slow headers (Slowloris): a gthread worker reads a request's headers in one of its threads, blocking, and a
# client sending one header line every few seconds held that thread for as long as it liked (20 such
# connections made /api/v1/health time out). A request's headers must now arrive within this many seconds
# in all, or the connection is closed; a body is not affected. Real clients send their headers in one packet.
HEADER_TIMEOUT = 5.0


def _bounded_header_reads(seconds: float) -> None:
    """Give each request's header parsing (gunicorn's ``Request.__init__``) a deadline that the socket reads
    under it honour (``SocketUnreader.chunk``); past it the connection ends as a client that went away."""
    import socket
    import time

    from gunicorn.http import errors, message, unreader

    original_init, original_chunk = message.Request.__init__, unreader.SocketUnreader.chunk

    def init(self, cfg, source, *args, **kwargs):
        bounded = isinstance(source, unreader.SocketUnreader)
        if bounded:
            source.header_deadline = time.monotonic() + seconds
        try:
            original_init(self, cfg, source, *args, **kwargs)
        finally:
            if bounded:
                source.header_deadline = None

    def chunk(self, size_hint=None):
        deadline = getattr(self, "header_deadline", None)
        if deadline is None:
            return original_chunk(self, size_hint)
        left = deadline - time.monotonic()
        if left <= 0:
            raise errors.NoMoreData()
        previous = self.sock.gettimeout()
        self.sock.settimeout(left)
        try:
            return original_chunk(self, size_hint)
        except socket.timeout:
            raise errors.NoMoreData() from None
        finally:
            self.sock.settimeout(previous)

    message.Request.__init__ = init
    unreader.SocketUnreader.chunk = chunk


_bounded_header_reads(HEADER_TIMEOUT)
