"""The indexing jobs behind the CLI, usable from Python: index a corpus file, encode a corpus.

They stream their input in record batches, show progress, and are safe to interrupt: indexing
commits every ``commit_every`` rows and a re-run skips what is committed or rejected. Searching a
query file is ``latemm.runs.jobs`` (above this module, which never imports it).

Indexing is three stages: ``resolve_config`` (the index's configuration and the one compatibility
check), ``encoded_batches`` (rows to vectors: done ids skipped before encoding, rows the encoder
cannot read turned into rejects records) and a writer loop (``_write_batches``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sequence, Set
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from index_store import Index, IndexConfig, codecs, create, default_fde_config
from index_store.codecs import is_residual
from index_store.config import DEFAULT_REFINE_DEPTH, new_index_dtype
from index_store.errors import InputError
from index_store.rejects import as_table as rejects_table
from index_store.rejects import read as read_rejects
from index_store.store import INDEX_CODEBOOK_VECTORS, IndexWriter
from latemm.data.io import (
    Batch,
    Columns,
    check_storable,
    count_rows,
    image_bytes,
    image_problem,
    open_dataset,
    read_batches,
    write_parquet,
)
from latemm.encoders.base import Encoder, Page, check_recorded

ON_EXISTING = ("skip", "upsert", "error")
ON_EMPTY = ("skip", "error")


@dataclass(frozen=True)
class IndexReport:
    """What one ``index_corpus`` run did.

    ``added``: documents added; ``skipped``: rows already done (committed, or rejected by an
    earlier run), not encoded again; ``rejected``: rows of this run with nothing the encoder can
    read, recorded in the index's rejects (``Index.rejects()``); ``documents``, ``generation``:
    the index after the run.
    """

    added: int
    skipped: int
    documents: int
    generation: int
    rejected: int = 0


@dataclass(frozen=True)
class EncodedBatch:
    """One record batch of a corpus, ready for the writer: its new rows' vectors and metadata,
    the rows it rejected and the rows it skipped as already done."""

    first_row: int  # row number of the batch's first row in the file
    rows: int  # rows of the file the batch covers
    ids: list[str]  # n documents to add
    vectors: np.ndarray  # (N, d) float32
    offsets: np.ndarray  # (n + 1,) int64
    metadata: pa.Table  # n rows: content and metadata columns
    rejects: list[dict[str, Any]]  # doc_id, source, row, reason of rows with nothing to read
    skipped: int  # rows whose ids were already done


@dataclass(frozen=True)
class CorpusView:
    """The part of a corpus file one index takes, read in place (a named field's pages,
    ``latemm.index.fields``): only ``rows`` (sorted row numbers of the file), never the columns in
    ``exclude`` (other fields' vectors). ``rejects``: records of the rows left out, recorded as
    the index's rejects when it reads precomputed vectors. ``content=False``: the pages' text
    and image stay out of the index's metadata (a page store holds them,
    ``latemm.index.pagestore``)."""

    rows: np.ndarray  # (n,) int64, sorted
    exclude: tuple[str, ...] = ()
    rejects: tuple[dict[str, Any], ...] = ()
    content: bool = True


def progress_bar(total: int | None, desc: str, enabled: bool, unit: str = "doc") -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr)


def batch_pages(
    batch: Batch,
    source: Path,
    rows: Sequence[int] | None = None,
    *,
    for_reranker: bool = False,
    kind: str = "doc_id",
) -> list[Page]:
    """The pages of a batch's rows (all of them by default); a row with no content at all, or
    an image that cannot be read, is an error naming the file, row and id. ``for_reranker``:
    the rows are queries with precomputed vectors, read only by the reranker."""
    texts = batch.table.column("text").to_pylist() if "text" in batch.table.column_names else None
    images = (
        batch.table.column("image").to_pylist() if "image" in batch.table.column_names else None
    )
    pages = []
    for i in range(len(batch.ids)) if rows is None else rows:
        text = texts[i] if texts else None
        image = None
        if images and images[i] is not None:
            try:
                image = image_bytes(images[i])
            except (InputError, OSError) as exc:
                raise InputError(
                    f"{source}, row {batch.first_row + i}, {kind} {batch.ids[i]!r}: {exc}"
                ) from exc
        if text is None and image is None:
            where = f"{source}, row {batch.first_row + i}"
            if for_reranker:
                raise InputError(
                    f"{where}, query_id {batch.ids[i]!r}: the reranker reads a query's text or "
                    "image, and this row has only an embedding; add a 'text' or 'image' value "
                    "or search without --rerank"
                )
            raise InputError(
                f"{where}, {kind} {batch.ids[i]!r}: no text, image or embedding; every row "
                "needs content"
            )
        pages.append(Page(text=text, image=image))
    return pages


@contextmanager
def rows_named(
    batch: Batch, source: Path, kind: str = "doc_id", rows: Sequence[int] | None = None
) -> Iterator[None]:
    """Turn an encoder's complaint about item i of the call into one that names the file, row
    and id the item came from (``rows[i]`` of the batch when the call took a subset)."""
    try:
        yield
    except InputError as exc:
        if exc.item is None:
            raise
        i = exc.item if rows is None else rows[exc.item]
        raise InputError(
            f"{source}, row {batch.first_row + i}, {kind} {batch.ids[i]!r}: {exc}"
        ) from exc


def new_index_config(
    dim: int,
    *,
    encoder: Encoder | None = None,
    dtype: str = "auto",
    faiss_factory: str = "auto",
    single_vector: bool = False,
    refine: str | None = None,
    refine_depth: int = DEFAULT_REFINE_DEPTH,
) -> IndexConfig:
    """The configuration ``latemm index`` gives a new index of ``dim``-dimensional vectors
    (``dtype="auto"``: ``index_store.config.new_index_dtype``)."""
    dtype = new_index_dtype(dtype, dim, single_vector)
    # A residual index's default FDE is half the float16 one's (index_store.config).
    residual = is_residual(dtype)
    fde = default_fde_config(dim, dtype=dtype) if residual else default_fde_config(dim)
    return IndexConfig(
        dim=dim,
        dtype=dtype,
        fde=fde,
        faiss_factory=faiss_factory,
        encoder=encoder.info.to_dict() if encoder is not None else None,
        single_vector=single_vector,
        refine=refine,
        refine_depth=refine_depth,
        # A build commits every few hundred documents: one codebook for the whole index,
        # not one per commit (IndexConfig.residual_codebook).
        residual_codebook="index" if residual else "segment",
        # Its search defaults: PLAID's candidate generation, the best refine_depth decoded
        # (experiments/RESULTS.md section 5d: above float16's recall and no slower).
        first_stage="centroids" if residual and not single_vector else "fde",
    )


def resolve_config(
    index_dir: str | Path,
    *,
    dim: int,
    encoder: Encoder | None,
    dtype: str = "auto",
    faiss_factory: str = "auto",
    single_vector: bool = False,
    source: str | Path = "the corpus",
    refine: str | None = None,
    refine_depth: int = DEFAULT_REFINE_DEPTH,
) -> IndexConfig:
    """The configuration an ingest writes with: the index's own when ``index_dir`` holds one,
    after the one compatibility check (same encoder, same dimension), else a new one.

    ``encoder`` is the encoder that makes the vectors (None for precomputed embeddings); ``dim``
    the dimension of the vectors to be added. ``dtype``, ``faiss_factory``, ``single_vector``,
    ``refine`` and ``refine_depth`` only apply to a new index.
    """
    if not (Path(index_dir) / "manifest.json").is_file():
        return new_index_config(
            dim,
            encoder=encoder,
            dtype=dtype,
            faiss_factory=faiss_factory,
            single_vector=single_vector,
            refine=refine,
            refine_depth=refine_depth,
        )
    config = Index.open(index_dir, verify="none").config
    if encoder is not None:
        check_recorded(config.encoder, encoder.info, index_dir)
    if config.dim != dim:
        raise InputError(
            f"{source}: vectors have dimension {dim}, the index {index_dir} stores {config.dim}; "
            "index into a new folder, or use the vectors' model the index was built with"
        )
    return config


def _reject(
    batch: Batch, i: int, source: Path, reason: str, on_empty: str, reader: str
) -> dict[str, Any]:
    """The rejects record of row i of the batch, or (``on_empty='error'``) the error."""
    row, doc_id = batch.first_row + i, batch.ids[i]
    if on_empty == "error":
        raise InputError(
            f"{source}, row {row}, doc_id {doc_id!r}: document {row} is {reason}, so {reader} has "
            "nothing to read in it; drop the row or give it content, or leave out --on-empty "
            "error (on_empty='skip') to skip such rows and record them in the index's rejects"
        )
    return {"doc_id": doc_id, "source": str(source), "row": row, "reason": reason}


def _take(
    vectors: np.ndarray, offsets: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The multi-vectors of the documents where ``keep`` ((n,) bool) is True: (N', d), (n' + 1,)."""
    if keep.all():
        return vectors, offsets
    lengths = np.diff(offsets)
    kept = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
    np.cumsum(lengths[keep], out=kept[1:])
    return vectors[np.repeat(keep, lengths)], kept


def _has_signal(vectors: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(n,) bool: the documents with at least one non-zero vector (encoders pad with zeros)."""
    nonzero = np.any(vectors != 0, axis=1).astype(np.int64)  # (N,)
    counts = np.add.reduceat(nonzero, offsets[:-1]) if nonzero.size else np.zeros(offsets.size - 1)
    counts[np.diff(offsets) == 0] = 0  # reduceat reads the next document's row for empty ones
    return np.asarray(counts > 0)


def _check_values(
    vectors: np.ndarray,
    offsets: np.ndarray,
    rows: list[int],
    batch: Batch,
    source: Path,
    dim: int | None,
) -> None:
    """Vectors the index cannot take are malformed input: an error naming file, row and id."""
    if dim is not None and rows and vectors.shape[1] != dim:
        i = rows[0]
        raise InputError(
            f"{source}, row {batch.first_row + i}, doc_id {batch.ids[i]!r}: vectors have "
            f"dimension {vectors.shape[1]}, the index stores {dim}; every vector of an index "
            "has one dimension (index into a new folder)"
        )
    finite = np.isfinite(vectors).all(axis=1).astype(np.int64)  # (N,)
    if finite.size and not finite.all():
        j = int(np.searchsorted(offsets, int(np.flatnonzero(finite == 0)[0]), side="right") - 1)
        i = rows[j]
        raise InputError(
            f"{source}, row {batch.first_row + i}, doc_id {batch.ids[i]!r}: the vectors hold "
            "NaN or infinite values; fix the embedding (or the model's dtype) and re-run"
        )


def _check_unique(batch: Batch, source: Path, row_of: dict[str, int]) -> None:
    for i, doc_id in enumerate(batch.ids):
        if doc_id in row_of:
            raise InputError(
                f"{source}, rows {row_of[doc_id]} and {batch.first_row + i}: duplicate "
                f"doc_id {doc_id!r}; ids must be unique (the index keeps what was "
                "committed; fix the file and re-run to resume)"
            )
        row_of[doc_id] = batch.first_row + i


def _readable_pages(
    batch: Batch, fresh: Sequence[int], source: Path, encoder: Encoder, on_empty: str
) -> tuple[dict[int, Page], list[dict[str, Any]]]:
    """The batch's ``fresh`` rows the encoder can read, as pages by row; the others become
    rejects records (or, with ``on_empty='error'``, the error)."""
    reader = f"the encoder {encoder.info.name_or_path!r}"
    pages = dict(zip(fresh, batch_pages(batch, source, fresh), strict=True))
    readable, rejects = {}, []
    for i, page in pages.items():
        reason = encoder.can_read(page)
        if reason is None and page.image is not None and "image" in encoder.reads:
            reason = image_problem(page.image)  # a decompression bomb: rejected, not decoded
        if reason is None:
            readable[i] = page
        else:
            rejects.append(_reject(batch, i, source, reason, on_empty, reader))
    return readable, rejects


def _encode_rows(
    batch: Batch,
    fresh: list[int],
    source: Path,
    encoder: Encoder,
    on_empty: str,
    known: dict[str, np.ndarray] | None = None,
) -> tuple[list[int], np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Encode the batch's ``fresh`` rows that the encoder can read; the others become rejects
    records. Returns (encoded rows, (N, d) vectors, (n + 1,) offsets, records). ``known``:
    vectors the encoder already made, by doc id (``codebook_sample``'s pages), taken out of it
    instead of encoding those pages again."""
    pages, rejects = _readable_pages(batch, fresh, source, encoder, on_empty)
    rows = list(pages)
    if not rows:
        return rows, np.zeros((0, encoder.dim), np.float32), np.zeros(1, np.int64), rejects
    todo = [i for i in rows if not known or batch.ids[i] not in known]
    if todo:
        with rows_named(batch, source, rows=todo):
            encoded = encoder.encode_documents([pages[i] for i in todo])
        if len(todo) == len(rows):
            return rows, encoded.vectors, encoded.offsets, rejects
    made = dict(zip(todo, _split(encoded.vectors, encoded.offsets), strict=True)) if todo else {}
    assert known is not None
    parts = [made[i] if i in made else known.pop(batch.ids[i]) for i in rows]
    offsets = np.zeros(len(parts) + 1, np.int64)
    np.cumsum([len(v) for v in parts], out=offsets[1:])
    return rows, np.concatenate(parts), offsets, rejects


def _split(vectors: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    """Each document's (t, d) vectors out of (N, d) ``vectors`` and (n + 1,) ``offsets``."""
    return [vectors[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def _unread_images(encoder: Encoder | None, cols: Columns, keep: bool | None) -> list[str]:
    """The image column when the index should not store it: asked so (``keep=False``), or by
    default when the encoder reads no images."""
    if keep is None:
        keep = encoder is None or "image" in encoder.reads
    return [] if keep else [cols.image]


def encoded_batches(
    source: Path,
    *,
    columns: Columns,
    encoder: Encoder | None,
    done: Set[str] = frozenset(),
    dim: int | None = None,
    on_empty: str = "skip",
    batch_size: int = 64,
    pool_factor: int = 1,
    drop: Sequence[str] = (),
    view: CorpusView | None = None,
    known: dict[str, np.ndarray] | None = None,
) -> Iterator[EncodedBatch]:
    """The corpus's rows, batch by batch, as vectors ready to add (the columns in ``drop`` left
    out of their metadata).

    Rows whose ids are in ``done`` are skipped before anything is encoded. ``encoder`` None
    takes the file's ``embedding`` column. A row the encoder cannot read (``Encoder.can_read``)
    or whose vectors are all zero becomes a rejects record (``on_empty='skip'``) or an error.
    A duplicate id anywhere in the file, vectors of another dimension than ``dim`` and NaN or
    infinite values are errors naming the file, row and id. ``view``: only its rows and
    columns are read (``CorpusView``). ``known``: the encoder's vectors of pages it has read
    already, by doc id (``_encode_rows``).
    """
    row_of: dict[str, int] = {}
    reader = f"the encoder {encoder.info.name_or_path!r}" if encoder else "the index"
    # An encoder reads whole batches, the view's rows among them (a batch per run of rows
    # would hand it a few pages at a time); precomputed vectors are read run by run, since a
    # row outside the view may have none.
    whole = view is not None and encoder is not None
    for batch in read_batches(
        source,
        columns=columns,
        batch_size=batch_size,
        rows=view.rows if view is not None and not whole else None,
        exclude=view.exclude if view is not None else (),
    ):
        _check_unique(batch, source, row_of)
        member = np.ones(len(batch.ids), dtype=bool)
        if whole:
            numbers = np.arange(batch.first_row, batch.first_row + len(batch.ids))
            member = np.isin(numbers, view.rows)  # type: ignore[union-attr]
        fresh = [i for i, doc_id in enumerate(batch.ids) if member[i] and doc_id not in done]
        rejects: list[dict[str, Any]] = []
        if encoder is None:
            assert batch.vectors is not None and batch.offsets is not None  # no encoder: embeddings
            keep = np.zeros(len(batch.ids), dtype=bool)
            keep[fresh] = True
            vectors, offsets = _take(batch.vectors, batch.offsets, keep)
            rows = fresh
        else:
            rows, vectors, offsets, rejects = _encode_rows(
                batch, fresh, source, encoder, on_empty, known
            )
        if pool_factor > 1 and rows:
            from latemm.ranking.pooling import pool_tokens

            vectors, offsets = pool_tokens(vectors, offsets, pool_factor)
        signal = _has_signal(vectors, offsets)
        for j in np.flatnonzero(~signal):
            why = "without vectors" if offsets[j + 1] == offsets[j] else "all-zero vectors"
            rejects.append(_reject(batch, rows[j], source, why, on_empty, reader))
        if not signal.all():
            vectors, offsets = _take(vectors, offsets, signal)
            rows = [r for r, s in zip(rows, signal, strict=True) if s]
        _check_values(vectors, offsets, rows, batch, source, dim)
        yield EncodedBatch(
            first_row=batch.first_row,
            rows=int(member.sum()),
            ids=[batch.ids[i] for i in rows],
            vectors=vectors,
            offsets=offsets,
            metadata=batch.table.take(pa.array(rows, pa.int64())).drop_columns(
                [c for c in drop if c in batch.table.column_names]
            ),
            rejects=sorted(rejects, key=lambda r: r["row"]),
            skipped=int(member.sum()) - len(fresh),
        )


def index_corpus(
    corpus: str | Path,
    index_dir: str | Path,
    *,
    encoder: Encoder | None = None,
    columns: Columns | None = None,
    dtype: str = "auto",
    faiss_factory: str = "auto",
    single_vector: bool = False,
    commit_every: int = 512,
    on_existing: str = "skip",
    on_empty: str = "skip",
    batch_size: int = 64,
    pool_factor: int = 1,
    progress: bool = True,
    refine: str | None = None,
    refine_depth: int = DEFAULT_REFINE_DEPTH,
    keep_images: bool | None = None,
    view: CorpusView | None = None,
    codebook: DrawnCodebook | None = None,
) -> IndexReport:
    """Add a Parquet corpus (file or directory) to an index, creating it if needed.

    With an ``embedding`` column no model is used; otherwise ``encoder`` encodes the pages.
    ``on_existing``: ``skip`` (resume: committed and rejected ids are not read again), ``upsert``
    or ``error``. ``on_empty``: ``skip`` records rows with nothing the encoder can read (blank
    pages, empty text, all-zero vectors) in the index's rejects (``Index.rejects()``) and goes
    on; ``error`` stops at the first. ``pool_factor`` > 1 pools each document's vectors
    (``latemm.ranking.pooling``) before storing them. ``single_vector``: a new index holds one
    vector per document, searched directly by faiss instead of through an FDE. ``refine`` (with
    compact ``dtype`` codes): a new index also keeps the vectors in that dtype for the final exact
    pass of each query's ``refine_depth`` best candidates (``IndexConfig.refine``).
    ``dtype``: how a new index stores the vectors; ``auto`` (default) is res4, PLAID's centroid
    + 4-bit residual codes, searched by their centroids (``index_store.config.new_index_dtype``:
    float16 for single vectors). ``keep_images``: store the page images in the index; by default only when the encoder
    reads images (a text encoder's index keeps the text, source and page, not the images).
    ``view``: index only part of the file, read in place (``CorpusView``: a named field).
    ``codebook``: the residual codebook a new index is coded with (``draw_codebook``: the one
    a collection's shards share), instead of one drawn from this corpus.
    """
    if on_existing not in ON_EXISTING:
        raise InputError(f"on_existing must be 'skip', 'upsert' or 'error', got {on_existing!r}")
    if on_empty not in ON_EMPTY:
        raise InputError(f"on_empty must be 'skip' or 'error', got {on_empty!r}")
    source = Path(corpus)
    cols = columns or Columns()
    total = rows_to_read(source, view)
    if total == 0:
        raise InputError(f"{source} has no rows")
    used = _encoder_used(source, cols, encoder)
    dim = used.dim if used is not None else first_dim(source, cols, view)
    config = resolve_config(
        index_dir,
        dim=dim,
        encoder=used,
        dtype=dtype,
        faiss_factory=faiss_factory,
        single_vector=single_vector,
        source=source,
        refine=refine,
        refine_depth=refine_depth,
    )
    done = _done_ids(index_dir) if on_existing == "skip" else set()
    sidecar = rejects_path(source)  # rows `latemm encode` rejected, when ``source`` is its output
    recorded = read_rejects(sidecar) if used is None and sidecar.is_file() else None
    if view is not None:  # the view's own records replace the file's sidecar
        recorded = list(view.rejects) if used is None and view.rejects else None
    drop = _unread_images(used, cols, keep_images)
    if view is not None and not view.content:
        drop = [*drop, "text", "image"]
    new = not (Path(index_dir) / "manifest.json").is_file()
    if not new or config.residual_codebook != "index":
        codebook = None
    elif codebook is None and total > commit_every:
        # The build commits more than once, so it would train on the first vectors it adds.
        codebook = draw_codebook(
            source, cols, used, config, view=view, batch_size=batch_size, pool_factor=pool_factor
        )
    batches = encoded_batches(
        source,
        columns=cols,
        encoder=used,
        done=done,
        dim=config.dim,
        on_empty=on_empty,
        batch_size=batch_size,
        pool_factor=pool_factor,
        drop=drop,
        view=view,
        known=codebook.known if codebook is not None else None,
    )
    bar = progress_bar(total, "indexing", progress)
    try:
        return _write_batches(
            index_dir,
            config,
            batches,
            on_existing=on_existing,
            commit_every=commit_every,
            sidecar=recorded,
            bar=bar,
            source=source,
            codebook=codebook.trained if codebook is not None else None,
        )
    finally:
        bar.close()


# What ``codebook_sample`` keeps for k-means to sample from (it takes
# ``codecs.RESIDUAL_TRAIN_SAMPLE`` of them).
CODEBOOK_SAMPLE_VECTORS = 2 * codecs.RESIDUAL_TRAIN_SAMPLE


def rows_to_read(source: Path, view: CorpusView | None) -> int:
    """How many rows of ``source`` an ingest reads: the view's, or the file's."""
    return int(view.rows.size) if view is not None else count_rows(source)


@dataclass
class DrawnCodebook:
    """A new residual index's codebook, trained on vectors drawn from the whole corpus, and
    the vectors the encoder made for the draw, by doc id, for the build to take from there
    (``encoded_batches(known=...)``: each page is encoded once)."""

    trained: codecs.TrainedCodebook
    known: dict[str, np.ndarray]


def draw_codebook(
    source: Path,
    columns: Columns,
    encoder: Encoder | None,
    config: IndexConfig,
    *,
    view: CorpusView | None = None,
    batch_size: int = 64,
    pool_factor: int = 1,
    whole: bool = False,
) -> DrawnCodebook | None:
    """The codebook of a new residual index (``config``), trained on ``codebook_sample``'s
    draw from ``source``; None when the draw gives none (below). ``whole``: a corpus of no
    more than ``INDEX_CODEBOOK_VECTORS`` is drawn whole, rather than left to the build's last
    commit: the shards of a collection then share the codebook the unsharded index trains."""
    known: dict[str, np.ndarray] = {}
    sample = codebook_sample(
        source, columns, encoder, config.dim, view, batch_size, pool_factor, known, whole=whole
    )
    if sample is None:
        return None
    return DrawnCodebook(codecs.train_codebook(sample, config.dtype), known)


def collection_codebook(
    corpus: str | Path,
    *,
    encoder: Encoder | None = None,
    columns: Columns | None = None,
    view: CorpusView | None = None,
    dtype: str = "auto",
    single_vector: bool = False,
    batch_size: int = 64,
    pool_factor: int = 1,
    **_: Any,
) -> DrawnCodebook | None:
    """The residual codebook every shard of a new collection is coded with, drawn from the
    whole corpus (``draw_codebook(whole=True)``), so that each shard codes a page exactly as
    the unsharded index of the same corpus does and their centroid scores compare. None when
    a new index of these vectors is not residual (single vectors, a ``dtype`` given) or the
    corpus is too small to train one. Takes ``index_corpus``'s options, ignoring the others."""
    source = Path(corpus)
    cols = columns or Columns()
    used = _encoder_used(source, cols, encoder)
    dim = used.dim if used is not None else first_dim(source, cols, view)
    config = new_index_config(dim, encoder=used, dtype=dtype, single_vector=single_vector)
    if config.residual_codebook != "index":
        return None
    return draw_codebook(
        source,
        cols,
        used,
        config,
        view=view,
        batch_size=batch_size,
        pool_factor=pool_factor,
        whole=True,
    )


def shard_codebook(
    shard_dirs: Sequence[Path], corpus: str | Path, options: dict[str, Any], **draw: Any
) -> tuple[dict[str, Any], DrawnCodebook | None]:
    """``index_corpus``'s options for each shard of a new collection (``shard_dirs``), and the
    residual codebook they share: every shard codes a page as the unsharded index of
    ``corpus`` does, so their centroid scores compare and merge exactly
    (``latemm.index.pipeline.collection_codebook``; ``draw``: its encoder, columns, view).

    A first build cut short and run again takes the dtype and codebook of the shards it
    committed, so the shards still share one."""
    for folder in shard_dirs:
        if (folder / "manifest.json").is_file():
            built = Index.open(folder, verify="none")
            trained = built.trained_codebook()
            kept = {**options, "dtype": built.config.dtype}
            return kept, (DrawnCodebook(trained, {}) if trained is not None else None)
    return options, collection_codebook(corpus, **draw, **options)


def codebook_sample(
    source: Path,
    columns: Columns,
    encoder: Encoder | None,
    dim: int,
    view: CorpusView | None,
    batch_size: int,
    pool_factor: int,
    known: dict[str, np.ndarray] | None = None,
    *,
    whole: bool = False,
) -> np.ndarray | None:
    """Vectors drawn from the whole corpus, to train a new residual index's codebook on
    before the build (``IndexWriter.use_vectors_codebook``) rather than on the first vectors
    added, as PLAID samples its collection. None when the corpus holds no more than
    ``INDEX_CODEBOOK_VECTORS`` (the build's last commit then trains on all of it; ``whole``:
    all of it is the sample) or the draw gives fewer than ``codecs.MIN_TRAIN``.

    Precomputed vectors are read once more, in file order, and ``token_sample`` keeps
    ``CODEBOOK_SAMPLE_VECTORS`` of them drawn uniformly. An ``encoder``'s pages are drawn
    whole at random (seed 0; ``page_draw``), and kept in ``known`` by doc id for the build to
    take from there: each page is encoded once. Each read is one scan of the file.

    Bad input met on the way (a duplicate id, a malformed row, a page the encoder refuses)
    ends the draw, not the ingest: the build reports it when it reaches that row, in file
    order, after committing the rows before it."""
    try:
        if encoder is None:
            batches = encoded_batches(
                source,
                columns=columns,
                encoder=None,
                dim=dim,
                batch_size=batch_size,
                pool_factor=pool_factor,
                drop=("text", "image"),
                view=view,
            )
            return token_sample(
                (np.asarray(b.vectors, dtype=np.float32) for b in batches), whole=whole
            )
        rows = view.rows if view is not None else np.arange(count_rows(source), dtype=np.int64)
        exclude = view.exclude if view is not None else ()
        return page_draw(
            lambda part: _encode_drawn(
                source, columns, encoder, part, exclude, pool_factor, batch_size, known
            ),
            rows,
            batch_size,
            whole=whole,
        )
    except InputError:
        return None


def token_sample(batches: Iterable[np.ndarray], *, whole: bool = False) -> np.ndarray | None:
    """``CODEBOOK_SAMPLE_VECTORS`` of the vectors in ``batches`` ((N, d) each, in corpus order),
    drawn uniformly in one pass: each vector gets a random key (seed 1, one stream whatever the
    batches) and the smallest keys are kept. A sample of whole pages does worse: on MMLongBench's
    long pages, whose tokens cluster by page, the default index kept recall@10 0.956 trained on
    tokens of every page and 0.938 on whole pages drawn at random (0.902 on the first vectors
    added; ``experiments/results/codebook_draw_mmlongbench.json``). None when the batches hold
    no more than ``INDEX_CODEBOOK_VECTORS`` (``whole``: all of them, in order) or fewer than
    ``codecs.MIN_TRAIN``."""
    rng = np.random.default_rng(1)
    size = CODEBOOK_SAMPLE_VECTORS
    keys: list[np.ndarray] = []
    kept: list[np.ndarray] = []
    held = seen = 0
    bar = np.inf  # the size-th smallest key so far: a vector keyed above it is never kept
    for vectors in batches:
        seen += len(vectors)
        mine = rng.random(len(vectors))
        if np.isfinite(bar):
            below = mine < bar
            mine, vectors = mine[below], vectors[below]
        keys.append(mine)
        kept.append(vectors)
        held += len(mine)
        if held > 2 * size:  # keep the smallest keys only, now and then (copies stay few)
            keys, kept, bar = _smallest(keys, kept, size)
            held = size
    if (seen <= INDEX_CODEBOOK_VECTORS and not whole) or held < codecs.MIN_TRAIN:
        return None
    return _smallest(keys, kept, size)[1][0]


def _smallest(
    keys: list[np.ndarray], kept: list[np.ndarray], size: int
) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """The ``size`` vectors of ``kept`` with the smallest ``keys``, in their order, as one
    array each, and the largest key kept (inf while fewer than ``size`` are held)."""
    all_keys, all_kept = np.concatenate(keys), np.concatenate(kept)
    if all_keys.size <= size:
        return [all_keys], [all_kept], np.inf
    best = np.sort(np.argpartition(all_keys, size)[:size])
    return [all_keys[best]], [all_kept[best]], float(all_keys[best].max())


def page_draw(
    read: Callable[[np.ndarray], np.ndarray],
    rows: np.ndarray,
    batch_size: int,
    *,
    whole: bool = False,
) -> np.ndarray | None:
    """Whole pages drawn at random (seed 0) from ``rows`` until ``CODEBOOK_SAMPLE_VECTORS``
    vectors, at most half the pages; ``read(sorted rows)`` gives their (N, d) vectors. Two
    reads: a first batch of pages says how many vectors a page holds, then the pages that
    should bring the rest. None when the first batch says the corpus holds no more than
    ``INDEX_CODEBOOK_VECTORS``; ``whole``: every page then, the first batch and the rest.
    None too when the draw holds fewer than ``codecs.MIN_TRAIN`` vectors."""
    order = np.random.default_rng(0).permutation(rows)
    first = read(np.sort(order[:batch_size]))
    per_page = len(first) / max(min(batch_size, order.size), 1)
    small = per_page * order.size <= INDEX_CODEBOOK_VECTORS
    if small and not whole:
        return None
    more = int(np.ceil(max(CODEBOOK_SAMPLE_VECTORS - len(first), 0) / max(per_page, 1e-9)))
    stop = order.size if small else min(batch_size + more, order.size // 2)
    rest = read(np.sort(order[batch_size:stop])) if stop > batch_size else first[:0]
    sample = np.concatenate([first, rest])
    return sample if len(sample) >= codecs.MIN_TRAIN else None


def _encode_drawn(
    source: Path,
    columns: Columns,
    encoder: Encoder,
    rows: np.ndarray,
    exclude: Sequence[str],
    pool_factor: int,
    batch_size: int,
    known: dict[str, np.ndarray] | None,
) -> np.ndarray:
    """The encoder's vectors of the pages in ``rows`` (sorted row numbers) it can read (one
    scan of the file, then calls of ``batch_size`` pages), as they would be stored (pooled;
    finite and non-zero vectors only: the build reports the others when it reaches them), each
    page's kept in ``known``."""
    pages: list[Page] = []
    where: list[tuple[Batch, int]] = []
    for batch in read_batches(
        source, columns=columns, batch_size=batch_size, rows=rows, exclude=exclude
    ):
        readable, _ = _readable_pages(batch, range(len(batch.ids)), source, encoder, "skip")
        pages += readable.values()
        where += [(batch, i) for i in readable]
    out = [np.zeros((0, encoder.dim), np.float32)]
    for at in range(0, len(pages), batch_size):
        try:
            encoded = encoder.encode_documents(pages[at : at + batch_size])
        except InputError as exc:
            if exc.item is None:
                raise
            batch, i = where[at + exc.item]
            raise InputError(
                f"{source}, row {batch.first_row + i}, doc_id {batch.ids[i]!r}: {exc}"
            ) from exc
        vectors, offsets = encoded.vectors, encoded.offsets
        if known is not None:
            ids = [batch.ids[i] for batch, i in where[at : at + batch_size]]
            known.update(zip(ids, _split(vectors, offsets), strict=True))
        if pool_factor > 1:
            from latemm.ranking.pooling import pool_tokens

            vectors, offsets = pool_tokens(vectors, offsets, pool_factor)
        vectors = np.asarray(vectors, dtype=np.float32)
        out.append(vectors[np.isfinite(vectors).all(axis=1) & np.any(vectors != 0, axis=1)])
    return np.concatenate(out)


def _encoder_used(source: Path, columns: Columns, encoder: Encoder | None) -> Encoder | None:
    """The encoder that makes the vectors: None when the corpus has an ``embedding`` column."""
    if columns.embedding in open_dataset(source).schema.names:
        return None
    if encoder is None:
        raise InputError(
            f"{source} has no 'embedding' column, so an encoder is needed: pass --encoder "
            "NAME_OR_PATH (e.g. the packaged MiniLM) or precompute with `latemm encode`"
        )
    return encoder


def first_dim(source: Path, columns: Columns, view: CorpusView | None = None) -> int:
    """The dimension of a precomputed corpus's first embedding (every row's: one corpus, one
    dimension).

    Read from the first Parquet file's first row where that row holds vectors: a dataset scan
    decodes a whole row group before its first row, i.e. the whole embedding column of a file
    written as one, which cost as much as the build's own reading of it (issue 33). Otherwise
    (no Parquet file, a first row without vectors) through ``read_batches`` over ``view``'s
    rows, whose errors name the row."""
    files = getattr(open_dataset(source), "files", None) or []
    if files and str(files[0]).endswith(".parquet") and Path(files[0]).is_file():
        reader = pq.ParquetFile(files[0])
        if columns.embedding in reader.schema_arrow.names and reader.metadata.num_rows:
            first = next(reader.iter_batches(batch_size=1, columns=[columns.embedding]))
            value = first.column(0)[0].as_py()
            if value and isinstance(value[0], list) and value[0]:
                return len(value[0])
    for batch in read_batches(
        source,
        columns=columns,
        batch_size=1,
        rows=view.rows if view is not None else None,
        exclude=view.exclude if view is not None else (),
    ):
        if batch.vectors is None:
            raise InputError(f"{source}: no {columns.embedding!r} vectors")
        return int(batch.vectors.shape[1])
    raise InputError(f"{source} has no rows")


def _done_ids(index_dir: str | Path) -> set[str]:
    """Ids a resumed ingest does not read again: committed documents and recorded rejects."""
    if not (Path(index_dir) / "manifest.json").is_file():
        return set()
    index = Index.open(index_dir, verify="none")
    return set(index.doc_ids()) | set(index.rejects().column("doc_id").to_pylist())


def _write_batches(
    index_dir: str | Path,
    config: IndexConfig,
    batches: Iterator[EncodedBatch],
    *,
    on_existing: str,
    commit_every: int,
    sidecar: pa.Table | list[dict[str, Any]] | None,
    bar: Any,
    source: Path,
    codebook: codecs.TrainedCodebook | None = None,
) -> IndexReport:
    """The writer loop: add each batch and its rejects, commit every ``commit_every`` rows.
    ``codebook``: the residual codebook a new index is coded with."""
    writer = None
    added = skipped = rejected = pending = 0

    def opened() -> IndexWriter:
        new = create(index_dir, config)
        if codebook is not None:
            new.use_vectors_codebook(codebook)
        return new

    try:
        if sidecar is not None:  # rows `latemm encode` skipped: they belong in the rejects too
            writer = opened()
            rejected += writer.reject(sidecar)
            pending += rejected
        for batch in batches:
            skipped += batch.skipped
            if batch.ids or batch.rejects:
                writer = writer or opened()
                n = 0
                if batch.ids:
                    where = f"{source} (rows from {batch.first_row})"
                    check_storable(
                        batch.vectors,
                        batch.offsets,
                        batch.ids,
                        config.dtype,
                        where,
                        refine=config.refine,
                    )
                    n = writer.add(
                        batch.ids,
                        batch.vectors,
                        offsets=batch.offsets,
                        metadata=batch.metadata,
                        upsert=on_existing == "upsert",
                        skip_existing=on_existing == "skip",
                        source=f"{source} (rows from {batch.first_row})",
                    )
                added += n
                skipped += len(batch.ids) - n
                rejected += writer.reject(batch.rejects) if batch.rejects else 0
                pending += len(batch.ids) + len(batch.rejects)
            bar.update(batch.rows)
            if writer is not None and pending >= commit_every:
                writer.commit()
                pending = 0
        writer = writer or opened()
        # The build's last commit: a residual index trains its codebook now if it has not yet.
        generation = writer.commit(final=True)
        return IndexReport(added, skipped, len(writer.index), generation, rejected)
    finally:
        if writer is not None:
            writer.close()


def brute_force_scores(
    index: Index, query_vectors: np.ndarray, query_offsets: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """Exact MaxSim of queries against every live document: (doc ids, (Q, n) scores)."""
    from latemm.ranking.scoring import maxsim

    ids, blocks = [], []
    for s, seg in enumerate(index.segments):
        rows = np.flatnonzero(seg.live)
        vectors, offsets = index.vectors(s, rows)
        blocks.append(maxsim(query_vectors, query_offsets, vectors, offsets))
        ids += list(seg.doc_ids[rows])
    return ids, np.concatenate(blocks, axis=1)


@dataclass(frozen=True)
class EncodeReport:
    """What ``encode_corpus`` wrote: ``written`` rows into the output, ``rejected`` rows (nothing
    the encoder can read) into the ``rejects`` sidecar file (None when there were none)."""

    written: int
    rejected: int
    rejects: Path | None


def rejects_path(path: str | Path) -> Path:
    """The rejects sidecar of an encoded corpus: ``NAME.rejects.parquet`` beside ``NAME.parquet``."""
    path = Path(path)
    return path.with_name(f"{path.name.removesuffix('.parquet')}.rejects.parquet")


def encode_corpus(
    corpus: str | Path,
    out: str | Path,
    *,
    encoder: Encoder,
    columns: Columns | None = None,
    on_empty: str = "skip",
    batch_size: int = 64,
    pool_factor: int = 1,
    progress: bool = True,
) -> EncodeReport:
    """Encode a corpus file into a Parquet file with an ``embedding`` column (T x d per row)
    beside its other columns, so that encoding (on a GPU box) and indexing can be separate.

    Rows with nothing the encoder can read are left out of ``out`` and listed (``doc_id``,
    ``source``, ``row``, ``reason``) in the sidecar ``rejects_path(out)``, which ``latemm
    index`` records in the index's rejects when it indexes ``out``; ``on_empty='error'`` stops at
    the first such row instead.
    """
    if on_empty not in ON_EMPTY:
        raise InputError(f"on_empty must be 'skip' or 'error', got {on_empty!r}")
    source = Path(corpus)
    rejected: list[dict[str, Any]] = []

    def tables() -> Iterator[pa.Table]:
        for batch in encoded_batches(
            source,
            columns=columns or Columns(),
            encoder=encoder,
            on_empty=on_empty,
            batch_size=batch_size,
            pool_factor=pool_factor,
        ):
            vectors, offsets = batch.vectors, batch.offsets
            embedding = pa.ListArray.from_arrays(
                pa.array(offsets.astype(np.int32)),
                pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors.reshape(-1)), vectors.shape[1]
                ).cast(pa.list_(pa.float32())),
            )
            rejected.extend(batch.rejects)
            yield batch.metadata.append_column(
                "doc_id", pa.array(batch.ids, pa.string())
            ).append_column("embedding", embedding)
            bar.update(batch.rows)

    bar = progress_bar(count_rows(source), "encoding", progress)
    try:
        written = write_parquet(out, tables(), empty=f"{source} has no rows")
    finally:
        bar.close()
    sidecar = rejects_path(out)
    if rejected:
        write_parquet(sidecar, [rejects_table(rejected)])
    else:
        sidecar.unlink(missing_ok=True)  # a stale one from an earlier run would mislead
    return EncodeReport(written, len(rejected), sidecar if rejected else None)
