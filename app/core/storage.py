"""Image storage behind one small interface; the local folder is the default backend.

Keys are relative, slash-separated paths derived from the job id and image index
(``jobs/<job id>/<index>.png``), so a retried job overwrites the same objects. An object store (S3...) is
a new :class:`Storage` subclass and an entry in :data:`BACKENDS`; nothing else changes.
"""

from __future__ import annotations

import os
import re
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterable

_KEY = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


def image_key(job_id: str, index: int) -> str:
    return f"jobs/{job_id}/{index:03d}.png"


class StorageError(RuntimeError):
    pass


class Storage(ABC):
    """put/get/delete/exists by key; ``url`` is a URL a client may fetch directly, or None when the
    bytes must be served through the API (``local_path`` gives a file to send, when there is one)."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        """``put`` each (key, data); a backend may do it faster than one by one."""
        for key, data in items:
            self.put(key, data)

    def url(self, key: str) -> str | None:
        return None

    def local_path(self, key: str) -> Path | None:
        return None

    @staticmethod
    def check_key(key: str) -> str:
        if not _KEY.match(key) or any(part in (".", "..") for part in key.split("/")):
            raise StorageError(f"invalid storage key {key!r}")
        return key


class LocalStorage(Storage):
    """Files under a root folder; writes go through a temporary file + rename (never half a PNG)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / self.check_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write(path, data)

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        folders: set[Path] = set()
        for key, data in items:  # the images of one job share a folder: create it once
            path = self._path(key)
            if path.parent not in folders:
                path.parent.mkdir(parents=True, exist_ok=True)
                folders.add(path.parent)
            self._write(path, data)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        # a temporary name of this process and thread (never shared by two writers at once), then a rename
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def local_path(self, key: str) -> Path | None:
        return self._path(key)


BACKENDS: dict[str, type[Storage]] = {"local": LocalStorage}


def storage_from_config(config: dict[str, Any]) -> Storage:
    backend = config.get("STORAGE_BACKEND", "local")
    if backend not in BACKENDS:
        raise ValueError(f"STORAGE_BACKEND {backend!r} unknown; valid: {', '.join(sorted(BACKENDS))}")
    if backend == "local":
        return LocalStorage(config["STORAGE_ROOT"])
    return BACKENDS[backend](**config.get("STORAGE_OPTIONS", {}))  # pragma: no cover - future backends
