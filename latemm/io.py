"""The Parquet contract: corpus, queries and run files, streamed in record batches.

- Corpus: ``doc_id`` (string; integers become strings); content in ``image`` (PNG/JPEG bytes or
  the ``{bytes, path}`` struct Hugging Face datasets writes) and/or ``text``, or ``embedding``
  (list of lists of floats, T x d); every other column is metadata.
- Queries: ``query_id`` and ``text`` and/or ``image``, or ``embedding``.
- Runs: ``query_id``, ``doc_id``, ``rank`` (1-based), ``score``, ``fde_score``, ``maxsim_score``,
  ``rerank_score``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from index_store.errors import InputError

RUN_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("doc_id", pa.string()),
        ("rank", pa.int32()),
        ("score", pa.float32()),
        ("fde_score", pa.float32()),
        ("maxsim_score", pa.float32()),
        ("rerank_score", pa.float32()),
    ]
)


@dataclass(frozen=True)
class Columns:
    """Column names in the user's files (remappable, e.g. ViDoRe's ``corpus-id``)."""

    id: str = "doc_id"
    image: str = "image"
    text: str = "text"
    embedding: str = "embedding"


@dataclass(frozen=True)
class Batch:
    """A record batch of a corpus or query file, split into its parts."""

    first_row: int  # row number of the batch's first row in the file
    ids: list[str]
    table: pa.Table  # content and metadata, with canonical column names (image, text, ...)
    vectors: np.ndarray | None  # (N, d) float32 when an embedding column exists
    offsets: np.ndarray | None  # (n + 1,) int64


def open_dataset(path: str | Path) -> ds.Dataset:
    """A Parquet file, or a directory of Parquet files, as a pyarrow dataset."""
    source = Path(path)
    if not source.exists():
        raise InputError(f"{source} does not exist")
    try:
        return ds.dataset(source, format="parquet")
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{source} is not a readable Parquet file or directory: {exc}") from exc


def count_rows(path: str | Path) -> int:
    return int(open_dataset(path).count_rows())


def read_batches(
    path: str | Path,
    *,
    columns: Columns,
    kind: str = "corpus",
    batch_size: int = 256,
    skip_rows: int = 0,
) -> Iterator[Batch]:
    """Stream a corpus or query file as validated ``Batch`` es.

    Raises ``InputError`` naming the file, row and column for missing id columns, wrong types,
    null ids or malformed embeddings.
    """
    source = Path(path)
    dataset = open_dataset(source)
    names = dataset.schema.names
    if columns.id not in names:
        raise InputError(
            f"{source}: no {columns.id!r} column (columns: {', '.join(names)}); name the id column "
            f"with --id-column"
        )
    has_content = any(c in names for c in (columns.image, columns.text, columns.embedding))
    if not has_content:
        raise InputError(
            f"{source}: none of the content columns {columns.image!r}, {columns.text!r}, "
            f"{columns.embedding!r} is present (columns: {', '.join(names)})"
        )
    id_type = dataset.schema.field(columns.id).type
    if not (
        pa.types.is_string(id_type)
        or pa.types.is_large_string(id_type)
        or pa.types.is_integer(id_type)
    ):
        raise InputError(
            f"{source}: column {columns.id!r} has type {id_type}; expected string or integer ids"
        )
    if columns.text in names:
        text_type = dataset.schema.field(columns.text).type
        if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
            raise InputError(
                f"{source}: column {columns.text!r} has type {text_type}; expected strings"
            )
    row = 0
    for record_batch in dataset.to_batches(batch_size=batch_size):
        start = row
        row += record_batch.num_rows
        if row <= skip_rows:
            continue
        table = pa.Table.from_batches([record_batch])
        if start < skip_rows:
            table = table.slice(skip_rows - start)
            start = skip_rows
        yield table_batch(table, columns=columns, kind=kind, source=source, first_row=start)


def table_batch(
    table: pa.Table, *, columns: Columns, kind: str, source: str | Path, first_row: int
) -> Batch:
    """One table of a corpus or query file (rows from ``first_row``, the file's own column
    names) as a validated ``Batch``; ``read_batches`` streams a file through it, and Ray Data
    workers (``latemm.distributed``) call it on the blocks they are handed."""
    source = Path(source)
    rename = {
        columns.id: "query_id" if kind == "queries" else "doc_id",
        columns.image: "image",
        columns.text: "text",
        columns.embedding: "embedding",
    }
    table = table.rename_columns([rename.get(n, n) for n in table.column_names])
    id_name = "query_id" if kind == "queries" else "doc_id"
    id_column = table.column(id_name)
    if id_column.null_count:
        bad = int(np.flatnonzero(pc.is_null(id_column).to_numpy(zero_copy_only=False))[0])
        raise InputError(
            f"{source}, row {first_row + bad}: {columns.id!r} is null; every row needs an id"
        )
    ids = [str(v) for v in id_column.to_pylist()]
    vectors = offsets = None
    if "embedding" in table.column_names:
        vectors, offsets = _embeddings(table.column("embedding"), ids, source, first_row)
        table = table.drop_columns(["embedding"])
    table = table.drop_columns([id_name])
    return Batch(first_row, ids, table, vectors, offsets)


def _embeddings(
    column: pa.ChunkedArray, ids: list[str], source: Path, start: int
) -> tuple[np.ndarray, np.ndarray]:
    """list<list<float>> -> flat (N, d) float32 and (n + 1,) offsets, checked row by row."""
    array = column.combine_chunks()
    if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)) or not (
        pa.types.is_list(array.type.value_type)
        or pa.types.is_large_list(array.type.value_type)
        or pa.types.is_fixed_size_list(array.type.value_type)
    ):
        raise InputError(
            f"{source}: column 'embedding' has type {array.type}; expected a list of lists of floats (T x d)"
        )
    if array.null_count:
        bad = int(np.flatnonzero(pc.is_null(array).to_numpy(zero_copy_only=False))[0])
        raise InputError(f"{source}, row {start + bad}, doc_id {ids[bad]!r}: embedding is null")
    outer = array.offsets.to_numpy().astype(np.int64)
    outer = outer - outer[0]
    inner = array.flatten()
    lengths = pc.list_value_length(inner).to_numpy(zero_copy_only=False)
    if lengths.size == 0:
        bad = 0
        raise InputError(
            f"{source}, row {start + bad}, doc_id {ids[bad]!r}: embedding has no vectors"
        )
    dim = int(lengths[0])
    if (lengths != dim).any():
        vec = int(np.flatnonzero(lengths != dim)[0])
        bad = int(np.searchsorted(outer, vec, side="right") - 1)
        raise InputError(
            f"{source}, row {start + bad}, doc_id {ids[bad]!r}: embedding vectors have different "
            f"dimensions ({int(lengths[vec])} vs {dim}); every vector must have the same dimension"
        )
    values = inner.flatten()
    if not pa.types.is_floating(values.type):
        raise InputError(f"{source}: embedding values have type {values.type}; expected floats")
    flat = values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    return flat, outer


def write_run_trec(table: pa.Table, path: str | Path, *, tag: str = "latemm") -> None:
    """A run table as a TREC run file: ``qid Q0 docid rank score tag``."""
    with open(path, "w", encoding="utf-8") as fh:
        for q, d, r, s in zip(
            table.column("query_id").to_pylist(),
            table.column("doc_id").to_pylist(),
            table.column("rank").to_pylist(),
            table.column("score").to_pylist(),
            strict=True,
        ):
            fh.write(f"{q} Q0 {d} {r} {s:.6f} {tag}\n")


def image_bytes(value: Any) -> bytes | None:
    """PNG/JPEG bytes from a cell of an ``image`` column (bytes or a ``{bytes, path}`` struct)."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        if value.get("path"):
            return Path(value["path"]).read_bytes()
    raise InputError(f"cannot read an image from a cell of type {type(value).__name__}")


def write_parquet(path: str | Path, tables: Iterable[pa.Table], *, empty: str = "") -> int:
    """Stream tables into one Parquet file through a temporary name that replaces ``path`` only
    when every table is written (nothing is left behind on an error); returns the row count.
    ``empty`` is the error message when there are no tables."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    writer = None
    rows = 0
    try:
        for table in tables:
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table.cast(writer.schema))
            rows += table.num_rows
        if writer is None:
            raise InputError(empty or f"nothing to write to {path}: the source has no rows")
        writer.close()
        writer = None
        tmp.replace(path)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return rows
