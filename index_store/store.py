"""The index: open it read-only (``Index.open``) or write to it (``IndexWriter``).

Layout of an index directory::

    manifest.json         the commit point: format, config, segments, checksums, counts
    segments/<name>/      immutable segments (see ``index_store.segment``)
    LOCK                  the writer's lock file

A commit writes new files only (a new segment, new deletion bitmaps), fsyncs them, then swaps
``manifest.json`` atomically; a process killed at any instant leaves the last committed state
intact. Files no manifest references (a crash's leftovers, replaced bitmaps, compacted segments)
are removed when the next writer opens.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fde import FDEInputError, as_flat
from index_store import codecs, rejects
from index_store.config import IndexConfig
from index_store.errors import (
    IndexCorruptError,
    IndexFormatError,
    IndexLockedError,
    InputError,
)
from index_store.fsio import (
    fsync_dir,
    npy_bytes,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
)
from index_store.segment import check_files, open_segment, write_segment

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CONTENT_COLUMNS = ("image", "text")


@dataclass(frozen=True)
class Document:
    """One stored document: its id, its vectors (float32, decoded) and its metadata."""

    doc_id: str
    vectors: np.ndarray  # (T, d) float32
    metadata: dict[str, Any]


def _read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise IndexCorruptError(
            f"{path} is not a latemm index ({MANIFEST} is missing); create one with "
            "`latemm index CORPUS.parquet --index DIR`"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(f"{manifest_path} is unreadable: {exc}") from exc
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{path} has format_version {version}; this latemm reads version {FORMAT_VERSION}"
        )
    return dict(manifest)


class Index:
    """A committed index state, opened read-only. Many readers may open one index at once.

    Parameters
    ----------
    path
        The index directory.
    verify
        ``"fast"`` (default): every file exists with its recorded size, and files under 64 MB
        match their checksums. ``"full"``: every checksum (what ``latemm verify`` runs).
        ``"none"``: trust the files.
    """

    def __init__(self, path: str | Path, *, verify: str = "fast") -> None:
        if verify not in ("fast", "full", "none"):
            raise InputError(f"verify must be 'fast', 'full' or 'none', got {verify!r}")
        self.path = Path(path)
        for attempt in range(3):
            self.manifest = _read_manifest(self.path)
            try:
                self.segments = [
                    open_segment(
                        self.path / "segments", entry, self.manifest["config"]["dim"], verify=verify
                    )
                    for entry in self.manifest["segments"]
                ]
                break
            except IndexCorruptError:
                # A writer may have committed (and cleaned up) between our reads: retry once
                # the manifest has moved on; otherwise the damage is real.
                if (
                    attempt == 2
                    or _read_manifest(self.path)["generation"] == self.manifest["generation"]
                ):
                    raise
        if verify != "none":
            problems = _check_rejects_file(self.path, self.manifest, full=verify == "full")
            if problems:
                raise IndexCorruptError(
                    "index files are damaged: " + "; ".join(problems) + ". Run `latemm verify`"
                )
        self.config = IndexConfig.from_dict(self.manifest["config"])
        self._locations: dict[str, tuple[int, int]] | None = None

    @classmethod
    def open(cls, path: str | Path, *, verify: str = "fast") -> Index:
        return cls(path, verify=verify)

    # ---------------------------------------------------------------------------- lookups
    @property
    def generation(self) -> int:
        return int(self.manifest["generation"])

    @property
    def num_documents(self) -> int:
        return sum(int(s.live.sum()) for s in self.segments)

    def __len__(self) -> int:
        return self.num_documents

    def locations(self) -> dict[str, tuple[int, int]]:
        """doc_id -> (segment number, row) of every live document."""
        if self._locations is None:
            out: dict[str, tuple[int, int]] = {}
            for s, seg in enumerate(self.segments):
                for row in np.flatnonzero(seg.live):
                    out[seg.doc_ids[row]] = (s, int(row))
            self._locations = out
        return self._locations

    def __contains__(self, doc_id: object) -> bool:
        return str(doc_id) in self.locations()

    def doc_ids(self) -> Iterator[str]:
        """Live document ids, in storage order."""
        for seg in self.segments:
            yield from seg.doc_ids[seg.live]

    def vectors(self, segment: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decoded vectors of some rows of a segment: (N, d) float32 and (len(rows) + 1,) offsets."""
        seg = self.segments[segment]
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = seg.offsets[rows], seg.offsets[rows + 1]
        lengths = ends - starts
        offsets = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if rows.size == 0:
            return np.zeros((0, self.config.dim), np.float32), offsets
        # One contiguous slice per document: memory-mapped reads stay sequential.
        codes = np.concatenate([seg.vectors[a:b] for a, b in zip(starts, ends, strict=True)])
        scales = None
        if seg.scales is not None:
            scales = np.concatenate([seg.scales[a:b] for a, b in zip(starts, ends, strict=True)])
        return codecs.decode(codes, scales, self.config.dtype, self.config.dim), offsets

    def get(self, doc_id: str) -> Document:
        """A document by id, with its decoded vectors and metadata."""
        key = str(doc_id)
        if key not in self.locations():
            raise KeyError(f"doc_id {key!r} is not in the index {self.path}")
        s, row = self.locations()[key]
        vectors, _ = self.vectors(s, np.array([row]))
        table = self.segments[s].metadata().slice(row, 1)
        metadata = {name: table.column(name)[0].as_py() for name in table.column_names}
        metadata.pop("doc_id", None)
        return Document(key, vectors, metadata)

    def metadata(self, columns: Sequence[str] | None = None) -> pa.Table:
        """Metadata of the live documents (all columns but the page content by default), with
        ``_segment`` and ``_row`` locating each document."""
        tables = []
        for s, seg in enumerate(self.segments):
            names = seg.metadata().schema.names if columns is None else None
            wanted = (
                list(columns)
                if columns is not None
                else [n for n in names or [] if n not in CONTENT_COLUMNS]
            )
            if "doc_id" not in wanted:
                wanted = ["doc_id", *wanted]
            table = seg.metadata([c for c in wanted if c in seg.metadata().schema.names])
            live = np.flatnonzero(seg.live)
            table = (
                table.take(pa.array(live))
                .append_column("_segment", pa.array(np.full(live.size, s, np.int32)))
                .append_column("_row", pa.array(live.astype(np.int64)))
            )
            tables.append(table)
        if not tables:
            return pa.table(
                {
                    "doc_id": pa.array([], pa.string()),
                    "_segment": pa.array([], pa.int32()),
                    "_row": pa.array([], pa.int64()),
                }
            )
        return pa.concat_tables(tables, promote_options="default")

    def rejects(self) -> pa.Table:
        """Rows an ingest skipped: ``doc_id``, ``source``, ``row`` (int64), ``reason``; one per
        doc_id, none for a doc_id that is in the index. Empty when there are none."""
        entry = self.manifest.get("rejects")
        if not entry:
            return rejects.empty()
        return rejects.read(self.path / entry["file"])

    def stats(self) -> dict[str, Any]:
        live_vectors = 0
        for seg in self.segments:
            lengths = np.diff(seg.offsets)
            live_vectors += int(lengths[seg.live].sum())
        disk = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return {
            "path": str(self.path),
            "format_version": self.manifest["format_version"],
            "generation": self.generation,
            "documents": self.num_documents,
            "rejected": int((self.manifest.get("rejects") or {}).get("count", 0)),
            "deleted_not_compacted": sum(int(s.deleted.sum()) for s in self.segments),
            "vectors": live_vectors,
            "segments": len(self.segments),
            "dim": self.config.dim,
            "dtype": self.config.dtype,
            "fde_dimension": self.config.fde_config.output_dimension,
            "faiss_factory": self.config.faiss_factory,
            "encoder": self.config.encoder,
            "disk_bytes": disk,
            "bytes_per_document": disk / max(1, self.num_documents),
        }

    def verify(self) -> list[str]:
        """Check every file against its size and checksum; returns the problems (empty = ok)."""
        return verify(self.path)


def _check_rejects_file(root: Path, manifest: dict[str, Any], *, full: bool) -> list[str]:
    entry = manifest.get("rejects")
    if not entry:
        return []
    return check_files(root, {"files": {entry["file"]: entry}}, full=full)


def verify(path: str | Path) -> list[str]:
    """Every problem with an index's files (missing, truncated, checksum mismatch), read from
    the manifest alone so that it works on an index too damaged to open. Empty means intact."""
    root = Path(path)
    manifest = _read_manifest(root)
    problems = _check_rejects_file(root, manifest, full=True)
    for entry in manifest["segments"]:
        extra = {entry["deleted"]["file"]: entry["deleted"]} if entry.get("deleted") else None
        problems += check_files(root / "segments" / entry["name"], entry, full=True, extra=extra)
    return problems


class IndexWriter:
    """The single writer of an index: add, delete, upsert, commit, compact.

    Holds an exclusive lock on ``DIR/LOCK`` from construction until ``close()``; a second
    writer gets ``IndexLockedError``. Changes are buffered until ``commit()``.
    """

    def __init__(self, path: str | Path, *, config: IndexConfig | None = None) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fh = open(self.path / "LOCK", "a+")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._lock_fh.close()
            holder = (self.path / "LOCK").read_text().strip() or "another process"
            raise IndexLockedError(
                f"{self.path} is being written by {holder}; one writer at a time. Wait for it to "
                "finish (readers may open the index meanwhile)"
            ) from exc
        self._lock_fh.seek(0)
        self._lock_fh.truncate()
        self._lock_fh.write(f"pid {os.getpid()}\n")
        self._lock_fh.flush()
        (self.path / "segments").mkdir(exist_ok=True)
        if not (self.path / MANIFEST).is_file():
            if config is None:
                self.close()
                raise InputError(
                    f"{self.path} holds no index yet; pass an IndexConfig to create one"
                )
            manifest = {
                "format_version": FORMAT_VERSION,
                "generation": 0,
                "config": config.to_dict(),
                "segments": [],
                "counts": {"documents": 0, "vectors": 0},
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            write_json_atomic(self.path / MANIFEST, manifest)
        self.index = Index(self.path)
        if config is not None and config != self.index.config:
            self.close()
            raise IndexFormatError(
                f"{self.path} was created with {self.index.config.to_dict()}; it cannot be "
                f"reopened with {config.to_dict()}. Use another directory"
            )
        if (
            config is not None
            and config.encoder
            and self.index.config.encoder
            and config.encoder != self.index.config.encoder
        ):
            self.close()
            raise IndexFormatError(
                f"{self.path} was built with encoder {self.index.config.encoder['name_or_path']!r};"
                f" refusing vectors from {config.encoder['name_or_path']!r}"
            )
        self._collect_garbage()
        self._pending: list[tuple[list[str], np.ndarray, np.ndarray, pa.Table]] = []
        self._pending_ids: set[str] = set()
        self._deletes: set[str] = set()
        self._rejects: list[pa.Table] = []

    # ----------------------------------------------------------------------- lifecycle
    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._lock_fh.closed:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()

    @property
    def config(self) -> IndexConfig:
        return self.index.config

    @property
    def pending_documents(self) -> int:
        return sum(len(p[0]) for p in self._pending)

    # ----------------------------------------------------------------------- changes
    def add(
        self,
        doc_ids: Sequence[Any],
        vectors: Any,
        *,
        offsets: Any = None,
        metadata: pa.Table | None = None,
        upsert: bool = False,
        skip_existing: bool = False,
        source: str = "batch",
    ) -> int:
        """Buffer documents for the next commit. Validates everything first; on any error
        nothing is buffered.

        Parameters
        ----------
        doc_ids
            n ids (strings; integers are converted).
        vectors, offsets
            A sequence of (T_i, d) float arrays, or an (N, d) array with (n + 1,) offsets.
        metadata
            An n-row table: content (``image``, ``text``) and any metadata columns.
        upsert
            Replace documents whose ids are already indexed.
        skip_existing
            Silently drop documents whose ids are already committed (resuming an ingest).
        source
            Where the batch came from (a file name), for error messages.

        Returns
        -------
        The number of documents buffered.
        """
        ids = [str(i) if isinstance(i, (int, np.integer)) else i for i in doc_ids]
        for row, doc_id in enumerate(ids):
            if not isinstance(doc_id, str) or not doc_id:
                raise InputError(
                    f"{source}, row {row}: doc_id must be a non-empty string or an integer, got {doc_id!r}"
                )
        try:
            flat, bounds = as_flat(vectors, self.config.dim, offsets=offsets, kind="document")
        except FDEInputError as exc:
            raise InputError(f"{source}: {_name_documents(str(exc), ids)}") from exc
        if len(ids) != bounds.size - 1:
            raise InputError(f"{source}: {len(ids)} doc_ids but {bounds.size - 1} vector sets")
        if metadata is None:
            metadata = pa.table({})
        if metadata.num_columns and metadata.num_rows != len(ids):
            raise InputError(
                f"{source}: metadata has {metadata.num_rows} rows for {len(ids)} documents"
            )
        seen: dict[str, int] = {}
        for row, doc_id in enumerate(ids):
            if doc_id in seen:
                raise InputError(
                    f"{source}, rows {seen[doc_id]} and {row}: duplicate doc_id {doc_id!r} in one batch; ids must be unique"
                )
            seen[doc_id] = row
        keep = np.ones(len(ids), dtype=bool)
        committed = self.index.locations()
        for row, doc_id in enumerate(ids):
            exists = (
                doc_id in committed and doc_id not in self._deletes
            ) or doc_id in self._pending_ids
            if exists and skip_existing and doc_id not in self._pending_ids:
                keep[row] = False
            elif exists and not upsert:
                raise InputError(
                    f"{source}, row {row}: doc_id {doc_id!r} is already in the index {self.path}; "
                    "pass upsert=True (--on-existing upsert) to replace it or skip_existing=True to resume"
                )
        # Encoders pad with zero vectors; they carry no signal and are not stored.
        nonzero = np.any(flat != 0, axis=1)
        lengths = (
            np.add.reduceat(nonzero.astype(np.int64), bounds[:-1])
            if flat.shape[0]
            else np.zeros(0, np.int64)
        )
        lengths[np.diff(bounds) == 0] = 0
        empty = np.flatnonzero(lengths == 0)
        if empty.size:
            row = int(empty[0])
            raise InputError(
                f"{source}, row {row}: document {ids[row]!r} has only zero (padding) vectors; every document needs at least one non-zero vector"
            )
        if upsert:
            for row, doc_id in enumerate(ids):
                if keep[row] and doc_id in self._pending_ids:
                    self._drop_pending(doc_id)
                if keep[row] and doc_id in committed:
                    self._deletes.add(doc_id)
        rows = np.flatnonzero(keep)
        if rows.size == 0:
            return 0
        token_keep = nonzero & np.repeat(keep, np.diff(bounds))
        flat = flat[token_keep]
        new_offsets = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(lengths[rows], out=new_offsets[1:])
        table = metadata.take(pa.array(rows)) if metadata.num_columns else pa.table({})
        kept_ids = [ids[r] for r in rows]
        self._pending.append((kept_ids, flat, new_offsets, table))
        self._pending_ids.update(kept_ids)
        return int(rows.size)

    def delete(self, doc_ids: Sequence[Any], *, missing_ok: bool = False) -> int:
        """Mark documents deleted at the next commit. Returns how many were found."""
        committed = self.index.locations()
        found = 0
        for doc_id in (str(i) for i in doc_ids):
            if doc_id in self._pending_ids:
                self._drop_pending(doc_id)
                found += 1
            elif doc_id in committed and doc_id not in self._deletes:
                self._deletes.add(doc_id)
                found += 1
            elif not missing_ok:
                raise InputError(
                    f"doc_id {doc_id!r} is not in the index {self.path}; nothing was deleted"
                )
        return found

    def reject(self, records: pa.Table | Sequence[dict[str, Any]]) -> int:
        """Record rows an ingest skipped (nothing the encoder can read), written at the next
        commit into the index's rejects file (``Index.rejects()``).

        Parameters
        ----------
        records
            A table or a list of dicts with ``doc_id`` (str), ``source`` (str, the input file),
            ``row`` (int >= 0, the row in ``source``) and ``reason`` (str). A later record for a
            doc_id replaces an earlier one (a resumed ingest does not duplicate them); a doc_id
            that is in the index after the commit has no record.

        Returns
        -------
        The number of records buffered.
        """
        table = rejects.as_table(records)
        if table.num_rows:
            self._rejects.append(table)
        return table.num_rows

    def upsert(self, doc_ids: Sequence[Any], vectors: Any, **kwargs: Any) -> int:
        return self.add(doc_ids, vectors, upsert=True, **kwargs)

    def _drop_pending(self, doc_id: str) -> None:
        for i, (ids, flat, offsets, table) in enumerate(self._pending):
            if doc_id in ids:
                row = ids.index(doc_id)
                keep = [r for r in range(len(ids)) if r != row]
                lengths = np.diff(offsets)
                token_keep = np.repeat(np.arange(len(ids)) != row, lengths)
                new_offsets = np.zeros(len(keep) + 1, dtype=np.int64)
                np.cumsum(lengths[keep], out=new_offsets[1:])
                new_table = table.take(pa.array(keep, pa.int64())) if table.num_columns else table
                self._pending[i] = (
                    [ids[r] for r in keep],
                    flat[token_keep],
                    new_offsets,
                    new_table,
                )
        self._pending_ids.discard(doc_id)

    # ----------------------------------------------------------------------- commit
    def commit(self) -> int:
        """Write buffered changes and swap the manifest. Returns the new generation."""
        if not self._pending and not self._deletes and not self._rejects:
            return self.index.generation
        manifest = json.loads(json.dumps(self.index.manifest))
        generation = int(manifest["generation"]) + 1
        seg_root = self.path / "segments"
        # Deletions: one new bitmap per touched segment.
        locations = self.index.locations()
        touched: dict[int, np.ndarray] = {}
        for doc_id in self._deletes:
            s, row = locations[doc_id]
            if s not in touched:
                touched[s] = self.index.segments[s].deleted.copy()
            touched[s][row] = True
        for s, bitmap in touched.items():
            entry = manifest["segments"][s]
            fname = f"deleted-g{generation:06d}.npy"
            fpath = seg_root / entry["name"] / fname
            data = npy_bytes(bitmap)
            with open(fpath, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            entry["deleted"] = {"file": fname, "size": len(data), "sha256": sha256_file(fpath)}
            entry["num_deleted"] = int(bitmap.sum())
        if touched:
            fsync_dir(seg_root)
        if self._pending:
            entry = self._write_pending(seg_root, f"seg-g{generation:06d}")
            manifest["segments"].append(entry)
        # Segments whose documents are all deleted are dropped from the manifest.
        manifest["segments"] = [e for e in manifest["segments"] if e["num_deleted"] < e["num_docs"]]
        manifest["rejects"] = self._write_rejects(generation)
        self._swap_manifest(manifest, generation)
        return generation

    def _write_rejects(self, generation: int) -> dict[str, Any] | None:
        """The manifest's rejects entry after this commit; a new file when the records change."""
        current = self.index.manifest.get("rejects")
        if not self._rejects and not (current and self._pending):
            return current  # unchanged
        committed = self.index.locations()
        old = self.index.rejects()
        new = pa.concat_tables(self._rejects) if self._rejects else rejects.empty()
        merged = rejects.merge(
            old,
            new,
            lambda d: d in self._pending_ids or (d in committed and d not in self._deletes),
        )
        if merged.num_rows == 0:
            return None
        if current and merged.equals(old):
            return current
        fname = rejects.file_name(generation)
        data = rejects.to_bytes(merged)
        write_bytes_atomic(self.path / fname, data)
        return {
            "file": fname,
            "size": len(data),
            "sha256": sha256_file(self.path / fname),
            "count": merged.num_rows,
        }

    def _write_pending(self, seg_root: Path, name: str) -> dict[str, Any]:
        ids = [i for p in self._pending for i in p[0]]
        flat = np.concatenate([p[1] for p in self._pending])
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(np.concatenate([np.diff(p[2]) for p in self._pending]), out=offsets[1:])
        tables = [p[3] for p in self._pending]
        table = _merge_tables(tables, [len(p[0]) for p in self._pending])
        table = (
            table.append_column("doc_id", pa.array(ids, pa.string()))
            if "doc_id" not in table.column_names
            else table.set_column(
                table.column_names.index("doc_id"), "doc_id", pa.array(ids, pa.string())
            )
        )
        codes, scales = codecs.encode(flat, self.config.dtype)
        return write_segment(
            seg_root,
            name,
            codes=codes,
            scales=scales,
            offsets=offsets,
            table=table,
            fde_config=self.config.fde_config,
            dtype=self.config.dtype,
            dim=self.config.dim,
            faiss_factory=self.config.faiss_factory,
        )

    def _swap_manifest(self, manifest: dict[str, Any], generation: int) -> None:
        manifest["generation"] = generation
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        docs = sum(e["num_docs"] - e["num_deleted"] for e in manifest["segments"])
        manifest["counts"] = {"documents": docs, "segments": len(manifest["segments"])}
        write_json_atomic(self.path / MANIFEST, manifest)  # the commit
        self._pending, self._pending_ids, self._deletes, self._rejects = [], set(), set(), []
        self.index = Index(self.path, verify="none")
        self._collect_garbage()

    def compact(self) -> int:
        """Rewrite all segments as one, without deleted documents; returns the new generation.

        Document ids, vectors, metadata and FDEs are unchanged (FDEs are recomputed from the
        stored vectors, as they were first computed)."""
        self.commit()
        if len(self.index.segments) <= 1 and not any(s.deleted.any() for s in self.index.segments):
            return self.index.generation
        for s, seg in enumerate(self.index.segments):
            rows = np.flatnonzero(seg.live)
            vectors, offsets = self.index.vectors(s, rows)
            table = seg.metadata().take(pa.array(rows))
            table = table.drop_columns(["doc_id"])
            self._pending.append((list(seg.doc_ids[rows]), vectors, offsets, table))
        manifest = json.loads(json.dumps(self.index.manifest))
        generation = int(manifest["generation"]) + 1
        manifest["segments"] = []
        if self._pending:
            manifest["segments"].append(
                self._write_pending(self.path / "segments", f"seg-g{generation:06d}")
            )
        self._swap_manifest(manifest, generation)
        return generation

    def _collect_garbage(self) -> None:
        """Remove files no committed manifest references (crash leftovers, old bitmaps)."""
        seg_root = self.path / "segments"
        referenced = {e["name"]: e for e in self.index.manifest["segments"]}
        for child in seg_root.iterdir():
            entry = referenced.get(child.name)
            if entry is None:
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(
                    missing_ok=True
                )
                continue
            keep = set(entry["files"]) | (
                {entry["deleted"]["file"]} if entry.get("deleted") else set()
            )
            for f in child.iterdir():
                if f.name not in keep:
                    f.unlink(missing_ok=True)
        kept_rejects = (self.index.manifest.get("rejects") or {}).get("file")
        for f in self.path.iterdir():
            if (f.name.startswith(".") and ".tmp-" in f.name) or (
                rejects.FILE_PATTERN.fullmatch(f.name) and f.name != kept_rejects
            ):
                f.unlink(missing_ok=True)


def _merge_tables(tables: list[pa.Table], rows: list[int]) -> pa.Table:
    """Concatenate metadata tables of several batches; batches without columns get nulls."""
    if all(t.num_columns == 0 for t in tables):
        return pa.table({"_": pa.nulls(sum(rows))}).drop_columns(["_"])
    filled = [
        t if t.num_columns else pa.table({"_latemm_empty": pa.nulls(n)})
        for t, n in zip(tables, rows, strict=True)
    ]
    merged = pa.concat_tables(filled, promote_options="permissive")
    return (
        merged.drop_columns(["_latemm_empty"]) if "_latemm_empty" in merged.column_names else merged
    )


def _name_documents(message: str, ids: list[str]) -> str:
    """Rewrite 'document 3 ...' in an FDE input error as the document's id."""
    import re

    match = re.match(r"document (\d+)(.*)", message, flags=re.S)
    if match and int(match.group(1)) < len(ids):
        row = int(match.group(1))
        return f"row {row}, doc_id {ids[row]!r}{match.group(2)}"
    return message


def create(path: str | Path, config: IndexConfig) -> IndexWriter:
    """Create an index (or reopen an existing one with the same config) for writing."""
    return IndexWriter(path, config=config)


def open_index(path: str | Path, *, verify: str = "fast") -> Index:
    return Index(path, verify=verify)
