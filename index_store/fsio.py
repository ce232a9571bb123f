"""Durable file writes: temporary file, fsync, atomic rename, fsync of the directory.

safetensors learned the hard way that rewriting a memory-mapped file in place zero-fills what
readers see; here a committed file is never modified, only replaced by rename. Every write of
the index goes through ``write_file`` (or ``write_atomic`` on top of it), so a full disk is one
``StorageError`` naming the file, whatever wrote it.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from index_store.errors import IndexCorruptError, StorageError

_HASH_CHUNK = 1 << 22
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# Temporary files write_atomic leaves when a process dies mid-write: ".NAME.tmp-PID".
TMP_PATTERN = re.compile(r"\.(.+)\.tmp-\d+")


# ------------------------------------------------------------------------ untrusted folders
# An index folder is data that may come from someone else (a download, a shared drive): no
# name read from it (a manifest, fields.json, shards.json, journal.json) and no link planted in
# it may make latemm read, write or delete anything outside it. Every path built from such a
# name goes through ``index_path``; every index is checked for links by ``refuse_links`` before
# it is read or written; files are created with O_NOFOLLOW.


def _link_error(path: Path) -> IndexCorruptError:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return IndexCorruptError(
        f"{path} is a symbolic link (to {target!r}); latemm never follows a link inside an "
        "index folder, which could make it read, write or delete files outside the index. "
        "Remove the link (the index is damaged, or was made to reach outside itself) and "
        "restore the real file from a backup or rebuild the index"
    )


def index_path(root: str | Path, *names: Any, what: str = "a name") -> Path:
    """``root/names[0]/names[1]/...`` for names read from an index's own files: each must be a
    plain file name (no separator, not absolute, not ``.`` or ``..``) and no component that
    exists below ``root`` may be a symbolic link. Anything else is an ``IndexCorruptError``
    naming the file and the fix."""
    path = Path(root)
    for name in names:
        if (
            not isinstance(name, str)
            or name in ("", ".", "..")
            or "/" in name
            or "\\" in name
            or "\0" in name
        ):
            raise IndexCorruptError(
                f"{root}: {what} is {name!r}, not a plain file name inside the index; paths "
                "outside the index folder (absolute, '..', or with a separator) are refused. The "
                "index is damaged: restore it from a backup or rebuild it"
            )
        path = path / name
        if path.is_symlink():
            raise _link_error(path)
    return path


def find_links(root: str | Path) -> list[str]:
    """Every entry under ``root`` (not following links) that is a symbolic link or not a
    regular file or folder (a FIFO, a device), one problem each; empty when there is none."""
    problems: list[str] = []
    stack = [Path(root)]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError as exc:
            # A folder gone since its parent was listed: a writer renamed its temporary
            # segment into place or collected an old one while a reader opened the index.
            if folder != Path(root):
                continue
            problems.append(f"{folder}: cannot be listed ({exc.strerror or exc})")
            continue
        except OSError as exc:
            problems.append(f"{folder}: cannot be listed ({exc.strerror or exc})")
            continue
        for entry in entries:
            path = Path(entry.path)
            if entry.is_symlink():
                problems.append(str(_link_error(path)))
            elif entry.is_dir(follow_symlinks=False):
                stack.append(path)
            elif not entry.is_file(follow_symlinks=False):
                problems.append(
                    f"{path} is not a regular file or folder (a device, FIFO or socket); an "
                    "index holds none: remove it"
                )
    return sorted(problems)


def refuse_links(root: str | Path) -> None:
    """``IndexCorruptError`` (the first problem ``find_links`` finds, and how many more) when
    the index folder ``root`` holds a link or a special file; ``root`` itself may be a link
    (the user's choice of path)."""
    problems = find_links(root) if Path(root).is_dir() else []
    if problems:
        more = f" (and {len(problems) - 1} more such entries)" if len(problems) > 1 else ""
        raise IndexCorruptError(problems[0] + more)


def open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that refuses to follow a link at ``path`` (``IndexCorruptError``)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _link_error(path) from exc
        raise


def open_lock_file(path: Path) -> IO[str]:
    """``path`` opened for appending (created if needed) without following a link: a lock
    file planted as a link to a user's file must not be created, truncated or written."""
    return os.fdopen(open_nofollow(path, os.O_RDWR | os.O_CREAT | os.O_APPEND), "a+")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a full disk or quota: its errno, or the text pyarrow and bm25s give
    (Arrow reports a short write as "N requested and M written", without an errno)."""
    text = str(exc)
    return isinstance(exc, OSError) and (
        exc.errno in _FULL
        or "No space left on device" in text
        or "Disk quota exceeded" in text
        or bool(re.search(r"\d+ requested and \d+ written", text))
    )


def full_disk_error(path: Path, exc: BaseException) -> StorageError:
    """The ``StorageError`` for a full disk while writing ``path``."""
    return StorageError(
        f"writing {path} failed: no space left on device ({getattr(exc, 'strerror', None) or exc})."
        " Nothing was committed and the last commit is intact; free some space and run it again"
    )


_is_full = is_full


def write_file(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Create ``path``, let ``write`` fill it, flush and fsync it.

    A full disk (or quota) is a ``StorageError`` naming the file; the partial file is removed.
    """
    try:
        fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        if not _is_full(exc):
            raise
        path.unlink(missing_ok=True)
        raise full_disk_error(path, exc) from exc


def write_atomic(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """``write_file`` into ``.NAME.tmp-PID``, then rename over ``path`` and fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write_file(tmp, write)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda fh: fh.write(data))


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object (a manifest); anything else is an
    ``IndexCorruptError`` naming the file."""
    if path.is_symlink():
        raise _link_error(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(f"{path} is unreadable: {exc}") from exc
    if not isinstance(payload, dict):
        raise IndexCorruptError(
            f"{path}: expected a JSON object, got {type(payload).__name__}. The file is damaged: "
            "restore it from a backup or rebuild the index"
        )
    return payload


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    write_bytes_atomic(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def _write_hashed(fh: IO[bytes], parts: list[memoryview], digest: Any) -> None:
    """Write ``parts`` in slices, hashing each slice as it goes out (no second read)."""
    for part in parts:
        for start in range(0, part.nbytes, _HASH_CHUNK):
            piece = part[start : start + _HASH_CHUNK]
            digest.update(piece)
            fh.write(piece)


def save_npy(path: Path, array: np.ndarray) -> str:
    """Write an .npy file (no pickles) and fsync it; the caller renames its directory.

    Returns the file's sha256, computed while writing (the bytes are those ``np.save`` writes).
    """
    array = np.ascontiguousarray(array)
    if array.dtype.hasobject:
        raise ValueError(f"{path}: refusing to write an object array (it would need pickle)")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    digest = hashlib.sha256()
    data = _byte_view(array)
    write_file(path, lambda fh: _write_hashed(fh, [header.getbuffer(), data], digest))
    return digest.hexdigest()


def save_bytes(path: Path, data: bytes | np.ndarray) -> str:
    """Write ``data`` to a new file and fsync it; returns its sha256, computed while writing."""
    digest = hashlib.sha256()
    write_file(path, lambda fh: _write_hashed(fh, [_byte_view(data)], digest))
    return digest.hexdigest()


def _byte_view(data: bytes | np.ndarray) -> memoryview:
    """The bytes of ``data`` (an array: C order) without copying a contiguous array."""
    array = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).data


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def load_npy(path: Path, *, mmap: bool) -> np.ndarray:
    """The array in ``path``; with ``mmap``, a plain read-only ndarray over the file's memory
    map (a ``np.memmap`` runs Python code on every slice, ~640 slices per query)."""
    array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    return array.view(np.ndarray) if isinstance(array, np.memmap) else array


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()
