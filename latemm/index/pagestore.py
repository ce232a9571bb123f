"""The page store of a multi-field index: each page's content stored once, keyed by doc_id.

A multi-field index keeps every page's text, image (bytes, or a ``{bytes, path}`` struct naming
a file), ``source`` and ``page`` once, under ``DIR/pages/``, however many fields read it; its
vector fields hold only vectors, first stage, doc ids and the metadata columns ``--where``
filters on. The store is a list of immutable Parquet *parts*, each recorded in ``fields.json``
(the index's one commit point) with its row count, size and sha256 (``StoreRecord``):

- a ``pages`` part holds ``doc_id`` and the content columns of some pages (a later part's row
  for a doc_id supersedes an earlier one: an upsert);
- a ``deletes`` part holds only ``doc_id``: pages deleted from here on.

A build writes its part (fsynced, renamed into place) and then commits ``fields.json``; a
crash in between leaves an unreferenced file, which the next writer removes
(``remove_stale_parts``). Readers honour an unfinished delete (the journal's ids are hidden);
``compact`` rewrites the live pages into one part. An index written before the page store
existed records none: its readers fall back to each field's own metadata, as before.

Imports ``index_store`` (files, errors) and ``latemm.data.io`` (reading a corpus in place).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from index_store.errors import IndexCorruptError
from index_store.fsio import (
    fsync_dir,
    full_disk_error,
    index_path,
    is_full,
    open_nofollow,
    sha256_file,
)

STORE_DIR = "pages"
# Content columns (their canonical names, ``latemm.data.io.Columns`` renames the user's): what a
# page store holds and what a vector field over it no longer keeps (``CONTENT_ONLY``).
CONTENT = ("text", "image", "source", "page")
CONTENT_ONLY = ("text", "image")  # source and page stay in the fields too: --where uses them
PART_KINDS = ("pages", "deletes")
_ROW_GROUP = 64  # pages per Parquet row group: a page is read with at most 63 others
_FIX = "the page store is damaged: restore the index from a backup or rebuild it"


@dataclass(frozen=True)
class Part:
    """One file of the store as ``fields.json`` records it."""

    name: str
    kind: str
    rows: int
    size: int
    sha256: str
    columns: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "rows": self.rows,
            "size": self.size,
            "sha256": self.sha256,
            "columns": list(self.columns),
        }

    @classmethod
    def from_dict(cls, payload: Any) -> Part:
        try:
            part = cls(
                name=str(payload["name"]),
                kind=str(payload["kind"]),
                rows=int(payload["rows"]),
                size=int(payload["size"]),
                sha256=str(payload["sha256"]),
                columns=tuple(str(c) for c in payload.get("columns") or ()),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise IndexCorruptError(
                f"page store entry {payload!r} is not readable; {_FIX}"
            ) from exc
        if part.kind not in PART_KINDS:
            raise IndexCorruptError(f"page store part {part.name!r} has kind {part.kind!r}; {_FIX}")
        return part


@dataclass(frozen=True)
class StoreRecord:
    """The committed parts of a page store, in the order they apply."""

    parts: tuple[Part, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"parts": [p.to_dict() for p in self.parts]}

    @classmethod
    def from_dict(cls, payload: Any) -> StoreRecord:
        if not isinstance(payload, dict) or not isinstance(payload.get("parts"), list):
            raise IndexCorruptError(f'"pages" is not a record of parts ({payload!r}); {_FIX}')
        parts = tuple(Part.from_dict(p) for p in payload["parts"])
        names = [p.name for p in parts]
        if len(set(names)) != len(names):
            raise IndexCorruptError(f"the page store lists a part twice; {_FIX}")
        return cls(parts)

    def with_part(self, part: Part | None) -> StoreRecord:
        return self if part is None else StoreRecord((*self.parts, part))


def store_dir(root: str | Path) -> Path:
    return index_path(root, STORE_DIR, what="the page store's folder")


def part_path(root: str | Path, part: Part) -> Path:
    return index_path(root, STORE_DIR, part.name, what=f"page store part {part.name!r}")


class PageStore:
    """The committed pages of a store, read-only; ``hidden`` ids (an unfinished delete) are
    left out. ``pages(doc_ids)`` reads only the rows asked for, once per part."""

    def __init__(self, root: str | Path, record: StoreRecord, hidden: Iterable[str] = ()) -> None:
        self.root = Path(root)
        self.record = record
        self.where: dict[str, tuple[int, int]] = {}  # doc_id -> (part, row)
        for p, part in enumerate(record.parts):
            ids = _read_part(self.root, part, ["doc_id"]).column("doc_id").to_pylist()
            if part.kind == "deletes":
                for doc_id in ids:
                    self.where.pop(doc_id, None)
            else:
                self.where.update((d, (p, r)) for r, d in enumerate(ids))
        for doc_id in hidden:
            self.where.pop(doc_id, None)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self.where

    def __len__(self) -> int:
        return len(self.where)

    def doc_ids(self) -> list[str]:
        return list(self.where)

    def columns_of(self, doc_id: str) -> tuple[str, ...]:
        """The content columns the part holding ``doc_id`` has."""
        return self.record.parts[self.where[doc_id][0]].columns

    def pages(self, doc_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """doc_id -> its content (``text``, ``image``, ``source``, ``page``: those the store
        holds) for each of ``doc_ids`` in the store."""
        by_part: dict[int, list[str]] = {}
        for doc_id in dict.fromkeys(doc_ids):
            if doc_id in self.where:
                by_part.setdefault(self.where[doc_id][0], []).append(doc_id)
        out: dict[str, dict[str, Any]] = {}
        for p, ids in by_part.items():
            part = self.record.parts[p]
            rows = [self.where[d][1] for d in ids]
            table = _read_rows(self.root, part, list(part.columns), rows)
            for doc_id, row in zip(ids, table.to_pylist(), strict=True):
                out[doc_id] = row
        return out

    def columns(self) -> tuple[str, ...]:
        """The content columns some part of the store holds, in ``CONTENT`` order."""
        held = {c for p in self.record.parts if p.kind == "pages" for c in p.columns}
        return tuple(c for c in CONTENT if c in held)

    def read_columns(self, doc_ids: Sequence[str], columns: Sequence[str]) -> pa.Table:
        """A table of ``columns`` with one row per entry of ``doc_ids`` (null where the store
        does not hold the page, or its part has no such column): only those columns are read,
        and only the row groups that hold the pages (a text filter never reads an image)."""
        positions: dict[int, list[int]] = {}
        for i, doc_id in enumerate(doc_ids):
            if doc_id in self.where:
                positions.setdefault(self.where[doc_id][0], []).append(i)
        out: dict[str, pa.Array] = {}
        for name in columns:
            values: pa.Array = pa.nulls(len(doc_ids))
            pieces: list[tuple[np.ndarray, pa.Array]] = []
            for p, where in positions.items():
                part = self.record.parts[p]
                if name not in part.columns:
                    continue
                rows = [self.where[doc_ids[i]][1] for i in where]
                got = _read_rows(self.root, part, [name], rows).column(name).combine_chunks()
                pieces.append((np.asarray(where, np.int64), got))
            if pieces:
                kind = pieces[0][1].type
                arrays = [a if a.type == kind else a.cast(kind) for _, a in pieces]
                missing = len(doc_ids) - sum(len(a) for a in arrays)
                stacked = pa.concat_arrays([*arrays, pa.nulls(missing, kind)])
                order = np.concatenate([w for w, _ in pieces])
                slot = np.full(len(doc_ids), -1, np.int64)
                slot[order] = np.arange(order.size)
                slot[slot < 0] = order.size + np.arange(missing)
                values = stacked.take(pa.array(slot, pa.int64()))
            out[name] = values
        return pa.table(out) if out else pa.table({}).slice(0, 0)


def _read_part(root: Path, part: Part, columns: list[str]) -> pa.Table:
    path = part_path(root, part)
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowInvalid, KeyError) as exc:
        raise IndexCorruptError(
            f"{path}: page store part cannot be read ({exc}); {_FIX} (`latemm verify` lists "
            "what is damaged)"
        ) from exc


def _read_rows(root: Path, part: Part, columns: list[str], rows: Sequence[int]) -> pa.Table:
    """Rows ``rows`` of a part (in that order), reading only the row groups that hold them."""
    path = part_path(root, part)
    try:
        with pq.ParquetFile(path) as parquet:
            sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
            starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            wanted = np.asarray(rows, np.int64)
            groups = np.searchsorted(starts, wanted, side="right") - 1
            pieces, order = [], []
            for g in np.unique(groups):
                local = wanted[groups == g] - starts[g]
                table = parquet.read_row_group(int(g), columns=columns)
                pieces.append(table.take(pa.array(local, pa.int64())))
                order.append(np.flatnonzero(groups == g))
    except (OSError, pa.ArrowInvalid, KeyError, IndexError) as exc:
        raise IndexCorruptError(
            f"{path}: page store part cannot be read ({exc}); {_FIX} (`latemm verify` lists "
            "what is damaged)"
        ) from exc
    table = pa.concat_tables(pieces)
    back = np.argsort(np.concatenate(order), kind="stable")
    return table.take(pa.array(back, pa.int64()))


def open_store(
    root: str | Path, record: StoreRecord | None, hidden: Iterable[str] = ()
) -> PageStore | None:
    """The index's page store, or None for an index written before it existed."""
    return None if record is None else PageStore(root, record, hidden)


# ------------------------------------------------------------------------------ writing
def add_pages(
    root: str | Path,
    record: StoreRecord | None,
    corpus: str | Path,
    *,
    columns: Any,
    images: bool,
    upsert: bool = False,
    batch_size: int = _ROW_GROUP,
) -> StoreRecord:
    """Write the content of ``corpus``'s pages (read in place, batch by batch) that the store
    does not hold yet as one new part, and return the record that lists it; the caller commits
    it in ``fields.json``. ``images``: keep the image column (else text, source and page only).
    A page already in the store is written again when ``upsert``, or when it was stored
    without the image column that is wanted now. Nothing is written when no page is new or the
    corpus has no content column. A full disk is a ``StorageError`` naming the part (removed).
    """
    from latemm.data.io import open_dataset

    root, source = Path(root), Path(corpus)
    record = record or StoreRecord()
    dataset = open_dataset(source)
    rename = {columns.text: "text", columns.image: "image", "source": "source", "page": "page"}
    if not images:
        rename.pop(columns.image)
    wanted = [n for n in rename if n in dataset.schema.names]
    if not wanted:
        return record
    store = PageStore(root, record)
    wanted_canonical = tuple(rename[n] for n in wanted)
    folder = store_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"part-{uuid.uuid4().hex[:16]}.parquet"
    path = index_path(root, STORE_DIR, name)
    rows = 0
    writer = None
    sink = os.fdopen(open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb")
    try:
        for batch in dataset.to_batches(columns=[columns.id, *wanted], batch_size=batch_size):
            table = pa.Table.from_batches([batch])
            ids = [str(v) for v in table.column(columns.id).to_pylist()]
            keep = [
                i
                for i, d in enumerate(ids)
                if upsert or d not in store or not set(wanted_canonical) <= set(store.columns_of(d))
            ]
            if not keep:
                continue
            out = pa.table(
                [pa.array([ids[i] for i in keep], pa.string())]
                + [table.column(n).take(pa.array(keep, pa.int64())) for n in wanted],
                names=["doc_id", *wanted_canonical],
            )
            if writer is None:
                writer = pq.ParquetWriter(sink, out.schema)
            writer.write_table(out.cast(writer.schema), row_group_size=_ROW_GROUP)
            rows += out.num_rows
        if writer is not None:
            writer.close()
        sink.flush()
        os.fsync(sink.fileno())
        sink.close()
    except BaseException as exc:
        try:
            if writer is not None and writer.is_open:
                writer.close()
            sink.close()
        except OSError:
            pass  # already failing: the error below is the one to report
        path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and is_full(exc):  # nothing of this build is committed
            raise full_disk_error(path, exc) from exc
        raise
    if rows == 0:
        path.unlink(missing_ok=True)
        return record
    fsync_dir(folder)
    return record.with_part(_entry(path, "pages", rows, wanted_canonical))


def _entry(path: Path, kind: str, rows: int, columns: tuple[str, ...]) -> Part:
    return Part(path.name, kind, rows, path.stat().st_size, sha256_file(path), columns)


def _write_part(root: Path, kind: str, table: pa.Table) -> Part:
    """A new part holding ``table``, fsynced and renamed into place (a full disk: a
    ``StorageError`` naming it, the partial file removed)."""
    folder = store_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    path = index_path(root, STORE_DIR, f"part-{uuid.uuid4().hex[:16]}.parquet")
    try:
        with os.fdopen(open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as fh:
            pq.write_table(table, fh, row_group_size=_ROW_GROUP)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        if is_full(exc):
            raise full_disk_error(path, exc) from exc
        raise
    fsync_dir(folder)
    columns = tuple(n for n in table.column_names if n != "doc_id")
    return _entry(path, kind, table.num_rows, columns)


def delete_pages(root: str | Path, record: StoreRecord, doc_ids: Sequence[str]) -> StoreRecord:
    """The record with a ``deletes`` part for those of ``doc_ids`` the store holds (the same
    record when it holds none: replaying a delete changes nothing)."""
    store = PageStore(root, record)
    gone = [d for d in dict.fromkeys(doc_ids) if d in store]
    if not gone:
        return record
    table = pa.table({"doc_id": pa.array(gone, pa.string())})
    return record.with_part(_write_part(Path(root), "deletes", table))


def compact_pages(
    root: str | Path, record: StoreRecord, held: set[str] | None = None
) -> StoreRecord:
    """The record of new parts holding only the live pages (deleted and superseded rows
    dropped; with ``held``, pages no field holds too), one part per column layout, streamed
    row group by row group. The same record when there is nothing to drop."""
    root = Path(root)
    store = PageStore(root, record)
    live = {d: pr for d, pr in store.where.items() if held is None or d in held}
    total = sum(p.rows for p in record.parts)
    if len(live) == total and all(p.kind == "pages" for p in record.parts):
        return record
    keep = {pr for pr in live.values()}
    writers: dict[str, tuple[Path, Any, Any, list[int]]] = {}  # schema -> path, writer, sink, rows
    folder = store_dir(root)
    try:
        for p, part in enumerate(record.parts):
            if part.kind != "pages":
                continue
            with pq.ParquetFile(part_path(root, part)) as parquet:
                start = 0
                for batch in parquet.iter_batches(batch_size=_ROW_GROUP):
                    mask = [(p, start + i) in keep for i in range(batch.num_rows)]
                    start += batch.num_rows
                    table = pa.Table.from_batches([batch]).filter(pa.array(mask))
                    if table.num_rows == 0:
                        continue
                    key = table.schema.to_string()
                    if key not in writers:
                        path = index_path(root, STORE_DIR, f"part-{uuid.uuid4().hex[:16]}.parquet")
                        sink = os.fdopen(
                            open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb"
                        )
                        writers[key] = (path, pq.ParquetWriter(sink, table.schema), sink, [0])
                    writers[key][1].write_table(table, row_group_size=_ROW_GROUP)
                    writers[key][3][0] += table.num_rows
        parts = []
        for path, writer, sink, rows in writers.values():
            writer.close()
            sink.flush()
            os.fsync(sink.fileno())
            sink.close()
            columns = tuple(n for n in pq.read_schema(path).names if n != "doc_id")
            parts.append(_entry(path, "pages", rows[0], columns))
    except BaseException as exc:
        for path, writer, sink, _ in writers.values():
            try:
                if writer.is_open:
                    writer.close()
                sink.close()
            except OSError:
                pass  # already failing: the error below is the one to report
            path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and is_full(exc):
            raise full_disk_error(folder, exc) from exc
        raise
    fsync_dir(folder)
    return StoreRecord(tuple(parts))


def remove_stale_parts(root: str | Path, record: StoreRecord | None) -> None:
    """Remove the store's files ``fields.json`` does not list (left by a build that never
    committed, or replaced by a compaction)."""
    folder = Path(root) / STORE_DIR
    if not folder.is_dir() or folder.is_symlink():
        return
    listed = {p.name for p in (record.parts if record else ())}
    for child in folder.iterdir():
        if child.name not in listed and (child.is_file() or child.is_symlink()):
            child.unlink(missing_ok=True)


def verify_store(root: str | Path, record: StoreRecord | None) -> list[str]:
    """Every problem with the store's files: a part missing, of another size or checksum, or
    unreadable. Empty when intact (or when the index has no store)."""
    if record is None:
        return []
    problems = []
    for part in record.parts:
        try:
            path = part_path(root, part)
        except IndexCorruptError as exc:
            problems.append(str(exc))
            continue
        if not path.is_file():
            problems.append(f"{path}: page store part is missing; {_FIX}")
        elif path.stat().st_size != part.size:
            problems.append(
                f"{path}: page store part has {path.stat().st_size} bytes, fields.json records "
                f"{part.size}; {_FIX}"
            )
        elif sha256_file(path) != part.sha256:
            problems.append(f"{path}: page store part's sha256 differs from fields.json; {_FIX}")
    return problems


def read_pages(
    store: PageStore, doc_ids: Sequence[str], allow_files: Sequence[Any] = ()
) -> dict[str, Any]:
    """``Page`` (text and image) of each of ``doc_ids`` the store holds, as
    ``latemm.retrieval.retriever.read_pages`` reads them from an index: an image named by path is
    read only under ``allow_files``, and a page stored without an image is rendered from its source
    PDF when allowed; an error names the store, the doc_id and the fix."""
    from index_store.errors import InputError
    from latemm.data.io import image_bytes, source_page_image
    from latemm.encoders.base import Page

    pages = {}
    for doc_id, cell in store.pages(doc_ids).items():
        try:
            image = image_bytes(cell.get("image"), allow_files)
            if image is None:  # no image stored: the page of its source PDF, if allowed
                image = source_page_image(cell.get("source"), cell.get("page"), allow_files)
        except InputError as exc:
            raise InputError(f"{store.root / STORE_DIR}, doc_id {doc_id!r}: {exc}") from exc
        pages[doc_id] = Page(text=cell.get("text"), image=image)
    return pages


def store_stats(
    root: str | Path, record: StoreRecord, hidden: Iterable[str] = ()
) -> dict[str, Any]:
    """What ``latemm info`` reports of a page store: its pages (an unfinished delete's left
    out), parts and bytes on disk."""
    store = PageStore(root, record, hidden)
    columns = sorted({c for p in record.parts for c in p.columns})
    return {
        "pages": len(store),
        "parts": len(record.parts),
        "columns": columns,
        "disk_bytes": sum(p.size for p in record.parts),
    }
