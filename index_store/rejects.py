"""Rows an ingest skipped (blank pages, empty text): recorded so they can be listed and retried.

A rejects file is an immutable Parquet table ``rejects-g<generation>.parquet`` at the index root
with columns ``doc_id``, ``source`` (the input file), ``row`` (int64) and ``reason``; the manifest
lists the current one with its size and checksum. One record per doc_id: a later record
replaces an earlier one, and a doc_id that is in the index drops its record.
Imports pyarrow and ``index_store`` helpers only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from index_store.errors import IndexCorruptError, InputError

SCHEMA = pa.schema(
    [("doc_id", pa.string()), ("source", pa.string()), ("row", pa.int64()), ("reason", pa.string())]
)
FILE_PATTERN = re.compile(r"rejects-g\d{6,}\.parquet")


def empty() -> pa.Table:
    return SCHEMA.empty_table()


def file_name(generation: int) -> str:
    return f"rejects-g{generation:06d}.parquet"


def as_table(records: pa.Table | Sequence[dict[str, Any]]) -> pa.Table:
    """Validate reject records (a table or a list of dicts) into a table of ``SCHEMA``.

    Raises ``InputError`` naming the record and the column when one is missing or mistyped.
    """
    if isinstance(records, pa.Table):
        missing = [n for n in SCHEMA.names if n not in records.column_names]
        if missing:
            raise InputError(
                f"reject records lack the column(s) {missing} (columns: "
                f"{', '.join(records.column_names) or 'none'}); each record needs "
                "doc_id, source, row and reason"
            )
        rows = records.select(SCHEMA.names).to_pylist()
    else:
        rows = list(records)
    for i, record in enumerate(rows):
        _check_record(i, record)
    return pa.Table.from_pylist(
        [{**{n: r[n] for n in SCHEMA.names}, "row": int(r["row"])} for r in rows], schema=SCHEMA
    )


def _check_record(i: int, record: Any) -> None:
    if not isinstance(record, dict):
        raise InputError(f"reject record {i} is a {type(record).__name__}; expected a dict")
    missing = [n for n in SCHEMA.names if n not in record]
    if missing:
        raise InputError(
            f"reject record {i} lacks {missing}; each record needs doc_id, source, row and reason"
        )
    for name in ("doc_id", "source", "reason"):
        if not isinstance(record[name], str) or (name == "doc_id" and not record[name]):
            raise InputError(
                f"reject record {i}: {name} must be a {'non-empty ' if name == 'doc_id' else ''}"
                f"string, got {record[name]!r}"
            )
    row = record["row"]
    if isinstance(row, bool) or not isinstance(row, (int, np.integer)) or row < 0:
        raise InputError(f"reject record {i}: row must be an int >= 0, got {row!r}")


def merge(old: pa.Table, new: pa.Table, is_live: Callable[[str], bool]) -> pa.Table:
    """``old`` updated by ``new`` (later records win, one per doc_id), without live doc_ids."""
    latest: dict[str, dict[str, Any]] = {}
    for record in old.to_pylist() + new.to_pylist():
        latest.pop(record["doc_id"], None)  # re-inserted: keeps the order of the latest record
        latest[record["doc_id"]] = record
    kept = [r for doc_id, r in latest.items() if not is_live(doc_id)]
    return pa.Table.from_pylist(kept, schema=SCHEMA)


def read(path: Path, source: pa.NativeFile | None = None) -> pa.Table:
    """The records in a rejects file (read from ``source`` when given, a handle pinned at open
    time); ``IndexCorruptError`` naming it when it is unreadable."""
    try:
        table = pq.read_table(source if source is not None else path)
    except (OSError, pa.ArrowException) as exc:
        raise IndexCorruptError(f"cannot read the rejects file {path}: {exc}") from exc
    if table.schema.names != SCHEMA.names:
        raise IndexCorruptError(
            f"the rejects file {path} has columns {table.schema.names}; expected {SCHEMA.names}"
        )
    try:
        return table.cast(SCHEMA)
    except (pa.ArrowException, ValueError) as exc:
        raise IndexCorruptError(f"the rejects file {path} has wrong column types: {exc}") from exc


def to_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())
