"""Object storage behind one small interface: a local folder (the default) or an S3 bucket.

Keys are relative, slash-separated paths: ``jobs/<job id>/<index>.png`` for images (a retried job overwrites
the same objects), ``checkpoints/<id>/<file>`` for model versions registered while the store is remote
(:mod:`app.core.checkpoint_store`). ``STORAGE_URL`` picks the backend (:func:`storage_from_config`): unset,
a path or ``file://...`` is the local folder; ``s3://bucket/prefix`` any S3 API (AWS, MinIO, Ceph RGW).
A backend is a :class:`Storage` subclass and an entry in :data:`BACKENDS`.
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


class StorageUnavailable(StorageError):
    """The store cannot be reached or used right now (network, missing bucket, credentials): a job that meets
    this is put back in the queue, not failed (the store, not the job, is at fault)."""


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

    #: True when other machines read this store (S3): checkpoints and data sets must be copied into it
    remote = False

    def describe(self) -> str:
        return type(self).__name__

    def check(self) -> None:  # noqa: B027 - a store with nothing to check keeps this no-op
        """Raise :class:`StorageUnavailable` (with a message that says what to fix) unless the store is usable."""

    def chunks(self, key: str) -> Iterable[bytes]:
        """The object's bytes in pieces (streamed to a client); KeyError when it is missing."""
        return iter([self.get(key)])

    def put_file(self, key: str, path: Path) -> None:
        self.put(key, Path(path).read_bytes())

    def get_file(self, key: str, path: Path) -> None:
        """Copy the object to ``path`` (KeyError when it is missing)."""
        Path(path).write_bytes(self.get(key))

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (a folder: ``checkpoints/<id>/``), sorted."""

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

    def list(self, prefix: str) -> list[str]:
        folder = self.root / prefix.strip("/")
        if not folder.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in folder.rglob("*")
                      if p.is_file() and not p.name.startswith("."))

    def describe(self) -> str:
        return f"local folder {self.root}"

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"the storage folder {self.root} cannot be created: {exc}") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageUnavailable(f"the storage folder {self.root} is not writable")


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class S3Storage(Storage):
    """A bucket (and key prefix) of any S3 API, through boto3. Credentials and region come from boto3's usual
    chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, an instance role...);
    ``endpoint_url`` (``S3_ENDPOINT_URL``, or boto3's own ``AWS_ENDPOINT_URL``) points it at MinIO or Ceph.
    Timeouts are short and retries few: a store that is down must show up as an error, not a hung worker."""

    remote = True

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, region: str | None = None,
                 addressing_style: str = "auto", timeout: float = 5.0, presign_seconds: int = 3600):
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.presign_seconds = int(presign_seconds)
        config = Config(connect_timeout=timeout, read_timeout=max(timeout, 30.0), retries={"max_attempts": 3, "mode": "standard"},
                        s3={"addressing_style": addressing_style}, max_pool_connections=32)
        self.client = boto3.session.Session().client("s3", endpoint_url=endpoint_url or None, region_name=region or None,
                                                     config=config)

    def _key(self, key: str) -> str:
        key = self.check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def describe(self) -> str:
        where = f" at {self.client.meta.endpoint_url}"
        return f"s3://{self.bucket}/{self.prefix}{where}"

    def _call(self, what: str, key: str | None, fn, **kwargs: Any) -> Any:
        """Run a boto3 call; a missing object is KeyError, anything about the store a StorageUnavailable."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound") and key is not None:
                raise KeyError(key) from None
            if code in ("NoSuchBucket", "404", "NotFound"):
                raise StorageUnavailable(f"bucket {self.bucket!r} does not exist at {self.client.meta.endpoint_url} "
                                         f"(create it, or fix STORAGE_URL)") from None
            raise StorageUnavailable(f"{what} failed on {self.describe()}: {code}: "
                                     f"{exc.response.get('Error', {}).get('Message', exc)}") from None
        except BotoCoreError as exc:  # no connection, timeout, no credentials...
            raise StorageUnavailable(f"{what} failed: the store {self.describe()} is unreachable or refused the "
                                     f"request: {type(exc).__name__}: {exc}") from None

    def check(self) -> None:
        self._call("checking the bucket", None, self.client.head_bucket)

    def put(self, key: str, data: bytes) -> None:
        self._call("writing", None, self.client.put_object, Key=self._key(key), Body=data,
                   ContentType="image/png" if key.endswith(".png") else "application/octet-stream")

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        # one PUT is one round trip: a job's images go in parallel (boto3's client is thread-safe)
        from concurrent.futures import ThreadPoolExecutor

        items = list(items)
        if len(items) <= 1:
            return super().put_many(items)
        with ThreadPoolExecutor(min(8, len(items))) as pool:
            list(pool.map(lambda item: self.put(*item), items))

    def get(self, key: str) -> bytes:
        return self._call("reading", key, self.client.get_object, Key=self._key(key))["Body"].read()

    def chunks(self, key: str) -> Iterable[bytes]:
        body = self._call("reading", key, self.client.get_object, Key=self._key(key))["Body"]
        return body.iter_chunks(64 * 1024)

    def delete(self, key: str) -> None:
        self._call("deleting", key, self.client.delete_object, Key=self._key(key))

    def exists(self, key: str) -> bool:
        try:
            self._call("reading", key, self.client.head_object, Key=self._key(key))
            return True
        except KeyError:
            return False

    def put_file(self, key: str, path: Path) -> None:  # multipart for big checkpoints
        self._call("uploading", None, lambda Bucket, **kw: self.client.upload_file(str(path), Bucket, self._key(key)))

    def get_file(self, key: str, path: Path) -> None:
        self._call("downloading", key, lambda Bucket, **kw: self.client.download_file(Bucket, self._key(key), str(path)))

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix.strip("/")) + "/"
        keys: list[str] = []
        pages = self._call("listing", None, lambda Bucket: list(
            self.client.get_paginator("list_objects_v2").paginate(Bucket=Bucket, Prefix=full)))
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in pages:
            keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    def url(self, key: str) -> str | None:
        """A presigned GET (``IMAGE_DELIVERY=redirect``); signing is local, no request is made."""
        return self.client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": self._key(key)},
                                                  ExpiresIn=self.presign_seconds)


BACKENDS: dict[str, type[Storage]] = {"local": LocalStorage, "s3": S3Storage}


def storage_from_config(config: dict[str, Any]) -> Storage:
    """The store ``STORAGE_URL`` names (unset: the local ``STORAGE_ROOT``); a ValueError names a bad setting.
    Nothing is contacted here: :meth:`Storage.check` does that (at a worker's start and in the health check)."""
    from urllib.parse import urlsplit

    url = (config.get("STORAGE_URL") or "").strip()
    if not url:
        backend = config.get("STORAGE_BACKEND", "local")
        if backend != "local":
            raise ValueError(f"STORAGE_BACKEND {backend!r} unknown; set STORAGE_URL (a folder, or s3://bucket/prefix)")
        return LocalStorage(config["STORAGE_ROOT"])
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"STORAGE_URL {url!r}: a file URL names a local folder (file:///path)")
        return LocalStorage(parts.path)
    if parts.scheme != "s3":
        raise ValueError(f"STORAGE_URL {url!r}: unknown scheme {parts.scheme!r}; use a folder, file:///path or "
                         f"s3://bucket/prefix")
    if not _BUCKET.match(parts.netloc or ""):
        raise ValueError(f"STORAGE_URL {url!r}: {parts.netloc!r} is not a bucket name (3-63 lower-case letters, "
                         f"digits, dots, hyphens): s3://bucket/prefix")
    prefix = parts.path.strip("/")
    if prefix:
        try:
            Storage.check_key(prefix)
        except StorageError:
            raise ValueError(f"STORAGE_URL {url!r}: the prefix {prefix!r} may hold only letters, digits, '_', '.', "
                             f"'-' and '/'") from None
    style = str(config.get("S3_ADDRESSING_STYLE") or "auto")
    if style not in ("auto", "path", "virtual"):
        raise ValueError(f"S3_ADDRESSING_STYLE must be auto, path or virtual, got {style!r}")
    return S3Storage(parts.netloc, prefix, endpoint_url=config.get("S3_ENDPOINT_URL"),
                     region=config.get("S3_REGION"), addressing_style=style,
                     timeout=float(config.get("STORAGE_TIMEOUT") or 5.0),
                     presign_seconds=int(config.get("PRESIGNED_URL_SECONDS") or 3600))
