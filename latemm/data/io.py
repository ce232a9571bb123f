"""The Parquet contract: corpus, queries and run files, streamed in record batches.

- Corpus: ``doc_id`` (string; integers become strings); content in ``image`` (PNG/JPEG bytes or
  the ``{bytes, path}`` struct Hugging Face datasets writes) and/or ``text``, or ``embedding``
  (list of lists of floats, T x d); every other column is metadata.
- Queries: ``query_id`` and ``text`` and/or ``image``, or ``embedding``.
- Runs: ``query_id``, ``doc_id``, ``rank`` (1-based), ``score``, ``fde_score``, ``maxsim_score``,
  ``rerank_score``.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from index_store.codecs import is_residual
from index_store.errors import InputError

# Columns the index's metadata table adds to locate documents (index_store.Index.metadata).
RESERVED_COLUMNS = ("_segment", "_row")

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
    """A Parquet file, a directory of Parquet files, or a Hugging Face dataset folder
    (``latemm.data.hf_datasets``: ``save_to_disk`` output, ``data/*.parquet`` shards) as a pyarrow
    dataset.

    The files of a directory may have different columns: the dataset has all of them, null where
    a file lacks one. A file that is not Parquet, or a column whose type differs between files,
    is an ``InputError`` naming the file (and column)."""
    source = Path(path)
    if not source.exists():
        raise InputError(f"{source} does not exist")
    from latemm.data.hf_datasets import hf_dataset

    saved = hf_dataset(source)  # a save_to_disk folder or a dataset repo's Parquet shards
    if saved is not None:
        return saved
    if not source.is_dir():
        files = [source]
    else:
        # As pyarrow's discovery: names starting with '.' or '_' are hidden (e.g. _SUCCESS).
        files = sorted(
            p
            for p in source.rglob("*")
            if p.is_file()
            and not any(part.startswith((".", "_")) for part in p.relative_to(source).parts)
        )
    if not files:
        raise InputError(f"{source} is an empty folder: no Parquet files in it")
    schemas = []
    for file in files:
        try:
            schemas.append(pq.read_schema(file))
        except (pa.ArrowInvalid, OSError) as exc:
            where = f"{file} (in {source})" if file != source else str(file)
            raise InputError(
                f"{where} is not a readable Parquet file ({exc}); "
                + ("move it out of the folder" if file != source else "check the path")
            ) from exc
    try:
        schema = pa.unify_schemas(schemas) if schemas else None
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        first: dict[str, tuple[Path, pa.DataType]] = {}
        for file, file_schema in zip(files, schemas, strict=True):
            for field in file_schema:
                seen = first.setdefault(field.name, (file, field.type))
                if seen[1] != field.type:
                    raise InputError(
                        f"{file}: column {field.name!r} has type {field.type}, but {seen[0]} has "
                        f"{seen[1]}; every file of {source} needs the same type per column"
                    ) from exc
        raise InputError(f"{source}: the files' columns cannot be combined: {exc}") from exc
    try:
        return ds.dataset([str(f) for f in files], schema=schema, format="parquet")
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{source} is not a readable Parquet file or directory: {exc}") from exc


def scan_batches(
    dataset: ds.Dataset, *, columns: list[str] | None = None, batch_size: int = 1024
) -> Iterator[pa.RecordBatch]:
    """``dataset.to_batches(columns=, batch_size=)``, file by file in the same order. A Parquet
    file whose columns are the dataset's own is read with ``ParquetFile.iter_batches``: the
    dataset scanner took 3-8 s where it took 1.4-1.7 s for Vaswani's 11,429 embedded abstracts
    (one 396 MB row group, batches of 64). Other files (lacking a column the dataset has) and
    datasets (Arrow files) go through the scanner, which fills missing columns with nulls."""
    files = getattr(dataset, "files", None)
    if not files or not isinstance(getattr(dataset, "format", None), ds.ParquetFileFormat):
        yield from dataset.to_batches(columns=columns, batch_size=batch_size)
        return
    for file in files:
        with pq.ParquetFile(file) as reader:
            if reader.schema_arrow.equals(dataset.schema, check_metadata=False):
                yield from reader.iter_batches(batch_size=batch_size, columns=columns)
                continue
        one = ds.dataset(file, schema=dataset.schema, format=dataset.format)
        yield from one.to_batches(columns=columns, batch_size=batch_size)


def count_rows(path: str | Path) -> int:
    return int(open_dataset(path).count_rows())


# Over 60 lines on purpose: a chain of schema checks, each raising its own error naming the file and column.
def read_batches(
    path: str | Path,
    *,
    columns: Columns,
    kind: str = "corpus",
    batch_size: int = 256,
    skip_rows: int = 0,
    rows: np.ndarray | None = None,
    exclude: Sequence[str] = (),
) -> Iterator[Batch]:
    """Stream a corpus or query file as validated ``Batch`` es.

    ``rows`` (sorted row numbers): only those rows, each run of consecutive ones a batch of its
    own, so every batch's ``first_row`` still names the file's rows. ``exclude``: columns never
    read (another field's vectors).

    Raises ``InputError`` naming the file, row and column for missing id columns, wrong types,
    null ids or malformed embeddings.
    """
    source = Path(path)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"--batch-size must be a positive integer, got {batch_size!r}")
    dataset = open_dataset(source)
    names = dataset.schema.names
    id_name = "query_id" if kind == "queries" else "doc_id"
    reserved = [n for n in names if n in RESERVED_COLUMNS]
    if reserved:
        raise InputError(
            f"{source}: column {reserved[0]!r} has a reserved name (latemm uses _segment and _row "
            "to locate documents); rename it"
        )
    if columns.id != id_name and id_name in names:
        raise InputError(
            f"{source}: --id-column {columns.id!r} would be renamed to {id_name!r}, but the file "
            f"already has a {id_name!r} column; rename or drop one of them"
        )
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
    _check_id_type(source, dataset.schema, columns.id)
    if columns.text in names:
        text_type = dataset.schema.field(columns.text).type
        if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
            raise InputError(
                f"{source}: column {columns.text!r} has type {text_type}; expected strings"
            )
    row = 0
    dim = None  # the vectors' dimension so far: a batch's odd row is the one blamed
    read = [n for n in names if n not in exclude] if exclude else None
    for record_batch in scan_batches(dataset, columns=read, batch_size=batch_size):
        start = row
        row += record_batch.num_rows
        if row <= skip_rows:
            continue
        table = pa.Table.from_batches([record_batch])
        if start < skip_rows:
            table = table.slice(skip_rows - start)
            start = skip_rows
        for first, part in _runs(table, start, rows):
            batch = table_batch(
                part, columns=columns, kind=kind, source=source, first_row=first, dim=dim
            )
            if batch.vectors is not None and batch.vectors.size:
                dim = batch.vectors.shape[1]
            yield batch
        if rows is not None and (rows.size == 0 or row > rows[-1]):
            break  # past the last row asked for: the rest of the file is not read


def _runs(table: pa.Table, start: int, rows: np.ndarray | None) -> Iterator[tuple[int, pa.Table]]:
    """``(first row, slice)`` for each run of consecutive ``rows`` inside ``table`` (whose first
    row is ``start``); the whole table when ``rows`` is None."""
    if rows is None:
        yield start, table
        return
    lo, hi = np.searchsorted(rows, [start, start + table.num_rows])
    inside = rows[lo:hi] - start
    if inside.size == 0:
        return
    breaks = np.flatnonzero(np.diff(inside) != 1) + 1
    for run in np.split(inside, breaks):
        yield start + int(run[0]), table.slice(int(run[0]), int(run.size))


def _check_id_type(source: Path, schema: pa.Schema, name: str) -> None:
    """String or integer ids, plain or dictionary-encoded (a pandas categorical)."""
    id_type = schema.field(name).type
    value_type = id_type.value_type if pa.types.is_dictionary(id_type) else id_type
    if not (
        pa.types.is_string(value_type)
        or pa.types.is_large_string(value_type)
        or pa.types.is_integer(value_type)
    ):
        raise InputError(
            f"{source}: column {name!r} has type {id_type}; expected string or integer ids"
        )


def check_ids(path: str | Path, *, columns: Columns, kind: str = "corpus") -> None:
    """Refuse a file whose id column is missing, of another type, null in some row or holds
    one id twice, naming the file and row(s), as ``read_batches`` and the vector index do;
    reads the id column alone, so a build can check it before any work."""
    source = Path(path)
    dataset = open_dataset(source)
    id_name = "query_id" if kind == "queries" else "doc_id"
    if columns.id not in dataset.schema.names:
        raise InputError(
            f"{source}: no {columns.id!r} column (columns: {', '.join(dataset.schema.names)}); "
            "name the id column with --id-column"
        )
    _check_id_type(source, dataset.schema, columns.id)
    row_of: dict[str, int] = {}
    row = 0
    for batch in dataset.to_batches(columns=[columns.id], batch_size=65536):
        values = batch.column(0)
        if values.null_count:
            bad = int(np.flatnonzero(pc.is_null(values).to_numpy(zero_copy_only=False))[0])
            raise InputError(
                f"{source}, row {row + bad}: {columns.id!r} is null; every row needs an id"
            )
        for i, value in enumerate(values.to_pylist()):
            key = str(value)
            if key in row_of:
                raise InputError(
                    f"{source}, rows {row_of[key]} and {row + i}: duplicate {id_name} {key!r}; "
                    "ids must be unique (the index keeps what was committed; fix the file and "
                    "re-run to resume)"
                )
            row_of[key] = row + i
        row += batch.num_rows


def table_batch(
    table: pa.Table,
    *,
    columns: Columns,
    kind: str,
    source: str | Path,
    first_row: int,
    dim: int | None = None,
) -> Batch:
    """One table of a corpus or query file (rows from ``first_row``, the file's own column
    names) as a validated ``Batch``; ``read_batches`` streams a file through it, and Ray Data
    workers (``latemm.runs.distributed``) call it on the blocks they are handed. ``dim``: the
    dimension of the file's earlier vectors (else the batch's most common one), so that a row
    of another dimension is the one named."""
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
        vectors, offsets = _embeddings(
            table.column("embedding"), ids, source, first_row, id_name, dim
        )
        table = table.drop_columns(["embedding"])
    table = table.drop_columns([id_name])
    return Batch(first_row, ids, table, vectors, offsets)


def column_vectors(
    table: pa.Table, name: str, ids: list[str], *, source: str | Path, first_row: int, kind: str
) -> tuple[np.ndarray, np.ndarray]:
    """Another column of ``table`` holding T x d vectors, checked as ``embedding`` is (rows
    named by their ``kind`` id): flat (N, d) float32 and (n + 1,) offsets."""
    if name not in table.column_names:
        raise InputError(f"{source}: no {name!r} column (columns: {', '.join(table.column_names)})")
    id_name = "query_id" if kind == "queries" else "doc_id"
    return _embeddings(table.column(name), ids, Path(source), first_row, id_name)


def _row_of_vector(outer: np.ndarray, vector: int) -> int:
    return int(np.searchsorted(outer, vector, side="right") - 1)


# Over 60 lines on purpose: a chain of vector checks, each raising its own error naming the row and id.
def _embeddings(
    column: pa.ChunkedArray,
    ids: list[str],
    source: Path,
    start: int,
    id_name: str = "doc_id",
    expected: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """list<list<float>> -> flat (N, d) float32 and (n + 1,) offsets, checked row by row: no
    null, empty, ragged or zero-dimensional vectors, no NaN or inf; a query needs a non-zero
    vector."""
    array = column.combine_chunks()
    if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)) or not (
        pa.types.is_list(array.type.value_type)
        or pa.types.is_large_list(array.type.value_type)
        or pa.types.is_fixed_size_list(array.type.value_type)
    ):
        raise InputError(
            f"{source}: column 'embedding' has type {array.type}; expected a list of lists of floats (T x d)"
        )

    def where(row: int) -> str:
        return f"{source}, row {start + row}, {id_name} {ids[row]!r}"

    if array.null_count:
        bad = int(np.flatnonzero(pc.is_null(array).to_numpy(zero_copy_only=False))[0])
        raise InputError(f"{where(bad)}: embedding is null")
    outer = array.offsets.to_numpy().astype(np.int64)
    outer = outer - outer[0]
    counts = np.diff(outer)
    if (counts == 0).any():
        bad = int(np.flatnonzero(counts == 0)[0])
        raise InputError(f"{where(bad)}: embedding has no vectors; every row needs at least one")
    inner = array.flatten()
    if inner.null_count:
        vec = int(np.flatnonzero(pc.is_null(inner).to_numpy(zero_copy_only=False))[0])
        bad = _row_of_vector(outer, vec)
        raise InputError(f"{where(bad)}: embedding vector {vec - int(outer[bad])} is null")
    lengths = pc.list_value_length(inner).to_numpy(zero_copy_only=False)
    if expected is not None and (lengths == expected).any():
        dim = int(expected)
    else:  # the most common dimension (the first of equally common ones)
        values, first, counts_of = np.unique(lengths, return_index=True, return_counts=True)
        dim = int(values[np.lexsort((first, -counts_of))[0]])
    if (lengths != dim).any():
        vec = int(np.flatnonzero(lengths != dim)[0])
        bad = _row_of_vector(outer, vec)
        raise InputError(
            f"{where(bad)}: embedding vectors have different "
            f"dimensions ({int(lengths[vec])} vs {dim}); every vector must have the same dimension"
        )
    if dim == 0:
        raise InputError(f"{where(0)}: embedding vectors have dimension 0")
    values = inner.flatten()
    if not pa.types.is_floating(values.type):
        raise InputError(f"{source}: embedding values have type {values.type}; expected floats")
    if values.null_count:
        value = int(np.flatnonzero(pc.is_null(values).to_numpy(zero_copy_only=False))[0])
        bad = _row_of_vector(outer, value // dim)
        raise InputError(f"{where(bad)}: embedding has a null value")
    flat = values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    finite = np.isfinite(flat).all(axis=1)
    if not finite.all():
        bad = _row_of_vector(outer, int(np.flatnonzero(~finite)[0]))
        raise InputError(f"{where(bad)}: embedding contains NaN or inf; fix the vectors")
    if id_name == "query_id":
        nonzero = np.add.reduceat(np.any(flat != 0, axis=1).astype(np.int64), outer[:-1])
        if (nonzero == 0).any():
            bad = int(np.flatnonzero(nonzero == 0)[0])
            raise InputError(
                f"{where(bad)}: the query's vectors are all zero, so every document would score "
                "the same; fix or drop the query"
            )
    return flat, outer


def check_storable(
    vectors: np.ndarray,
    offsets: np.ndarray | None,
    ids: list[str],
    dtype: str,
    source: str | Path,
    first_row: int | None = None,
    *,
    refine: str | None = None,
) -> None:
    """Refuse vectors the index's storage ``dtype`` (or its ``refine`` copy) cannot hold,
    naming the document and the fix, before they reach the disk: float16 tops out at 65504
    (larger values become inf), and a vector whose values all lie below its smallest normal
    number (6.1e-05) would be flushed to zero or keep only a few bits (every score 0, pages
    ranked by id)."""
    # residual codes keep float16 centroids and store the segments too small to train in float16
    if (dtype != "float16" and not is_residual(dtype) and refine != "float16") or not vectors.size:
        return
    fix = (
        "keep the copy with --refine int8" if refine == "float16" else "index with --dtype float32"
    )
    if offsets is None:  # one vector per document
        offsets = np.arange(len(ids) + 1)
    largest = np.abs(vectors).max(axis=1)  # (T,): one pass over the vectors for both checks
    limit = float(np.finfo(np.float16).max)
    too_big = largest > limit
    if too_big.any():
        vec = int(np.flatnonzero(too_big)[0])
        row = _row_of_vector(offsets, vec)
        raise InputError(
            f"{source}{'' if first_row is None else f', row {first_row + row}'}, doc_id "
            f"{ids[row]!r}: a vector value exceeds {limit:.0f}, the largest "
            f"float16 value; {fix} (or normalise the vectors)"
        )
    tiny = float(np.finfo(np.float16).tiny)
    too_small = (largest > 0) & (largest < tiny)
    if too_small.any():
        vec = int(np.flatnonzero(too_small)[0])
        row = _row_of_vector(offsets, vec)
        raise InputError(
            f"{source}{'' if first_row is None else f', row {first_row + row}'}, doc_id "
            f"{ids[row]!r}: vector {vec - int(offsets[row])} has no value larger than "
            f"{float(largest[vec]):.3g}, below float16's smallest normal value ({tiny:.2g}), so "
            f"float16 storage would round it to zero; normalise the vectors (or {fix})"
        )


def trec_safe(
    value: str,
    what: str,
    where: str,
    fix: str = "leave out --trec and use the Parquet run (no limit on ids), or rename the ids",
) -> str:
    """``value`` if it can be a field of a whitespace-separated TREC line, else an ``InputError``
    naming it (TREC files cannot hold ids with spaces, tabs or newlines; Parquet files can)."""
    if not value or any(c.isspace() for c in value):
        raise InputError(
            f"{where}: {what} {value!r} contains whitespace (or is empty), which a TREC file "
            f"cannot hold: its fields are separated by whitespace; {fix}"
        )
    return value


def write_run_trec(table: pa.Table, path: str | Path, *, tag: str = "latemm") -> None:
    """A run table as a TREC run file: ``qid Q0 docid rank score tag``. Ids with whitespace are
    refused (``trec_safe``); nothing is written then."""
    columns = [table.column(c).to_pylist() for c in ("query_id", "doc_id", "rank", "score")]
    lines = [
        f"{trec_safe(q, 'query_id', str(path))} Q0 {trec_safe(d, 'doc_id', str(path))} "
        f"{r} {s:.6f} {tag}\n"
        for q, d, r, s in zip(*columns, strict=True)
    ]
    tmp = Path(path).with_name(f".{Path(path).name}.partial")
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(path)


# The largest page image file read from a path: far above any page scan (a 600 dpi A4 PNG is
# ~30 MB), far below what would exhaust memory.
MAX_IMAGE_FILE_BYTES = 256 * 1024 * 1024
ANY_FILE = None  # ``allow_files`` for the user's own corpus: any path it names may be read


def read_image_file(
    path: str | Path,
    allow_files: Sequence[str | Path] | None,
    *,
    max_bytes: int = MAX_IMAGE_FILE_BYTES,
    refused: str = "not read",
) -> bytes:
    """The bytes of a page image that a cell names by path: the one file-read policy of every
    reader of page images (``latemm show`` and its heat map, the reranker, the encoders).

    ``allow_files`` None (``ANY_FILE``) reads any path: the user's own corpus at index time.
    A list (paths an index names, read at search or show time: an index is untrusted data) reads
    only files under those folders, after resolving links, so a link cannot lead out of them.
    Either way the file is checked before reading: a regular file (``/dev/zero``, a FIFO or a
    folder is refused) of at most ``max_bytes``. A refusal is an ``InputError`` naming the
    path and the fix; ``refused`` says what happens to it (``not read``, ``not shown``)."""
    if allow_files is not None:
        resolved = Path(path).resolve()
        folders = [Path(folder).resolve() for folder in allow_files]
        if not any(resolved.is_relative_to(folder) for folder in folders):
            raise InputError(
                f"image file {path} {refused}: pass --allow-files with its folder to read it "
                "(page images that an index names by path are read only under --allow-files)"
            )
    try:
        info = os.stat(path)
    except OSError as exc:
        raise InputError(f"image file {path} does not exist or cannot be read ({exc})") from exc
    if not stat.S_ISREG(info.st_mode):
        raise InputError(
            f"image file {path} {refused}: it is not a regular file (a device, FIFO or folder); "
            "point the image path at a PNG or JPEG file"
        )
    if info.st_size > max_bytes:
        raise InputError(
            f"image file {path} {refused}: it is {info.st_size:,} bytes, over the "
            f"{max_bytes:,}-byte limit for a page image; downscale it (latemm ingest --max-pixels)"
        )
    with open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)  # the file may have grown since the stat
    if len(data) > max_bytes:
        raise InputError(
            f"image file {path} {refused}: it grew past the {max_bytes:,}-byte limit while read"
        )
    return data


def image_bytes(
    value: Any, allow_files: Sequence[str | Path] | None = ANY_FILE, *, refused: str = "not read"
) -> bytes | None:
    """PNG/JPEG bytes from a cell of an ``image`` column (bytes or a ``{bytes, path}`` struct);
    a path is read by ``read_image_file`` under ``allow_files``."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        if value.get("path"):
            return read_image_file(value["path"], allow_files, refused=refused)
    raise InputError(f"cannot read an image from a cell of type {type(value).__name__}")


def source_page_image(
    source: Any, page: Any, allow_files: Sequence[str | Path], *, dpi: float = 96.0
) -> bytes | None:
    """A page rendered from its source PDF, for an index that keeps no page images (a text-only
    index without ``--keep-images``): the row's ``source`` (the PDF's file name, as ``latemm
    ingest`` records it) looked up in each ``--allow-files`` folder, read under the same policy
    as page images (``read_image_file``: under those folders, a regular file, size-capped), and
    its 1-based ``page`` rendered as PNG. None when there is no such PDF or page."""
    if not allow_files or not isinstance(source, str) or not str(source).endswith(".pdf"):
        return None
    if not isinstance(page, int) or page < 1 or Path(source).is_absolute() or ".." in source:
        return None
    import io as _io

    from index_store.errors import require

    for folder in allow_files:
        candidate = Path(folder) / source
        if not candidate.is_file():
            continue
        data = read_image_file(candidate, allow_files)
        pdf = require("pypdfium2", "pdf").PdfDocument(data)
        try:
            if page > len(pdf):
                return None
            buffer = _io.BytesIO()
            pdf[page - 1].render(scale=dpi / 72.0).to_pil().save(buffer, format="PNG")
            return buffer.getvalue()
        finally:
            pdf.close()
    return None


def image_problem(data: bytes) -> str | None:
    """Why an encoder could not decode ``data`` without risk, from its header alone: an image
    over Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS`` x 2, where Pillow
    refuses to decode). None when the header is within it, or not an image Pillow knows (that
    is the encoder's error to give)."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.size  # noqa: B018 - the header is parsed by open
    except Image.DecompressionBombError as exc:
        return f"an image too large to decode safely ({exc})"
    except Exception:  # noqa: BLE001 - not decodable: the encoder names the row
        return None
    return None


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
