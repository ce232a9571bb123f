"""The query-file jobs behind ``latemm search``, usable from Python: search every query of a
file over an index of any kind (plain, sharded, named fields) and write the run, resumably.

``search_file`` serves a plain or sharded index (``open_retriever``: on Ray actors with
``ray``), ``search_fields_file`` a multi-field index; both run ``run_queries``, the streaming
loop that appends finished query batches to the run file's parts so that a re-run continues
after the last one.

Layering: this module sits above ``latemm.index.pipeline``, ``latemm.index.sharded`` and
``latemm.retrieval.field_search`` (and imports ``latemm.runs.distributed`` only when ``ray`` is
asked for); none of them imports it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from index_store.errors import InputError
from latemm.data.io import RUN_SCHEMA, Batch, Columns, count_rows, read_batches
from latemm.encoders.base import Encoder
from latemm.index.pipeline import batch_pages, progress_bar, rows_named
from latemm.retrieval.field_search import FieldRetriever, OneFieldRetriever, run_schema
from latemm.retrieval.retriever import SearchResult


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
    ray: str | None = None,
    refine_depth: int | None = None,
    first_stage: str | None = None,
) -> pa.Table:
    """Search every query of a Parquet file and write the run (Parquet, and TREC if asked).
    Interrupted runs resume: a re-run skips the queries whose results were already written.

    With a ``reranker``, each query's top ``rerank_depth`` pages are reordered by it (the page
    content is read from the index); the run's ``rerank_score`` column holds its scores.
    ``refine_depth``: for an index with a refine copy, candidates per query rescored from it
    (default: the index's recorded depth). ``first_stage``: ``"fde"`` or, for residual codes,
    ``"centroids"`` (``latemm.retrieval.retriever.centroid_first_stage``); default: the index's."""
    # A sharded index (latemm.index.sharded) is searched shard by shard and merged exactly, in this
    # process or, with ``ray`` ("local" or a cluster address), on one Ray actor per shard.
    check_search_args(queries, out, k=k, candidates=candidates, batch_size=batch_size)
    retriever = open_retriever(
        index_dir,
        encoder=encoder,
        reranker=reranker,
        rerank_depth=rerank_depth,
        rerank_fusion=rerank_fusion,
        ray=ray,
        refine_depth=refine_depth,
        first_stage=first_stage,
    )
    search: dict[str, Any] = dict(k=k, candidates=candidates, where=where)
    if refine_depth is not None:  # absent otherwise: records written before it still resume
        search["refine_depth"] = refine_depth
    if first_stage not in (None, "fde"):  # as refine_depth
        search["first_stage"] = first_stage
    if columns is not None and columns != Columns(id="query_id"):  # which columns are read
        from dataclasses import asdict

        search["columns"] = asdict(columns)
    settings = _resume_record(
        retriever,
        queries,
        search,
        (reranker, rerank_depth, rerank_fusion),
    )
    return run_queries(
        queries,
        out,
        settings,
        lambda batch: _search_batch(retriever, batch, Path(queries), k, candidates, where),
        columns=columns,
        batch_size=batch_size,
        trec=trec,
        progress=progress,
    )


# Over 60 lines on purpose: one streaming, resumable loop; its steps are the helpers below.
def run_queries(
    queries: str | Path,
    out: str | Path,
    settings: dict[str, Any],
    search_batch: Callable[[Batch], Any],
    *,
    columns: Columns | None = None,
    schema: pa.Schema = RUN_SCHEMA,
    batch_size: int = 64,
    trec: str | Path | None = None,
    progress: bool = True,
) -> pa.Table:
    """The resumable loop of a search job (``search_file``, ``latemm.retrieval.field_search``): read
    the query file in batches, ``search_batch(batch)`` -> ``SearchResult`` for each, and write the
    run (Parquet, and TREC if asked).

    Finished batches go to numbered part files beside the output with ``search.json``, the
    search's ``settings`` (index and generation, queries, k, ..., encoders): a re-run with the
    same settings skips the queries already in them; other settings are refused."""
    cols = columns or Columns(id="query_id")
    total = count_rows(queries)
    if total == 0:
        raise InputError(f"{queries} has no rows: there are no queries to search")
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    parts = out_path.with_name(f".{out_path.name}.parts")
    # The queries' content, not only their path: parts of a file since rewritten are stale.
    _claim_parts(parts, {**settings, "queries_digest": queries_digest(queries)})
    tables = [pq.read_table(p) for p in sorted(parts.glob("part-*.parquet"))]
    done = {q for t in tables for q in t.column("query_id").to_pylist()}
    row_of: dict[str, int] = {}  # every query_id so far: a repeated one is an error
    bar = progress_bar(total, "searching", progress, unit="query")
    bar.update(len(done))
    try:
        for batch in read_batches(queries, columns=cols, kind="queries", batch_size=batch_size):
            _check_query_ids(batch, Path(queries), row_of, trec=trec is not None)
            if done and all(q in done for q in batch.ids):
                continue
            table = search_batch(batch).to_arrow().cast(schema)
            if done:
                keep = pa.array([q not in done for q in table.column("query_id").to_pylist()])
                table = table.filter(keep)
            part = parts / f"part-{len(tables):06d}.parquet"
            pq.write_table(table, part.with_suffix(".tmp"))
            part.with_suffix(".tmp").replace(part)
            tables.append(table)
            bar.update(len(batch.ids))
    finally:
        bar.close()
        if not any(parts.glob("part-*.parquet")):  # nothing to resume: leave no folder behind
            _remove_parts(parts)
    provenance = {**settings, "batch_size": batch_size}
    return _finish_run(tables, out_path, parts, trec, schema, provenance)


def _resume_record(
    retriever: OneFieldRetriever,
    queries: str | Path,
    search: dict[str, Any],
    rerank: tuple[Any, int, str],
) -> dict[str, Any]:
    """What a search's part files belong to (checking ``where`` first, before any part file):
    a re-run resumes them only when every entry is the same."""
    if search["where"] is not None:
        from latemm.ranking.filters import filter_masks

        for served in retriever.indexes():
            filter_masks(served, search["where"])
    reranker, rerank_depth, rerank_fusion = rerank
    return {
        "index": str(Path(retriever.path).resolve()),
        "generation": retriever.generation,
        "queries": str(Path(queries).resolve()),
        **search,
        "encoder": None if retriever.encoder is None else retriever.encoder.info.to_dict(),
        "reranker": None
        if reranker is None
        else str(getattr(reranker, "model_id", type(reranker).__name__)),
        "rerank_depth": rerank_depth if reranker is not None else None,
        "rerank_fusion": rerank_fusion if reranker is not None else None,
    }


def _search_batch(
    retriever: OneFieldRetriever,
    batch: Batch,
    queries: Path,
    k: int,
    candidates: int | None,
    where: str | None,
) -> Any:
    """The SearchResult of one batch of queries: precomputed vectors or encoded pages, each
    query under ``where`` AND its own ``where`` column, if the file has one."""
    from latemm.ranking.filters import query_conditions
    from latemm.retrieval.retriever import truncate

    with rows_named(batch, queries, "query_id"):
        conditions = query_conditions(batch.table, where)
    if batch.vectors is not None:
        reranker = getattr(retriever, "reranker", None)
        with rows_named(batch, queries, "query_id"):
            result = retriever.search_embeddings(
                batch.vectors,
                batch.offsets,
                k=max(k, retriever.rerank_depth) if reranker is not None else k,
                candidates=candidates,
                where=conditions,
                query_ids=batch.ids,
            )
        if reranker is not None:
            # Precomputed query vectors: the reranker reads the queries' text/image.
            result = truncate(
                retriever.rerank(
                    result, batch_pages(batch, queries, for_reranker=True, kind="query_id")
                ),
                k,
            )
        return result
    if retriever.encoder is None:
        raise InputError(
            f"{queries} has no 'embedding' column and no encoder is available: pass "
            "--encoder, or index with --encoder so the index records it"
        )
    with rows_named(batch, queries, "query_id"):
        return retriever.search(
            batch_pages(batch, queries, kind="query_id"),
            k=k,
            candidates=candidates,
            where=conditions,
            query_ids=batch.ids,
        )


def _remove_parts(parts: Path) -> None:
    if parts.is_dir():
        for leftover in parts.iterdir():
            leftover.unlink()
        parts.rmdir()


def _finish_run(
    tables: list[pa.Table],
    out_path: Path,
    parts: Path,
    trec: str | Path | None,
    schema: pa.Schema = RUN_SCHEMA,
    provenance: dict[str, Any] | None = None,
) -> pa.Table:
    """Write the whole run atomically (and the TREC file if asked), then drop the parts. The
    Parquet schema metadata ``latemm.run`` records how it was made (``latemm.runs.metrics.
    run_provenance``): the latemm version and the search's settings (index and generation,
    queries, k, candidates, where, encoder, fields, reranker, ..., batch size)."""
    run = pa.concat_tables(tables) if tables else schema.empty_table()
    if provenance is not None:
        import json

        from latemm.version import __version__

        record = json.dumps(
            {"latemm_version": __version__, **provenance}, sort_keys=True, default=str
        )
        run = run.replace_schema_metadata({**(run.schema.metadata or {}), b"latemm.run": record})
    tmp = out_path.with_name(f".{out_path.name}.partial")
    pq.write_table(run, tmp)
    tmp.replace(out_path)
    _remove_parts(parts)
    if trec is not None:
        from latemm.data.io import write_run_trec

        write_run_trec(run, trec)
    return run


def check_search_args(
    queries: str | Path, out: str | Path, *, k: int, candidates: int | None, batch_size: int
) -> None:
    """Refuse bad search arguments before any work: k, candidates, batch size, and an output
    that would overwrite the queries."""
    for name, value in (("--k", k), ("--candidates", candidates), ("--batch-size", batch_size)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if Path(out).resolve() == Path(queries).resolve():
        raise InputError(
            f"--out {out} is the queries file: the run would overwrite the queries; write the "
            "run to another file"
        )


def queries_digest(queries: str | Path) -> str:
    """BLAKE2b of a queries file's bytes (of every file, by relative path, for a folder)."""
    import hashlib

    root = Path(queries)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    digest = hashlib.blake2b(digest_size=16)
    for path in files:
        digest.update(str(path.relative_to(root) if root.is_dir() else "").encode() + b"\0")
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _claim_parts(parts: Path, settings: dict[str, Any]) -> None:
    """Create the folder of an interrupted search's finished batches, or check that the one
    there belongs to a search with the same ``settings`` (index and generation, queries, k,
    candidates, where, encoder, reranker): parts of another search must not be merged."""
    import json

    settings = json.loads(json.dumps(settings, sort_keys=True, default=str))  # as read back
    record = parts / "search.json"
    if parts.is_dir() and any(parts.glob("part-*.parquet")):
        try:
            recorded = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = None
        if (
            isinstance(recorded, dict)
            and recorded.get("queries_digest") != settings.get("queries_digest")
            and {k: v for k, v in recorded.items() if k != "queries_digest"}
            == {k: v for k, v in settings.items() if k != "queries_digest"}
        ):
            # Same search, but the queries file was rewritten: its finished batches answer
            # other queries. Start afresh rather than merge them.
            print(
                f"latemm search: warning: {settings.get('queries', 'the queries file')} changed "
                f"since the interrupted search wrote {parts}; its finished batches are discarded and "
                "the search starts afresh",
                file=sys.stderr,
            )
            _remove_parts(parts)
        elif recorded != settings:
            changed = (
                ", ".join(
                    f"{key} {recorded.get(key)!r} -> {value!r}"
                    for key, value in settings.items()
                    if recorded.get(key) != value
                )
                if isinstance(recorded, dict)
                else "no record of its arguments"
            )
            raise InputError(
                f"{parts} holds the finished batches of an interrupted search with other "
                f"arguments ({changed}); re-run that search with the same arguments to resume "
                "it, or delete the folder to start afresh"
            )
        else:
            return
    parts.mkdir(exist_ok=True)
    tmp = parts / ".search.json.tmp"
    tmp.write_text(json.dumps(settings, sort_keys=True), encoding="utf-8")
    tmp.replace(record)


def _check_query_ids(batch: Batch, source: Path, row_of: dict[str, int], *, trec: bool) -> None:
    """Query ids must be unique in the file (and TREC-safe when a TREC run is asked for)."""
    from latemm.data.io import trec_safe

    for i, query_id in enumerate(batch.ids):
        row = batch.first_row + i
        if query_id in row_of:
            raise InputError(
                f"{source}, rows {row_of[query_id]} and {row}: duplicate query_id "
                f"{query_id!r}; query ids must be unique (their results would be merged)"
            )
        row_of[query_id] = row
        if trec:
            trec_safe(query_id, "query_id", f"{source}, row {row}")


def open_retriever(
    index_dir: str | Path,
    *,
    encoder: Any = None,
    reranker: Any = None,
    ray: str | None = None,
    **options: Any,
) -> OneFieldRetriever:
    """The searcher of an index of one encoder, plain or sharded (``OneFieldRetriever``: the
    collection searcher over its one field), a sharded one's shards served by Ray actors with
    ``ray``."""
    actors = None
    if ray is not None:  # one Ray actor per shard, connected as the searcher opens them
        from latemm.runs.distributed import ShardActors

        actors = partial(ShardActors, address=ray)  # an unsharded index: refused before Ray
    return OneFieldRetriever(
        index_dir, encoder=encoder, reranker=reranker, actors=actors, **options
    )


def search_fields_file(
    index_dir: str | Path,
    queries: str | Path,
    out: str | Path,
    *,
    k: int = 10,
    candidates: int | None = None,
    where: str | None = None,
    batch_size: int = 64,
    trec: str | Path | None = None,
    progress: bool = True,
    columns: Any = None,
    query_columns: dict[str, str] | None = None,
    **options: Any,
) -> Any:
    """Search every query of a Parquet file over an index's fields and write the run (Parquet,
    and TREC if asked). ``options`` go to ``FieldRetriever`` (fields, fusion, weights,
    rescore_fields, preset, encoders, reranker, ...). ``query_columns`` (field -> column,
    ``--query-column``) names the query file's column of vectors for each field that holds
    precomputed vectors; the ``embedding`` column serves the one such field left unnamed.

    It runs the resumable loop of ``search_file``: an interrupted search re-run
    with the same arguments (and the index unchanged) skips the queries already written."""
    from latemm.ranking.filters import query_conditions

    check_search_args(queries, out, k=k, candidates=candidates, batch_size=batch_size)
    retriever = FieldRetriever(index_dir, **options)
    precomputed = [
        n
        for n in retriever.plan.scored
        if retriever.specs[n].kind != "bm25" and retriever.encoders.get(n) is None
    ]
    named = dict(query_columns or {})
    for name in named:
        if name not in precomputed:
            raise InputError(
                f"--query-column {name}=...: {name!r} is not a searched field that holds "
                f"precomputed vectors (those are: {', '.join(precomputed) or 'none'})"
            )

    def search_batch(batch: Any) -> SearchResult:
        with rows_named(batch, Path(queries), "query_id"):
            pages, given = _batch_queries(batch, Path(queries), precomputed, named)
            return retriever.search(
                pages,
                k=retriever.capped(k),
                candidates=candidates,
                where=query_conditions(batch.table, where),
                query_ids=batch.ids,
                query_vectors=given,
            )

    record = retriever.resume_record(queries, k=k, candidates=candidates, where=where)
    if named:  # parts written from other query columns are not resumed
        record["query_columns"] = named
    return run_queries(
        queries,
        out,
        record,
        search_batch,
        columns=columns,
        schema=run_schema(retriever.plan.scored),
        batch_size=batch_size,
        trec=trec,
        progress=progress,
    )


def _batch_queries(
    batch: Any, source: Path, precomputed: list[str], named: dict[str, str] | None = None
) -> tuple[list[Any], dict[str, Any]]:
    """A query batch as texts or pages (image queries), and the query vectors of the
    precomputed fields: from the columns ``named`` (field -> column), and the ``embedding``
    column for the one precomputed field left (if exactly one is)."""
    from latemm.data.io import column_vectors
    from latemm.encoders.base import Page
    from latemm.index.pipeline import batch_pages

    given = {}
    named = named or {}
    for name, column in named.items():
        if column == "embedding" and batch.vectors is not None:
            vectors, offsets = batch.vectors, batch.offsets
        else:
            vectors, offsets = column_vectors(
                batch.table, column, batch.ids, source=source, first_row=batch.first_row,
                kind="queries",
            )  # fmt: skip
        given[name] = [vectors[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    rest = [n for n in precomputed if n not in named]
    if batch.vectors is not None and len(rest) == 1:
        bounds = zip(batch.offsets[:-1], batch.offsets[1:], strict=True)
        given[rest[0]] = [batch.vectors[a:b] for a, b in bounds]
    if not any(c in batch.table.column_names for c in ("text", "image")):
        return [Page() for _ in batch.ids], given
    return [
        p if p.image is not None else p.text for p in batch_pages(batch, source, kind="query_id")
    ], given
