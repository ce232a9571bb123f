"""The notebook API: three lines from import to results.

import latemm
latemm.build_index("corpus.parquet", "my-index", encoder=latemm.minilm_path())
latemm.search("my-index", ["what was the revenue in 2020?"], k=10).to_pandas()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa

from index_store import Index


def _as_encoder(encoder: Any) -> Any:
    if encoder is None or not isinstance(encoder, (str, Path)):
        return encoder
    from latemm.encoders import load_encoder

    return load_encoder(str(encoder))


def build_index(
    corpus: str | Path,
    index_dir: str | Path,
    *,
    encoder: Any = None,
    on_empty: str = "skip",
    fields: dict[str, Any] | None = None,
    num_shards: int | None = None,
    **options: Any,
) -> Any:
    """Index a Parquet corpus (file or folder); ``encoder`` is a hub id, a folder or an Encoder
    (not needed with an ``embedding`` column). Options as for ``latemm index``.

    Rows with nothing the encoder can read (blank pages, empty text) are skipped with a warning
    and listed by ``Index.rejects()``; ``on_empty="error"`` makes the first one an error.

    ``fields`` builds named fields instead (``{"text": latemm.minilm_path(), "bm25": "bm25"}``;
    values as for ``--field``: a hub id or folder, ``bm25``, ``single:ENCODER``,
    ``embedding:COLUMN``, or an Encoder) and returns the index's ``FieldsManifest``; pages a
    field cannot read are left out of that field.

    ``num_shards`` builds (or adds to) a sharded index of that many shards
    (``latemm.index.sharded``; a sharded index keeps its N) and returns its ``ShardManifest``; with
    ``fields=`` it builds (or adds to) a sharded multi-field collection
    (``latemm.index.field_shards``) and returns its ``FieldShards``. A collection keeps its kind
    (``latemm.index.collection.index_route``, the rule ``latemm index`` follows): given neither
    ``encoder`` nor ``fields``, the corpus is added to the fields (or the encoder) the folder
    records."""
    import warnings

    from latemm.index.collection import index_route
    from latemm.index.pipeline import index_corpus
    from latemm.index.sharded import index_sharded, read_manifest

    route = index_route(
        index_dir,
        encoder=encoder is not None,
        fields=fields is not None,
        num_shards=num_shards,
        ray=False,
    )  # a collection keeps its kind; what it cannot take is an error, before any model loads
    progress = options.pop("progress", False)
    if route == "field_shards":
        from latemm.index.field_shards import index_field_shards, read_field_shards

        index_field_shards(
            corpus, index_dir, fields, num_shards=num_shards, progress=progress, **options
        )
        return read_field_shards(index_dir)
    if route == "fields":
        from latemm.index.fields import index_fields, read_fields

        index_fields(corpus, index_dir, fields, progress=progress, **options)
        return read_fields(index_dir)
    sharded = route == "sharded"
    build = partial(index_sharded, num_shards=num_shards) if sharded else index_corpus
    report = build(
        corpus,
        index_dir,
        encoder=_as_encoder(encoder),
        on_empty=on_empty,
        progress=progress,
        **options,
    )
    if report.rejected:
        warnings.warn(
            f"skipped {report.rejected} rows of {corpus} with nothing the encoder can read "
            f"(blank pages, empty text); Index.rejects() of {index_dir} lists them",
            stacklevel=2,
        )
    return read_manifest(index_dir) if sharded else Index.open(index_dir)


# Over 60 lines on purpose: the notebook entry point: dispatches named fields, sharded and plain indexes, files and lists.
def search(
    index: str | Path | Index,
    queries: Sequence[str] | str | Path,
    *,
    k: int = 10,
    encoder: Any = None,
    candidates: int | None = None,
    where: str | Sequence[str | None] | None = None,
    reranker: Any = None,
    rerank_depth: int = 20,
    fields: Sequence[str] | None = None,
    fusion: str | None = None,
    weights: dict[str, float] | None = None,
    rescore_fields: Sequence[str] | None = None,
    preset: str | None = None,
    normalization: str | None = None,
    rrf_k: int | None = None,
    ray: str | None = None,
    first_stage: str | None = None,
) -> pa.Table:
    """Search a list of text queries, or a queries Parquet file, and return the run table
    (``query_id, doc_id, rank, score, fde_score, maxsim_score, rerank_score``).

    The encoder defaults to the one the index recorded. A sharded index (``latemm.index.sharded``)
    is searched as one index: the best first-stage candidates over every shard, each rescored
    in the shard that holds it. A multi-field index (or any of
    ``fields``, ``fusion``, ``weights``, ``rescore_fields``, ``preset``, ``normalization``,
    ``rrf_k``) searches named fields
    (``latemm.retrieval.field_search``); the run then has a ``score_<field>`` column per field.

    ``where``: one SQL condition over the metadata columns for every query, or a list with one
    per query (None: none for that query). A queries file gives per-query conditions in a
    ``where`` column instead; ``where=`` (one string) is then joined to each by AND.

    ``ray``: ``"local"`` or a cluster address serves a sharded index or a sharded fields
    collection from Ray actors, one per shard (``latemm.runs.distributed``, ``pip install
    'latemm[ray]'``), with the same results; the actors end with the call. An unsharded index
    is refused (one actor would serve all of it).

    ``first_stage``: ``"fde"`` (FDE + faiss) or, for residual codes (``--dtype res2/res4``),
    ``"centroids"``: PLAID's candidate generation
    (``latemm.retrieval.retriever.centroid_first_stage``); default: what the index records
    (centroids for the residual codes ``latemm index`` writes by default, fde otherwise)."""
    from index_store.errors import InputError
    from latemm.index.collection import open_collection

    path = index.path if isinstance(index, Index) else Path(index)
    collection = open_collection(path)
    collection.check_searchable("latemm.build_index(CORPUS, DIR)")  # before any model loads
    if isinstance(reranker, (str, Path)):
        from latemm.retrieval.reranker import MLLMReranker

        reranker = MLLMReranker(str(reranker))
    named: dict[str, Any] = dict(
        fields=fields,
        fusion=fusion,
        weights=weights,
        rescore_fields=rescore_fields,
        preset=preset,
        normalization=normalization,
        rrf_k=rrf_k,
    )
    if not isinstance(where, (str, type(None))) and isinstance(queries, (str, Path)):
        raise InputError(
            f"where= holds one condition per query, but the queries are {str(queries)!r}: give "
            "one string, or put each query's condition in the queries file's 'where' column"
        )
    if any(v is not None for v in named.values()) or collection.named_fields:
        if ray is not None and not collection.sharded:
            raise InputError(
                f"ray={ray!r} serves the shards of a sharded index or fields collection; {path} "
                "is an unsharded multi-field index, searched in this process: leave out ray=, "
                "or build it with latemm.build_index(..., fields=..., num_shards=N)"
            )
        if ray is not None:
            from functools import partial

            from latemm.runs.distributed import ShardActors

            named["actors"] = partial(ShardActors, address=ray)
        named["first_stage"] = first_stage
        return _search_fields(path, queries, k, candidates, where, reranker, rerank_depth, named)

    if ray is not None and not collection.sharded:
        raise InputError(
            f"ray={ray!r} serves the shards of a sharded index or fields collection; {path} is "
            "an ordinary index. Build a sharded one with latemm.build_index(CORPUS, DIR, "
            "num_shards=N), or leave out ray="
        )
    recorded = collection.recorded_encoder()
    if encoder is None and recorded is not None:
        from latemm.encoders import load_encoder

        encoder = load_encoder(recorded)  # rebuilt with its recorded options
    encoder = _as_encoder(encoder)
    if isinstance(queries, (str, Path)) and Path(queries).suffix == ".parquet":
        from latemm.runs.jobs import search_file

        one = where if isinstance(where, str) else None  # a list with a file is refused above
        return _run_of_file(
            lambda out: search_file(
                path,
                queries,
                out,
                encoder=encoder,
                k=k,
                candidates=candidates,
                where=one,
                reranker=reranker,
                rerank_depth=rerank_depth,
                progress=False,
                ray=ray,
                first_stage=first_stage,
            )
        )
    from latemm.runs.jobs import open_retriever

    # One searcher for an index of one encoder, plain or sharded (``OneFieldRetriever``).
    retriever = open_retriever(
        path,
        encoder=encoder,
        reranker=reranker,
        rerank_depth=rerank_depth,
        ray=ray,
        first_stage=first_stage,
    )
    texts = [str(queries)] if isinstance(queries, (str, Path)) else list(queries)
    try:
        return retriever.search(texts, k=k, candidates=candidates, where=where).to_arrow()
    finally:
        retriever.close()  # the Ray actors serving it, if any


def _run_of_file(search: Callable[[Path], pa.Table]) -> pa.Table:
    """The run of a queries file, written to a temporary file by ``search(out)`` and returned."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return search(Path(tmp) / "run.parquet")


def _search_fields(
    index: Path,
    queries: Sequence[str] | str | Path,
    k: int,
    candidates: int | None,
    where: Any,
    reranker: Any,
    rerank_depth: int,
    named: dict[str, Any],
) -> pa.Table:
    from latemm.retrieval.field_search import FieldRetriever, run_schema
    from latemm.runs.jobs import search_fields_file

    if isinstance(queries, (str, Path)) and Path(queries).suffix == ".parquet":
        return _run_of_file(  # Ray actors, if any, end as their handles go out of scope
            lambda out: search_fields_file(
                index,
                queries,
                out,
                k=k,
                candidates=candidates,
                where=where,
                progress=False,
                reranker=reranker,
                rerank_depth=rerank_depth,
                **named,
            )
        )
    retriever = FieldRetriever(index, reranker=reranker, rerank_depth=rerank_depth, **named)
    assert not isinstance(queries, Path)  # a Path is a queries file, handled above
    texts = [queries] if isinstance(queries, str) else [str(q) for q in queries]
    try:
        result = retriever.search(texts, k=retriever.capped(k), candidates=candidates, where=where)
    finally:
        retriever.close()  # the Ray actors serving it, if any
    return result.to_arrow().cast(run_schema(retriever.plan.scored))


def info(index: str | Path) -> dict[str, Any]:
    """What ``latemm info`` prints for an index of any kind: documents, disk bytes (per page
    too), encoder, fields, shards (``num_shards``), rejected rows, an unfinished delete."""
    from latemm.index.collection import open_collection

    return open_collection(index).info()


def delete(index: str | Path, doc_ids: Sequence[Any], *, missing_ok: bool = False) -> int:
    """Delete pages by id from an index of any kind (every field, each id from its shard);
    returns how many were deleted. An id it does not hold is an error unless ``missing_ok``.
    A delete cut short is never half-seen: readers leave its ids out, the next writer ends it."""
    from latemm.index.collection import open_collection

    return open_collection(index).delete(doc_ids, missing_ok=missing_ok)


def compact(index: str | Path) -> dict[str, Any]:
    """Rewrite an index of any kind without its deleted pages; returns ``{"generation": G}``
    (or, for an unsharded multi-field index, ``{"fields": {name: generation or build}}``)."""
    from latemm.index.collection import open_collection

    return open_collection(index).compact()


def verify(index: str | Path) -> list[str]:
    """Every problem of an index of any kind (missing or damaged files, bad checksums, a
    shard or field that disagrees), each naming its file; empty when it is intact."""
    from latemm.index.collection import open_collection

    return open_collection(index).verify()


def evaluate(
    run: pa.Table | str | Path,
    qrels: str | Path | dict[str, dict[str, int]],
    metrics: list[str] | None = None,
) -> dict[str, float]:
    """Metrics (ranx) of a run table or run file against qrels (file or dict)."""
    from latemm.runs.metrics import evaluate as _evaluate
    from latemm.runs.metrics import load_qrels, load_run

    if isinstance(run, pa.Table):
        run_dict: dict[str, dict[str, float]] = {}
        for q, d, s in zip(
            run.column("query_id").to_pylist(),
            run.column("doc_id").to_pylist(),
            run.column("score").to_pylist(),
            strict=True,
        ):
            run_dict.setdefault(q, {})[d] = s
    else:
        run_dict = load_run(run)
    qrels_dict = qrels if isinstance(qrels, dict) else load_qrels(qrels)
    return _evaluate(run_dict, qrels_dict, metrics)


def tune(
    index: str | Path,
    queries: str | Path,
    qrels: str | Path | dict[str, dict[str, int]],
    **options: Any,
) -> Any:
    """Fit a multi-field index's fusion to labelled queries by k-fold cross-validation and
    return the report (``latemm.runs.tune.tune``: ``folds``, ``metric``, ``seed``, ``fields``,
    ``candidates``, ``save``)."""
    from latemm.runs.tune import tune as _tune

    return _tune(index, queries, qrels, **options)
