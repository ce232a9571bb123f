"""One immutable segment of an index: a batch of documents written once, then only read.

Files (all in the segment's directory, listed with sizes and sha256 in the manifest):
``vectors.npy`` (N, d) codes, ``scales.npy`` (N,) for int8, ``offsets.npy`` (n + 1,) int64,
``fde.faiss`` the faiss index over the documents' FDEs (recomputed from the stored vectors when a
segment is compacted, so they are not kept twice), and ``meta.parquet`` with
``doc_id``, the page content and every metadata column. Deletions live in separate
``deleted-g<generation>.npy`` bitmaps, so a committed file is never modified.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fde import FDEConfig, encode_documents
from index_store import codecs
from index_store.errors import IndexCorruptError, InputError
from index_store.fsio import fsync_dir, load_npy, save_bytes, save_npy, sha256_file

SMALL_FILE = 64 << 20  # files below this size are checksummed on every open


def build_faiss(factory: str, fde: np.ndarray) -> Any:
    import faiss

    dim = fde.shape[1]
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise InputError(f"faiss could not build {factory!r}: {exc}") from exc
    if not index.is_trained:
        try:
            index.train(fde)
        except RuntimeError as exc:
            raise InputError(
                f"training the faiss index {factory!r} on {len(fde)} documents failed ({exc}); "
                "commit larger batches (--commit-every) or use a smaller index (e.g. Flat)"
            ) from exc
    index.add(fde)
    return index


def write_segment(
    root: Path,
    name: str,
    *,
    codes: np.ndarray,
    scales: np.ndarray | None,
    offsets: np.ndarray,
    table: pa.Table,
    fde_config: FDEConfig,
    dtype: str,
    dim: int,
    faiss_factory: str,
) -> dict[str, Any]:
    """Write a complete segment under ``root/name`` and return its manifest entry.

    Everything is written into a temporary directory, fsynced, then renamed into place, so a
    crash leaves either nothing or a whole (not yet committed) segment.
    """
    import faiss

    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    # The FDE is computed from the stored (decoded) vectors so that compaction reproduces it.
    decoded = codecs.decode(codes, scales, dtype, dim)
    fde = encode_documents(decoded, fde_config, offsets=offsets)
    save_npy(tmp / "vectors.npy", codes)
    if scales is not None:
        save_npy(tmp / "scales.npy", scales)
    save_npy(tmp / "offsets.npy", offsets)
    index = build_faiss(faiss_factory, fde)
    save_bytes(tmp / "fde.faiss", faiss.serialize_index(index).tobytes())
    pq.write_table(table, tmp / "meta.parquet")
    with open(tmp / "meta.parquet", "rb+") as fh:
        os.fsync(fh.fileno())
    fsync_dir(tmp)
    os.replace(tmp, final)
    fsync_dir(root)
    files = {
        p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(final.iterdir())
    }
    return {
        "name": name,
        "num_docs": int(offsets.size - 1),
        "num_vectors": int(offsets[-1]),
        "files": files,
        "deleted": None,
        "num_deleted": 0,
    }


@dataclass
class Segment:
    """A committed segment opened for reading (vectors memory-mapped)."""

    name: str
    path: Path
    entry: dict[str, Any]
    offsets: np.ndarray  # (n + 1,) int64
    vectors: np.ndarray  # (N, d) codes, memory-mapped
    scales: np.ndarray | None  # (N,) float32 for int8
    doc_ids: np.ndarray  # (n,) object (str)
    deleted: np.ndarray  # (n,) bool
    _faiss: Any = None

    @property
    def num_docs(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def live(self) -> np.ndarray:
        return ~self.deleted

    def faiss_index(self) -> Any:
        if self._faiss is None:
            import faiss

            data = np.fromfile(self.path / "fde.faiss", dtype=np.uint8)
            self._faiss = faiss.deserialize_index(data)
        return self._faiss

    def metadata(self, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.path / "meta.parquet", columns=columns)


def check_files(
    path: Path, entry: dict[str, Any], *, full: bool, extra: dict[str, Any] | None = None
) -> list[str]:
    """Problems with a segment's files: missing, wrong size, checksum mismatch."""
    problems = []
    files = dict(entry["files"])
    if extra:
        files.update(extra)
    for fname, info in files.items():
        fpath = path / fname
        if not fpath.is_file():
            problems.append(f"{fpath}: missing")
            continue
        size = fpath.stat().st_size
        if size != info["size"]:
            problems.append(
                f"{fpath}: size {size} bytes, manifest says {info['size']} (truncated or replaced)"
            )
            continue
        if full or size <= SMALL_FILE:
            if sha256_file(fpath) != info["sha256"]:
                problems.append(f"{fpath}: checksum mismatch (file corrupted)")
    return problems


def open_segment(root: Path, entry: dict[str, Any], dim: int, *, verify: str) -> Segment:
    path = root / entry["name"]
    extra = None
    if entry.get("deleted"):
        extra = {entry["deleted"]["file"]: entry["deleted"]}
    if verify != "none":
        problems = check_files(path, entry, full=verify == "full", extra=extra)
        if problems:
            raise IndexCorruptError(
                "index files are damaged: "
                + "; ".join(problems)
                + ". Run `latemm verify` for a full report; restore the files or rebuild the index"
            )
    try:
        offsets = load_npy(path / "offsets.npy", mmap=False).astype(np.int64)
        vectors = load_npy(path / "vectors.npy", mmap=True)
        scales = (
            load_npy(path / "scales.npy", mmap=True) if (path / "scales.npy").is_file() else None
        )
        ids = pq.read_table(path / "meta.parquet", columns=["doc_id"]).column("doc_id")
        deleted = np.zeros(offsets.size - 1, dtype=bool)
        if entry.get("deleted"):
            deleted = load_npy(path / entry["deleted"]["file"], mmap=False).astype(bool)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise IndexCorruptError(f"cannot read segment {path}: {exc}") from exc
    if (
        offsets[-1] != vectors.shape[0]
        or offsets.size - 1 != entry["num_docs"]
        or len(ids) != entry["num_docs"]
        or deleted.size != entry["num_docs"]
    ):
        raise IndexCorruptError(f"segment {path} is inconsistent with the manifest")
    return Segment(
        name=entry["name"],
        path=path,
        entry=entry,
        offsets=offsets,
        vectors=vectors,
        scales=scales,
        doc_ids=np.array(ids.to_pylist(), dtype=object),
        deleted=deleted,
    )
