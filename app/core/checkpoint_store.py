"""Folders in the object store. Checkpoints: published once at registration, fetched by each worker
into a local cache on first use, and verified by content hash before they are loaded. Training runs and
uploaded data sets: mirrored (:class:`FolderMirror`, :func:`download_folder`), so a trainer on another machine
reads an upload and the web reads a run's grids and history.

A model version registered while the store is remote gets its files copied under ``checkpoints/<random id>/``
(``checkpoint_key``) with the SHA-256 of each (``checkpoint_files``); every version records the SHA-256 of its
weights (``weights_sha256``). A worker on any machine loads from :func:`checkpoint_folder`: a fetched file
whose hash differs, or a cached/local weights file that changed since registration, is an error, never a
silently different model. Training state (``training_state.*``) is for resuming a run and is not published.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from app.core.storage import Storage
from priorforge_spec.checkpoint import STATE_JSON_FILE, STATE_TENSORS_FILE, WEIGHTS_FILE

UNPUBLISHED = {STATE_JSON_FILE, STATE_TENSORS_FILE}


class ChecksumMismatch(RuntimeError):
    """A checkpoint file's content is not what its model version recorded."""


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def published_files(folder: Path) -> list[str]:
    """The checkpoint's files to publish, relative to ``folder`` (no training state, no hidden files)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.name not in UNPUBLISHED and not any(part.startswith(".") for part in
                                                                          p.relative_to(folder).parts))


def upload_checkpoint(storage: Storage, folder: str | Path) -> tuple[str, dict[str, str]]:
    """Copy the checkpoint folder into the store; returns (its key prefix, {file: SHA-256}).

    The prefix is new each time (no id is needed before the row exists, and a re-registration never overwrites
    what a worker may be fetching); an upload whose registration then fails leaves an orphan folder, no row."""
    key = f"checkpoints/{uuid.uuid4().hex}"
    return key, upload_folder(storage, folder, key)


def upload_folder(storage: Storage, folder: str | Path, prefix: str) -> dict[str, str]:
    """The folder's files (:func:`published_files`) under ``prefix``; returns {file: SHA-256}."""
    folder = Path(folder)
    files = {}
    for rel in published_files(folder):
        files[rel] = sha256_of(folder / rel)
        storage.put_file(f"{prefix}/{rel}", folder / rel)
    return files


def download_folder(storage: Storage, prefix: str, dest: str | Path) -> int:
    """Every object under ``prefix`` into ``dest`` (through a temporary folder renamed when complete); returns
    how many files (0: nothing there, and ``dest`` is not created)."""
    keys = storage.list(prefix)
    if not keys:
        return 0
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for key in keys:
            target = tmp / key[len(prefix.strip("/")) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            storage.get_file(key, target)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return len(keys)


class FolderMirror:
    """Copies a local folder's new and changed files (by size and mtime) to ``prefix`` in the store: a training
    run's grids, history and checkpoint, after each sample grid and at the end."""

    def __init__(self, storage: Storage, folder: str | Path, prefix: str):
        self.storage, self.folder, self.prefix = storage, Path(folder), prefix.strip("/")
        self._seen: dict[str, tuple[int, int]] = {}

    def sync(self) -> int:
        sent = 0
        if not self.folder.is_dir():
            return 0
        for path in sorted(self.folder.rglob("*")):
            rel = path.relative_to(self.folder).as_posix()
            if not path.is_file() or any(part.startswith(".") for part in rel.split("/")):
                continue
            stat = path.stat()
            if self._seen.get(rel) != (stat.st_size, stat.st_mtime_ns):
                self.storage.put_file(f"{self.prefix}/{rel}", path)
                self._seen[rel] = (stat.st_size, stat.st_mtime_ns)
                sent += 1
        return sent


def fetch_checkpoint(storage: Storage, key: str, files: dict[str, str], cache_dir: str | Path) -> Path:
    """The checkpoint under ``key`` as a local folder of the cache, downloaded on first use and verified file by
    file (into a temporary folder renamed when complete, so a crash never leaves half a checkpoint)."""
    cache = Path(cache_dir)
    dest = cache / key.replace("/", "-")
    if dest.is_dir():
        return dest
    tmp = cache / f".{dest.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for rel, digest in files.items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                storage.get_file(f"{key}/{rel}", target)
            except KeyError:
                raise ChecksumMismatch(f"{rel} of checkpoint {key} is missing from the store") from None
            found = sha256_of(target)
            if found != digest:
                raise ChecksumMismatch(f"{rel} of checkpoint {key} has SHA-256 {found} in the store, but the model "
                                       f"version recorded {digest}: refusing to load it")
        try:
            os.replace(tmp, dest)
        except OSError:  # another process of this machine finished first: theirs is the same, verified
            if not dest.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def checkpoint_folder(version: Any, storage: Storage, cache_dir: str | Path) -> Path:
    """The local folder to load a model version from (``version`` has ``checkpoint_path``, ``checkpoint_key``,
    ``checkpoint_files``, ``weights_sha256``), fetched from the store if it lives there; its weights checked
    against ``weights_sha256`` when the version has one (versions registered before checkpoints moved to the store have none)."""
    if version.checkpoint_key:
        folder = fetch_checkpoint(storage, version.checkpoint_key, version.checkpoint_files or {}, cache_dir)
    else:
        folder = Path(version.checkpoint_path)
    weights = folder / WEIGHTS_FILE
    if version.weights_sha256 and weights.is_file():
        found = sha256_of(weights)
        if found != version.weights_sha256:
            raise ChecksumMismatch(f"{weights} has SHA-256 {found}, but model {version.name!r} version "
                                   f"{version.version} was registered with {version.weights_sha256}: the file changed "
                                   f"since; refusing to load it (register it again as a new version)")
    return folder
