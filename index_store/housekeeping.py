"""The index folder's housekeeping: the writer's lock, what may become an index, and garbage
collection of files the index wrote that no manifest references.

Only names the index itself writes are ever removed (``seg-g<gen>`` segment directories,
``deleted-g<gen>.npy`` bitmaps, ``rejects-g<gen>.parquet`` files, ``fde-pq-g<gen>.faiss`` and
``vectors-codebook-g<gen>.npy`` codebooks no manifest lists, and their ``.NAME.tmp-PID``
temporaries): a user's file in the folder is never touched.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path
from typing import IO

from index_store.errors import IndexLockedError, InputError
from index_store.fsio import TMP_PATTERN, fsync_dir, open_lock_file, refuse_links
from index_store.manifest import (
    CODEBOOK_PATTERN,
    DELETED_PATTERN,
    MANIFEST,
    REJECTS_PATTERN,
    SEGMENT_PATTERN,
    SEGMENT_TMP_PATTERN,
    VECTORS_CODEBOOK_PATTERN,
    Manifest,
)

# Files at the index root that the index writes (removed when no manifest lists them).
_ROOT_PATTERNS = (REJECTS_PATTERN, CODEBOOK_PATTERN, VECTORS_CODEBOOK_PATTERN)


def _root_file(name: str) -> bool:
    return any(p.fullmatch(name) for p in _ROOT_PATTERNS)


def acquire_lock(path: Path) -> IO[str]:
    """Hold ``path/LOCK`` exclusively (released by the OS when the process dies, so a stale
    file never blocks); ``IndexLockedError`` naming the holder when another writer has it."""
    lock = open_lock_file(path / "LOCK")  # held until the writer closes
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        lock.close()
        holder = (path / "LOCK").read_text().strip() or "another process"
        raise IndexLockedError(
            f"{path} is being written by {holder}; one writer at a time. Wait for it to "
            "finish (readers may open the index meanwhile)"
        ) from exc
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()}\n")
    lock.flush()
    return lock


def release_lock(lock: IO[str]) -> None:
    if not lock.closed:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def _owned_by_index(child: Path) -> bool:
    """Whether a file in a folder without manifest is one an index writes before its first
    commit (the lock, segment directories, temporaries, rejects)."""
    name = child.name
    if name == "segments" and child.is_dir():
        return all(
            SEGMENT_PATTERN.fullmatch(c.name) or SEGMENT_TMP_PATTERN.fullmatch(c.name)
            for c in child.iterdir()
        )
    return name == "LOCK" or _root_file(name) or bool(TMP_PATTERN.fullmatch(name))


def prepare_folder(path: Path) -> None:
    """Make ``path`` a folder for an index: new, empty, an index, or an index's leftovers."""
    if path.exists() and not path.is_dir():
        raise InputError(
            f"{path} is a file, not an index directory; --index takes a directory "
            "(new, or one `latemm index` created)"
        )
    path.mkdir(parents=True, exist_ok=True)
    if (path / MANIFEST).exists() or (path / MANIFEST).is_symlink():
        refuse_links(path)  # nothing is written, read or removed through a link out of it
        return
    foreign = sorted(
        c.name for c in path.iterdir() if not c.is_symlink() and not _owned_by_index(c)
    )
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise InputError(
            f"{path} is not empty and is not a latemm index (no {MANIFEST}; it holds {shown}); "
            "refusing to create an index there. Choose a new or empty directory for --index"
        )
    refuse_links(path)


def collect_garbage(path: Path, manifest: Manifest) -> None:
    """Remove files the index wrote that ``manifest`` does not reference (crash leftovers, old
    bitmaps and rejects, compacted segments); nothing else."""
    referenced = {e.name: e for e in manifest.segments}
    seg_root = path / "segments"
    for child in seg_root.iterdir() if seg_root.is_dir() else []:
        entry = referenced.get(child.name)
        if entry is None:
            if SEGMENT_PATTERN.fullmatch(child.name) or SEGMENT_TMP_PATTERN.fullmatch(child.name):
                shutil.rmtree(child, ignore_errors=True)
            continue
        keep = {f.file for f in entry.all_files()}
        for f in child.iterdir():
            tmp = TMP_PATTERN.fullmatch(f.name)
            if f.name not in keep and DELETED_PATTERN.fullmatch(tmp[1] if tmp else f.name):
                f.unlink(missing_ok=True)
    kept = {e.file for d, e in manifest.files() if d == ""}
    for f in path.iterdir():
        tmp = TMP_PATTERN.fullmatch(f.name)
        ours = _root_file(f.name) and f.name not in kept
        if ours or (tmp and (tmp[1] == MANIFEST or _root_file(tmp[1]))):
            f.unlink(missing_ok=True)
    if seg_root.is_dir():
        fsync_dir(seg_root)
