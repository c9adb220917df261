"""Files of the service that only their owner may read: the instance folder (0700) and the SQLite databases
(0600: the password and token hashes), whatever the umask made of them. SQLite creates a database with the
umask's mode (0644 by default), so its file is tightened on every new connection (a stat, and a chmod the
first time), beside its -wal and -shm files."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def private_folder(path: str) -> None:
    """Create ``path`` (0700), or take group and other access away from an existing one of this user."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.stat(path)
    if info.st_uid == os.getuid() and info.st_mode & 0o077:
        os.chmod(path, 0o700)


def private_file(path: str | None) -> None:
    """Take group and other access away from ``path`` and its SQLite companions, where they exist and are
    this user's; a read-only file system or another owner's file is left to the operator (logged)."""
    if not path or path.startswith(":memory:"):
        return
    for each in (path, f"{path}-wal", f"{path}-shm"):
        try:
            info = os.stat(each)
            if info.st_uid == os.getuid() and info.st_mode & 0o077:
                os.chmod(each, 0o600)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("could not make %s private: %s", each, exc)


def sqlite_connect_listener(path: str | None):
    """A SQLAlchemy ``connect`` listener that keeps the database file at ``path`` private."""
    def _private(_dbapi_connection: object, _record: object) -> None:
        private_file(path)
    return _private
