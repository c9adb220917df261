"""Data set uploads: a zip of class sub-folders of images, or of images plus ``captions.jsonl``.

Everything is checked before a data set is stored, and an upload is all or nothing:

1. The archive's directory (no byte is decompressed yet): member count, names (no absolute paths, drive
   letters, backslashes or ``..``: zip-slip), no symlinks or encrypted members, the image extensions of
   :data:`priorforge_spec.datasets.IMAGE_EXTENSIONS`, the layout, the image count, the SUM of the declared
   uncompressed sizes and each big member's compression ratio (zip bombs).
2. Extraction into a staging folder inside ``DATASET_ROOT`` (same file system), streamed in chunks with a
   hard byte cap per member and in total, whatever the headers declare; paths are rebuilt from the checked
   name parts, never taken from the archive as they are.
3. Each image must decode (Pillow ``verify`` then ``load``) within the configured dimensions;
   ``captions.jsonl`` must pass :func:`priorforge_spec.captions.parse_captions_jsonl` and name only extracted images.
4. An atomic ``rename`` of the staging folder to ``DATASET_ROOT/<name>``, then the database row.

Any problem raises :class:`UploadRejected` (HTTP 422, or 413 for size limits) with the list of rejected
files and reasons, after the staging folder is removed.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from flask import current_app
from sqlalchemy import select

from app.core.checkpoint_store import upload_folder
from app.core.errors import ApiError
from app.core.extensions import db
from app.core.tables import Dataset, User
from app.core.storage import StorageUnavailable
from app.services.datasets import RESERVED_NAMES
from priorforge_spec.captions import CAPTIONS_FILE, parse_captions_jsonl
from priorforge_spec.datasets import IMAGE_EXTENSIONS, DatasetError

IGNORED = ("__MACOSX/", ".DS_Store", "Thumbs.db")  # archivers' metadata: skipped, reported as ignored
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
RATIO_CHECK_MIN_BYTES = 1024 * 1024  # a member this big must not be compressed more than DATASET_MAX_RATIO
CHUNK = 64 * 1024
# file systems refuse longer names (NAME_MAX is 255 bytes); the whole path stays far below PATH_MAX
MAX_NAME_PART_BYTES = 255
MAX_PATH_BYTES = 1024
PIL_FORMATS = {"PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"}


@dataclass
class Rejected:
    file: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "reason": self.reason}


class UploadRejected(ApiError):
    """An upload refused as a whole; ``rejected`` names each bad file and why."""

    def __init__(self, status: int, message: str, rejected: list[Rejected] | None = None):
        super().__init__(status, message, rejected=[r.to_dict() for r in rejected or []])
        self.rejected = rejected or []


@dataclass
class Plan:
    """What the archive's directory promises, after step 1."""

    layout: str  # classes | captions
    members: list[tuple[zipfile.ZipInfo, tuple[str, ...]]]  # (member, checked path parts below the root)
    ignored: list[str] = field(default_factory=list)


def limit(key: str) -> int:
    """A ``DATASET_MAX_*`` setting (defaults in :func:`app.core.config.default_config`)."""
    value: int = current_app.config[key]
    return value


def dataset_root() -> Path:
    return Path(current_app.config["DATASET_ROOT"])


# -- step 1: the archive's directory -----------------------------------------------------------------
def _name_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if "\x00" in name or "\\" in name:
        return "name contains a backslash or NUL byte"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "path escapes the data set folder ('..')"
    if any(len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_PART_BYTES for part in PurePosixPath(name).parts):
        return f"a file or folder name is longer than {MAX_NAME_PART_BYTES} bytes"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        return f"path longer than {MAX_PATH_BYTES} bytes"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no Unix mode recorded
        return "not a regular file"
    if info.flag_bits & 0x1:
        return "encrypted member"
    return None


def _strip_common_root(files: list[tuple[zipfile.ZipInfo, tuple[str, ...]]]):
    """``mydata/cats/a.png`` -> ``cats/a.png`` when everything sits in one wrapping folder."""
    while files and all(len(parts) > 1 for _, parts in files) and len({parts[0] for _, parts in files}) == 1 \
            and (all(len(parts) > 2 for _, parts in files)  # a single class folder is not a wrapper
                 or any(parts[1:] == (CAPTIONS_FILE,) for _, parts in files)):
        files = [(info, parts[1:]) for info, parts in files]
    return files


def plan_archive(zf: zipfile.ZipFile, archive_bytes: int) -> Plan:
    infos = zf.infolist()
    if len(infos) > limit("DATASET_MAX_FILES"):
        raise UploadRejected(422, f"the archive has {len(infos)} members; the limit is {limit('DATASET_MAX_FILES')}")
    rejected: list[Rejected] = []
    files: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
    ignored: list[str] = []
    declared = 0
    for info in infos:
        problem = _name_problem(info)
        if problem:
            rejected.append(Rejected(info.filename, problem))
            continue
        if info.is_dir():
            continue
        if any(part in info.filename for part in IGNORED) or PurePosixPath(info.filename).name.startswith("._"):
            ignored.append(info.filename)
            continue
        declared += info.file_size
        if info.file_size >= RATIO_CHECK_MIN_BYTES and info.file_size > limit("DATASET_MAX_RATIO") * max(info.compress_size, 1):
            rejected.append(Rejected(info.filename, f"compression ratio {info.file_size // max(info.compress_size, 1)}:1 "
                                                    f"is above the limit {limit('DATASET_MAX_RATIO')}:1 (zip bomb?)"))
            continue
        files.append((info, tuple(p for p in PurePosixPath(info.filename).parts if p not in ("", "."))))
    if declared > limit("DATASET_MAX_UNCOMPRESSED_BYTES"):
        raise UploadRejected(413, f"the archive unpacks to {declared} bytes; the limit is "
                                  f"{limit('DATASET_MAX_UNCOMPRESSED_BYTES')} bytes", rejected)
    if declared > limit("DATASET_MAX_RATIO") * max(archive_bytes, 1) and declared >= RATIO_CHECK_MIN_BYTES:
        rejected.append(Rejected("(archive)", f"unpacks to {declared} bytes from {archive_bytes}: compression "
                                              f"above {limit('DATASET_MAX_RATIO')}:1 (zip bomb?)"))
    files = _strip_common_root(files)
    layout = "captions" if any(parts == (CAPTIONS_FILE,) for _, parts in files) else "classes"
    kept: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
    for info, parts in files:
        if parts == (CAPTIONS_FILE,) and layout == "captions":
            kept.append((info, parts))
        elif PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_EXTENSIONS:
            rejected.append(Rejected(info.filename, f"not an image file (allowed: {', '.join(IMAGE_EXTENSIONS)})"))
        elif layout == "classes" and len(parts) != 2:
            rejected.append(Rejected(info.filename, "images go one level down, in a folder per class "
                                                    "(<class>/<image>), or add captions.jsonl"))
        elif any(p.startswith(".") for p in parts):
            rejected.append(Rejected(info.filename, "hidden file or folder"))
        else:
            kept.append((info, parts))
    folders = {parts[:i] for _, parts in kept for i in range(1, len(parts))}
    rejected.extend(Rejected(info.filename, "a later member uses this file as a folder")
                    for info, parts in kept if parts in folders)
    n_images = sum(1 for _, parts in kept if parts != (CAPTIONS_FILE,))
    if rejected:
        raise UploadRejected(422, f"{len(rejected)} file(s) rejected; nothing was stored", rejected)
    if n_images == 0:
        raise UploadRejected(422, "the archive holds no images (expected <class>/<image> folders, or images "
                                  "with captions.jsonl)")
    if n_images > limit("DATASET_MAX_IMAGES"):
        raise UploadRejected(413, f"the archive holds {n_images} images; the limit is {limit('DATASET_MAX_IMAGES')}")
    return Plan(layout, kept, ignored)


# -- step 2 and 3: streamed extraction, decoding -----------------------------------------------------
def _extract(zf: zipfile.ZipFile, plan: Plan, staging: Path) -> int:
    """Copy the planned members into ``staging``; returns the bytes written. Caps hold whatever the headers say."""
    total_cap = limit("DATASET_MAX_UNCOMPRESSED_BYTES")
    total = 0
    for info, parts in plan.members:
        target = staging.joinpath(*parts)
        written = 0
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "xb") as dst:
                while chunk := src.read(CHUNK):
                    written += len(chunk)
                    total += len(chunk)
                    if written > info.file_size or total > total_cap:
                        raise UploadRejected(413, "the archive unpacks to more than it declares or than the limit "
                                                  f"of {total_cap} bytes (zip bomb?)",
                                             [Rejected(info.filename, "more data than declared")])
                    dst.write(chunk)
        except FileExistsError:
            raise UploadRejected(422, "duplicate file", [Rejected(info.filename, "listed twice in the archive")]) from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError) as exc:
            raise UploadRejected(422, "a member could not be unpacked",
                                 [Rejected(info.filename, f"corrupt or unsupported compression: {exc}")]) from None
    return total


def image_bytes_problem(data: bytes) -> str | None:
    """What is wrong with one uploaded image (the reconstruct and mix experiments' inputs), by the rules of a
    data set's images (format, each side within ``DATASET_MAX_IMAGE_SIDE``, it decodes); None when it is fine."""
    return _image_problem(data, limit("DATASET_MAX_IMAGE_SIDE"))


def _image_problem(path: Path | bytes, max_side: int) -> str | None:
    import io

    from PIL import Image, UnidentifiedImageError

    def source():  # a fresh reader each time: verify() leaves an image, and a stream, unusable
        return io.BytesIO(path) if isinstance(path, bytes) else path

    try:
        with Image.open(source()) as img:  # reads the header only
            if img.format not in PIL_FORMATS:
                return f"image format {img.format} is not accepted ({', '.join(sorted(PIL_FORMATS))})"
            width, height = img.size
            if width > max_side or height > max_side or width < 1 or height < 1:
                return f"{width}x{height} pixels; each side must be 1-{max_side}"
            img.verify()
        with Image.open(source()) as img:  # verify() leaves the image unusable: open again to decode it
            img.load()
    except (UnidentifiedImageError, Image.DecompressionBombError):
        return "does not decode as an image"
    except (OSError, ValueError, SyntaxError) as exc:
        return f"does not decode as an image ({exc})"
    return None


def _check_contents(plan: Plan, staging: Path) -> tuple[list[str], int]:
    """Decode every image and check captions.jsonl; returns (class names, caption count)."""
    max_side = limit("DATASET_MAX_IMAGE_SIDE")
    rejected = []
    for info, parts in plan.members:
        if parts != (CAPTIONS_FILE,):
            problem = _image_problem(staging.joinpath(*parts), max_side)
            if problem:
                rejected.append(Rejected(info.filename, problem))
    if rejected:
        raise UploadRejected(422, f"{len(rejected)} file(s) rejected; nothing was stored", rejected)
    if plan.layout == "classes":
        return sorted({parts[0] for _, parts in plan.members}), 0
    return _check_captions(plan, staging)


def _check_captions(plan: Plan, staging: Path) -> tuple[list[str], int]:
    try:
        entries = parse_captions_jsonl(staging, inside_only=True)  # no probing of paths outside the archive
    except DatasetError as exc:
        message = str(exc).replace(f"{staging}/", "").replace(str(staging), "the archive")
        raise UploadRejected(422, "captions.jsonl is invalid", [Rejected(CAPTIONS_FILE, message)]) from None
    images = {staging.joinpath(*parts).resolve() for _, parts in plan.members if parts != (CAPTIONS_FILE,)}
    outside = [e for e in entries if e.file.resolve() not in images]
    if outside:
        raise UploadRejected(422, "captions.jsonl names files outside the archive's images",
                             [Rejected(CAPTIONS_FILE, f"line {e.line}: {e.file.name!r} is not an image of this archive")
                              for e in outside])
    labels = sorted({str(e.label) for e in entries if e.label is not None})
    return labels, sum(len(e.captions) for e in entries)


# -- the whole upload --------------------------------------------------------------------------------
def check_name(name: str) -> str:
    name = (name or "").strip().lower()
    if not NAME_RE.match(name):
        raise ApiError(422, "a data set name is 1-64 characters: lower-case letters, digits, '-' and '_', "
                            "starting with a letter or digit")
    if name in RESERVED_NAMES:
        raise ApiError(409, f"{name!r} is the name of a built-in data set")
    if db.session.scalars(select(Dataset).where(Dataset.name == name)).first() is not None \
            or (dataset_root() / name).exists():
        raise ApiError(409, f"a data set named {name!r} already exists")
    return name


def _publish(folder: Path, name: str) -> None:
    """With an object store, the data set also goes to ``datasets/<name>/`` there: the trainer that runs on it
    may be on another machine (workers/training_tasks.py fetches it). All or nothing with the upload."""
    storage = current_app.extensions["priorforge_storage"]
    if not storage.remote:
        return
    try:
        upload_folder(storage, folder, f"datasets/{name}")
    except StorageUnavailable as exc:
        raise ApiError(503, f"the data set could not be stored: {exc}") from None


def store_upload(name: str, stream: IO[bytes], filename: str, user: User | None) -> Dataset:
    """Validate the zip in ``stream`` (seekable) and store it as data set ``name``; all or nothing."""
    name = check_name(name)
    stream.seek(0, os.SEEK_END)
    archive_bytes = stream.tell()
    stream.seek(0)
    if archive_bytes > limit("DATASET_MAX_UPLOAD_BYTES"):
        raise UploadRejected(413, f"the archive is {archive_bytes} bytes; the limit is "
                                  f"{limit('DATASET_MAX_UPLOAD_BYTES')} bytes")
    try:
        zf = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError):
        raise UploadRejected(422, "the upload is not a valid zip archive", [Rejected(filename, "not a zip")]) from None
    root = dataset_root()
    root.mkdir(parents=True, exist_ok=True)
    with zf:
        plan = plan_archive(zf, archive_bytes)
        staging = Path(tempfile.mkdtemp(prefix=".upload-", dir=root))  # same file system: rename is atomic
        try:
            size = _extract(zf, plan, staging)
            class_names, captions = _check_contents(plan, staging)
            final = root / name
            row = Dataset(name=name, layout=plan.layout, path=str(final), images=sum(
                1 for _, parts in plan.members if parts != (CAPTIONS_FILE,)), classes=len(class_names),
                captions=captions, size_bytes=size, class_names=class_names, source=filename[:200],
                created_by_id=user.id if user else None)
            db.session.add(row)
            db.session.flush()  # a concurrent upload of the same name fails here (unique name)
            os.rename(staging, final)  # fails if a folder of that name appeared meanwhile
        except BaseException:
            db.session.rollback()
            shutil.rmtree(staging, ignore_errors=True)
            raise
    try:
        _publish(final, name)
        db.session.commit()
    except BaseException:
        db.session.rollback()
        shutil.rmtree(final, ignore_errors=True)
        raise
    row.ignored = plan.ignored  # type: ignore[attr-defined]  # reported once, not stored
    return row
