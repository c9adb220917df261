"""Machine-local wake-ups between the service's processes, for the set-up without Redis.

With Redis, a new broker message reaches an idle worker at once and a job's end reaches the requests waiting on
it at once (pub/sub). With the embedded broker (a table) and no Redis, both were found by polling: the worker
read the broker table every ``BROKER_POLLING_INTERVAL`` and the web process the awaited jobs every
``JOB_WAIT_POLL_INTERVAL``, which cost a lone job half of each interval on average (docs/benchmarks.md).

A :class:`Doorbell` is a folder of Unix datagram sockets, one per listening process. Ringing sends a small
datagram to each socket of the folder, without blocking; a listener's poll loop waits on its socket instead of
sleeping, so it looks again as soon as something changed. The folder is derived from what the processes share
(the database or broker URL), under the temporary folder and private to this user, so a test's instance never
wakes another's.

A ring is only a hint: the polls stay, at their intervals, as the fallback. A ring that is lost (a listener's
socket buffer is full, a process on another machine, no Unix sockets on this platform) costs at most one
interval of latency, never a wrong answer. Python's standard ``socket`` module does all of it; no library
offers a cross-process wake-up that needs no server.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import select
import socket
import stat
import tempfile
import threading
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".sock"
# the largest datagram a listener reads (callers keep each payload under it; Linux allows about 200 KB)
MAX_DATAGRAM = 8192


def supported() -> bool:
    return hasattr(socket, "AF_UNIX")


def folder_for(purpose: str, shared_key: str) -> Path:
    """The folder of the listeners of ``purpose`` among the processes that share ``shared_key`` (a URL)."""
    digest = hashlib.sha256(shared_key.encode()).hexdigest()[:16]
    # short on purpose: a Unix socket's path is limited to about 100 bytes
    return Path(tempfile.gettempdir()) / f"priorforge-{digest}" / purpose


def _ours(info: os.stat_result) -> bool:
    """A real folder of this user in which nobody else may add or replace sockets."""
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022


def _private_folder(folder: Path) -> bool:
    """Create ``folder`` (and its parent) for this user only; False when an existing one is not ours."""
    try:
        for path in (folder.parent, folder):
            path.mkdir(mode=0o700, exist_ok=True)
            if not _ours(path.lstat()):
                log.warning("doorbell: %s is not a private folder of this user; polling only", path)
                return False
    except OSError as exc:
        log.warning("doorbell: cannot use %s (%s); polling only", folder, exc)
        return False
    return True


class Listener:
    """One process's socket in a doorbell folder. :meth:`wait` returns what was rung since the last call."""

    def __init__(self, path: Path):
        self.path = path
        self.pid = os.getpid()
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setblocking(False)
        self._socket.bind(str(path))
        atexit.register(self.close)  # daemon threads' listeners too; a killed process's file is removed by rings

    def drain(self) -> list[bytes]:
        """Every datagram waiting on the socket (the oldest first), without blocking."""
        received = []
        while True:
            try:
                received.append(self._socket.recv(MAX_DATAGRAM))
            except (BlockingIOError, InterruptedError):
                return received

    def wait(self, timeout: float | None) -> list[bytes]:
        """Sleep until a ring arrives or ``timeout`` seconds pass; the datagrams received (maybe none)."""
        ready, _, _ = select.select([self._socket], [], [], timeout)
        return self.drain() if ready else []

    def ring_self(self) -> None:
        """Wake this listener's own :meth:`wait` (from another thread of the process)."""
        _send(self.path, b"")

    def close(self) -> None:
        atexit.unregister(self.close)
        self._socket.close()
        if self.pid == os.getpid():  # a forked child must not remove its parent's socket
            try:
                self.path.unlink()
                # the last listener out removes the folders (not empty: another listener is there, keep them)
                self.path.parent.rmdir()
                self.path.parent.parent.rmdir()
            except OSError:
                pass

    def fileno(self) -> int:
        return self._socket.fileno()


_senders: dict[int, socket.socket] = {}
_senders_lock = threading.Lock()


@atexit.register
def _close_senders() -> None:
    with _senders_lock:
        sender = _senders.pop(os.getpid(), None)
    if sender is not None:
        sender.close()


def _sender() -> socket.socket:
    """One unbound, non-blocking datagram socket per process (a forked child makes its own)."""
    pid = os.getpid()
    with _senders_lock:
        sender = _senders.get(pid)
        if sender is None:
            sender = _senders[pid] = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sender.setblocking(False)
        return sender


def _send(path: Path, payload: bytes) -> bool:
    """Send one datagram; False when nobody listens there any more (the socket file is stale)."""
    try:
        _sender().sendto(payload, str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except (BlockingIOError, InterruptedError):  # its queue is full: it has wake-ups pending already
        pass
    except OSError as exc:  # anything else: the fallback poll covers it
        log.debug("doorbell: could not ring %s (%s)", path, exc)
    return True


class Doorbell:
    """The listeners of one folder. Every method is a no-op (and :meth:`listen` gives None) when the platform
    has no Unix sockets or the folder cannot be used: callers then rely on their polls alone.

    Args:
        folder: the listeners' folder (:func:`folder_for`); None disables the doorbell.
    """

    def __init__(self, folder: Path | None):
        self.folder = folder if folder is not None and supported() else None

    @classmethod
    def for_key(cls, purpose: str, shared_key: str, enabled: bool = True) -> "Doorbell":
        return cls(folder_for(purpose, shared_key) if enabled else None)

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def listen(self) -> Listener | None:
        """A new socket in the folder for this process (close it when done), or None when disabled."""
        if self.folder is None:
            return None
        for _ in range(2):  # the folder may vanish in between, when the last other listener closes
            if not _private_folder(self.folder):
                return None
            try:
                listener = Listener(self.folder / f"{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}")
                # removes the sockets of killed processes (the other listeners look once, for nothing)
                self.ring(skip=listener.path)
                return listener
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("doorbell: cannot listen in %s (%s); polling only", self.folder, exc)
                return None
        return None

    def ring(self, payloads: list[bytes] | None = None, skip: Path | None = None) -> None:
        """Send each payload (one datagram each, at most MAX_DATAGRAM bytes; default: one empty datagram) to
        every listener but ``skip``. Never blocks, nor raises for a delivery problem; removes the sockets of
        processes that are gone."""
        if self.folder is None:
            return
        pieces = payloads or [b""]
        if any(len(piece) > MAX_DATAGRAM for piece in pieces):
            raise ValueError(f"a doorbell datagram holds at most {MAX_DATAGRAM} bytes")
        try:
            if not _ours(self.folder.lstat()):
                return  # nobody of ours listens there
            entries = [entry.path for entry in os.scandir(self.folder)
                       if entry.name.endswith(SUFFIX) and entry.path != str(skip)]
        except OSError:  # no folder: nobody listens yet
            return
        for path in entries:
            for piece in pieces:
                if not _send(Path(path), piece):
                    try:
                        os.unlink(path)  # its process died without closing it
                    except OSError:
                        pass
                    break


def sweep(shared_key: str) -> None:
    """Remove the sockets of dead processes from every doorbell folder of ``shared_key`` and the folders left
    empty: for whoever owns a temporary instance (tests, benchmarks) once its processes are stopped, because
    a process killed without closing its socket leaves the file behind and nobody rings that folder again."""
    if not supported():
        return
    parent = folder_for("any", shared_key).parent
    try:
        folders = [Path(entry.path) for entry in os.scandir(parent) if entry.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for folder in folders:
        Doorbell(folder).ring()
        for path in (folder, parent):
            try:
                path.rmdir()
            except OSError:  # a live listener is still there
                break
