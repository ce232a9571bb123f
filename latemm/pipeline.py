"""The batch jobs behind the CLI, usable from Python: index a corpus file, search a query file.

Both stream their input in record batches, show progress, and are safe to interrupt: indexing
commits every ``commit_every`` documents and a re-run skips what is committed; searching appends
finished query batches to the run file's parts and a re-run continues after the last one.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from index_store import Index, IndexConfig, create, default_fde_config
from index_store.errors import InputError
from latemm.encoders.base import Encoder, Page, is_compatible
from latemm.io import (
    RUN_SCHEMA,
    Batch,
    Columns,
    count_rows,
    image_bytes,
    read_batches,
    write_parquet,
)


@dataclass(frozen=True)
class IndexReport:
    added: int
    skipped: int
    documents: int
    generation: int


def _progress(total: int | None, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="doc", disable=not enabled, file=sys.stderr)


def _pages(batch: Batch, source: Path) -> list[Page]:
    texts = batch.table.column("text").to_pylist() if "text" in batch.table.column_names else None
    images = (
        batch.table.column("image").to_pylist() if "image" in batch.table.column_names else None
    )
    pages = []
    for i in range(len(batch.ids)):
        text = texts[i] if texts else None
        image = None
        if images and images[i] is not None:
            try:
                image = image_bytes(images[i])
            except (InputError, OSError) as exc:
                raise InputError(
                    f"{source}, row {batch.first_row + i}, doc_id {batch.ids[i]!r}: {exc}"
                ) from exc
        if text is None and image is None:
            raise InputError(
                f"{source}, row {batch.first_row + i}, doc_id {batch.ids[i]!r}: no text, image or embedding; "
                "every row needs content"
            )
        pages.append(Page(text=text, image=image))
    return pages


@contextmanager
def _rows_named(batch: Batch, source: Path, kind: str = "doc_id") -> Iterator[None]:
    """Turn an encoder's complaint about item i of the batch into one that names the file, row
    and id the item came from."""
    try:
        yield
    except InputError as exc:
        if exc.item is None:
            raise
        raise InputError(
            f"{source}, row {batch.first_row + exc.item}, {kind} {batch.ids[exc.item]!r}: {exc}"
        ) from exc


def index_corpus(
    corpus: str | Path,
    index_dir: str | Path,
    *,
    encoder: Encoder | None = None,
    columns: Columns | None = None,
    dtype: str = "float16",
    faiss_factory: str = "Flat",
    commit_every: int = 512,
    on_existing: str = "skip",
    batch_size: int = 64,
    pool_factor: int = 1,
    progress: bool = True,
) -> IndexReport:
    """Add a Parquet corpus (file or directory) to an index, creating it if needed.

    With an ``embedding`` column no model is used; otherwise ``encoder`` encodes the pages.
    ``on_existing``: ``skip`` (resume: committed ids are not added again), ``upsert`` or ``error``.
    ``pool_factor`` > 1 pools each document's vectors (``latemm.pooling``) before storing them.
    """
    if on_existing not in ("skip", "upsert", "error"):
        raise InputError(f"on_existing must be 'skip', 'upsert' or 'error', got {on_existing!r}")
    source = Path(corpus)
    cols = columns or Columns()
    existing = None
    if (Path(index_dir) / "manifest.json").is_file():
        existing = Index.open(index_dir, verify="none").config
        recorded = existing.encoder
        reason = is_compatible(recorded, encoder.info) if recorded and encoder else None
        if reason is not None and recorded and encoder:
            raise InputError(
                f"the index {index_dir} was built with encoder {recorded['name_or_path']!r}, not "
                f"{encoder.info.name_or_path!r} as configured ({reason}); vectors of different "
                "encoders cannot share an index (leave out --encoder to use the recorded one, "
                "or index into a new folder)"
            )
    total = count_rows(source)
    writer = None
    added = skipped = 0
    row_of: dict[str, int] = {}  # every id of this file so far: duplicates are errors, not skips
    bar = _progress(total, "indexing", progress)
    try:
        for batch in read_batches(source, columns=cols, batch_size=batch_size):
            for i, doc_id in enumerate(batch.ids):
                if doc_id in row_of:
                    raise InputError(
                        f"{source}, rows {row_of[doc_id]} and {batch.first_row + i}: duplicate "
                        f"doc_id {doc_id!r}; ids must be unique (the index keeps what was "
                        "committed; fix the file and re-run to resume)"
                    )
                row_of[doc_id] = batch.first_row + i
            if batch.vectors is not None:
                vectors, offsets = batch.vectors, batch.offsets
            else:
                if encoder is None:
                    raise InputError(
                        f"{source} has no 'embedding' column, so an encoder is needed: pass --encoder "
                        "NAME_OR_PATH (e.g. the packaged MiniLM) or precompute with `latemm encode`"
                    )
                if writer is not None:
                    fresh = [i for i in range(len(batch.ids)) if batch.ids[i] not in writer.index]
                    if not fresh:
                        skipped += len(batch.ids)
                        bar.update(len(batch.ids))
                        continue
                with _rows_named(batch, source):
                    encoded = encoder.encode_documents(_pages(batch, source))
                vectors, offsets = encoded.vectors, encoded.offsets
            if pool_factor > 1:
                from latemm.pooling import pool_tokens

                vectors, offsets = pool_tokens(vectors, offsets, pool_factor)
            if writer is None:
                dim = int(vectors.shape[1])
                config = IndexConfig(
                    dim=dim,
                    dtype=dtype,
                    fde=default_fde_config(dim),
                    faiss_factory=faiss_factory,
                    encoder=encoder.info.to_dict()
                    if encoder is not None and batch.vectors is None
                    else None,
                )
                if existing is not None:
                    config = existing
                    if config.dim != dim:
                        raise InputError(
                            f"{source}: vectors have dimension {dim}, the index {index_dir} stores {config.dim}"
                        )
                writer = create(index_dir, config)
            n = writer.add(
                batch.ids,
                vectors,
                offsets=offsets,
                metadata=batch.table,
                upsert=on_existing == "upsert",
                skip_existing=on_existing == "skip",
                source=f"{source} (rows from {batch.first_row})",
            )
            added += n
            skipped += len(batch.ids) - n
            bar.update(len(batch.ids))
            if writer.pending_documents >= commit_every:
                writer.commit()
        if writer is None:
            raise InputError(f"{source} has no rows")
        generation = writer.commit()
        documents = len(writer.index)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    return IndexReport(added, skipped, documents, generation)


def search_file(
    index_dir: str | Path,
    queries: str | Path,
    out: str | Path,
    *,
    encoder: Encoder | None = None,
    columns: Columns | None = None,
    k: int = 10,
    candidates: int | None = None,
    where: str | None = None,
    batch_size: int = 64,
    trec: str | Path | None = None,
    progress: bool = True,
    reranker: Any = None,
    rerank_depth: int = 20,
    rerank_fusion: str = "none",
) -> pa.Table:
    """Search every query of a Parquet file and write the run (Parquet, and TREC if asked).
    Interrupted runs resume: a re-run skips the queries whose results were already written.

    With a ``reranker``, each query's top ``rerank_depth`` pages are reordered by it (the page
    content is read from the index); the run's ``rerank_score`` column holds its scores."""
    from latemm.retriever import Retriever, truncate

    cols = columns or Columns(id="query_id")
    retriever = Retriever(
        index_dir,
        encoder=encoder,
        reranker=reranker,
        rerank_depth=rerank_depth,
        rerank_fusion=rerank_fusion,
    )
    total = count_rows(queries)
    out_path = Path(out)
    # Finished batches go to numbered part files beside the output; an interrupted search
    # re-run with the same arguments skips the queries already in them.
    parts = out_path.with_name(f".{out_path.name}.parts")
    parts.mkdir(exist_ok=True)
    done_tables = [pq.read_table(p) for p in sorted(parts.glob("part-*.parquet"))]
    done = {q for t in done_tables for q in t.column("query_id").to_pylist()}
    tables = list(done_tables)
    bar = _progress(total, "searching", progress)
    bar.update(len(done))
    n_parts = len(done_tables)
    try:
        for batch in read_batches(queries, columns=cols, kind="queries", batch_size=batch_size):
            if done and all(q in done for q in batch.ids):
                continue
            if batch.vectors is not None:
                result = retriever.search_embeddings(
                    batch.vectors,
                    batch.offsets,
                    k=max(k, rerank_depth) if reranker is not None else k,
                    candidates=candidates,
                    where=where,
                    query_ids=batch.ids,
                )
                if reranker is not None:
                    # Precomputed query vectors: the reranker reads the queries' text/image.
                    result = truncate(retriever.rerank(result, _pages(batch, Path(queries))), k)
            else:
                if retriever.encoder is None:
                    raise InputError(
                        f"{queries} has no 'embedding' column and no encoder is available: pass "
                        "--encoder, or index with --encoder so the index records it"
                    )
                with _rows_named(batch, Path(queries), "query_id"):
                    result = retriever.search(
                        _pages(batch, Path(queries)),
                        k=k,
                        candidates=candidates,
                        where=where,
                        query_ids=batch.ids,
                    )
            table = result.to_arrow().cast(RUN_SCHEMA)
            if done:
                keep = pa.array([q not in done for q in table.column("query_id").to_pylist()])
                table = table.filter(keep)
            part = parts / f"part-{n_parts:06d}.parquet"
            pq.write_table(table, part.with_suffix(".tmp"))
            part.with_suffix(".tmp").replace(part)
            n_parts += 1
            tables.append(table)
            bar.update(len(batch.ids))
    finally:
        bar.close()
    run = pa.concat_tables(tables) if tables else RUN_SCHEMA.empty_table()
    tmp = out_path.with_name(f".{out_path.name}.partial")
    pq.write_table(run, tmp)
    tmp.replace(out_path)
    for part in parts.iterdir():
        part.unlink()
    parts.rmdir()
    if trec is not None:
        from latemm.io import write_run_trec

        write_run_trec(run, trec)
    return run


def brute_force_scores(
    index: Index, query_vectors: np.ndarray, query_offsets: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """Exact MaxSim of queries against every live document: (doc ids, (Q, n) scores)."""
    from latemm.scoring import maxsim

    ids, blocks = [], []
    for s, seg in enumerate(index.segments):
        rows = np.flatnonzero(seg.live)
        vectors, offsets = index.vectors(s, rows)
        blocks.append(maxsim(query_vectors, query_offsets, vectors, offsets))
        ids += list(seg.doc_ids[rows])
    return ids, np.concatenate(blocks, axis=1)


def encode_corpus(
    corpus: str | Path,
    out: str | Path,
    *,
    encoder: Encoder,
    columns: Columns | None = None,
    batch_size: int = 64,
    pool_factor: int = 1,
    progress: bool = True,
) -> int:
    """Encode a corpus file into a Parquet file with an ``embedding`` column (T x d per row)
    beside its other columns, so that encoding (on a GPU box) and indexing can be separate.
    Returns the number of rows written."""
    source = Path(corpus)
    cols = columns or Columns()

    def tables() -> Iterator[pa.Table]:
        for batch in read_batches(source, columns=cols, batch_size=batch_size):
            with _rows_named(batch, source):
                encoded = encoder.encode_documents(_pages(batch, source))
            vectors, offsets = encoded.vectors, encoded.offsets
            if pool_factor > 1:
                from latemm.pooling import pool_tokens

                vectors, offsets = pool_tokens(vectors, offsets, pool_factor)
            embedding = pa.ListArray.from_arrays(
                pa.array(offsets.astype(np.int32)),
                pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors.reshape(-1)), vectors.shape[1]
                ).cast(pa.list_(pa.float32())),
            )
            yield batch.table.append_column(
                "doc_id", pa.array(batch.ids, pa.string())
            ).append_column("embedding", embedding)
            bar.update(len(batch.ids))

    bar = _progress(count_rows(source), "encoding", progress)
    try:
        return write_parquet(out, tables(), empty=f"{source} has no rows")
    finally:
        bar.close()
