"""Search as stages, arrays in and arrays out, over one index_store index.

1. ``first_stage``: the top ``C`` (segment, row, score) per query from faiss, over the queries'
   FDEs (multi-vector indexes) or their summed vectors (single-vector indexes, where that sum's
   inner product *is* MaxSim).
2. ``rescore``: exact MaxSim over each query's candidates; every segment's candidate vectors
   are read and decoded once per batch of queries. For a top k, a float16 pass with a proven
   error bound first rules out the candidates that cannot reach it (``maxsim_half``).
3. ``top_k``: best first, ties by doc_id.
4. ``rerank_result``: a reranker reorders each query's top ``depth`` pages (``read_pages`` reads
   only their text and image columns).

``Retriever`` strings them together; ``latemm.index.fields`` reuses them per field. Imports ``fde``,
``index_store`` and ``latemm.ranking.scoring``; encoders and the reranker only when given one.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import torch

from fde import FDEInputError, as_flat, encode_queries
from fde.encode import cpu_threads
from index_store import Index
from index_store.codecs import centroid_ids, is_residual
from index_store.config import FIRST_STAGES
from index_store.errors import InputError
from index_store.segment import CentroidFile, Segment
from latemm.ranking.scoring import (
    INT8_MAX_DIM,
    LONG_PAGE_TOKENS,
    half_accumulates_in_float32,
    int8_products_are_exact,
    maxsim_float32,
    maxsim_half,
    maxsim_int8,
    maxsim_pages,
    maxsim_pairs,
    may_reach_top,
    thread_pool,
)

# Candidates rescored exactly by default: recall@10 >= 0.98 against exhaustive MaxSim on
# MiniLM-embedded Vaswani and ColPali-shaped pages (experiments/bench_search.py).
DEFAULT_CANDIDATES = 512

# Each query token's nearest centroids whose pages become candidates in the centroid first
# stage (PLAID's ncells): on MMLongBench res4 (1,728 long pages) 2 probes keep the recall@10
# of probing every centroid within 0.001 at depths 64-256; 1 loses 0.007 at 256
# (``python -m experiments.centroid_probe``, RESULTS section 5d).
CENTROID_PROBE = 2


@dataclass(frozen=True)
class SearchResult:
    """Row-aligned results, like faiss's (D, I): row q holds query q's top k, best first.

    Missing entries (fewer than k documents) have doc_id ``None`` and NaN scores.
    """

    query_ids: list[str]
    doc_ids: np.ndarray  # (Q, k) object
    scores: np.ndarray  # (Q, k) float32: the final score
    fde_scores: np.ndarray  # (Q, k) float32
    maxsim_scores: np.ndarray  # (Q, k) float32; NaN where rescoring did not run
    rerank_scores: np.ndarray | None = None  # (Q, k) float32
    field_scores: dict[str, np.ndarray] | None = None  # name -> (Q, k) float32, NaN if absent

    def to_run(self) -> dict[str, dict[str, float]]:
        """``{query_id: {doc_id: score}}``, what ``latemm.runs.metrics.evaluate`` reads."""
        return {
            q: {
                d: float(s)
                for d, s in zip(self.doc_ids[n], self.scores[n], strict=True)
                if d is not None
            }
            for n, q in enumerate(self.query_ids)
        }

    def to_arrow(self) -> pa.Table:
        """The run table: query_id, doc_id, rank (1-based), score and one column per stage."""
        rows: dict[str, list[Any]] = {
            k: []
            for k in (
                "query_id",
                "doc_id",
                "rank",
                "score",
                "fde_score",
                "maxsim_score",
                "rerank_score",
            )
        }
        for q, query_id in enumerate(self.query_ids):
            for r in range(self.doc_ids.shape[1]):
                if self.doc_ids[q, r] is None:
                    continue
                rows["query_id"].append(query_id)
                rows["doc_id"].append(self.doc_ids[q, r])
                rows["rank"].append(r + 1)
                rows["score"].append(float(self.scores[q, r]))
                rows["fde_score"].append(_nullable(self.fde_scores[q, r]))
                rows["maxsim_score"].append(_nullable(self.maxsim_scores[q, r]))
                rows["rerank_score"].append(
                    None if self.rerank_scores is None else _nullable(self.rerank_scores[q, r])
                )
        columns = {
            "query_id": pa.array(rows["query_id"], pa.string()),
            "doc_id": pa.array(rows["doc_id"], pa.string()),
            "rank": pa.array(rows["rank"], pa.int32()),
            "score": pa.array(rows["score"], pa.float32()),
            "fde_score": pa.array(rows["fde_score"], pa.float32()),
            "maxsim_score": pa.array(rows["maxsim_score"], pa.float32()),
            "rerank_score": pa.array(rows["rerank_score"], pa.float32()),
        }
        present = self.doc_ids != None  # noqa: E711 - elementwise over an object array
        for name, values in (self.field_scores or {}).items():
            columns[f"score_{name}"] = pa.array(
                [_nullable(v) for v in values[present]], pa.float32()
            )
        return pa.table(columns)


# One condition for every query (a string, or None for none), or one per query (None: none).
Where: TypeAlias = str | Sequence[str | None] | None


def scopes_of(where: Where, n_queries: int) -> list[str | None] | None:
    """The per-query conditions of ``where``, checked against the number of queries; None when
    one condition (or none) applies to every query."""
    if where is None or isinstance(where, str):
        return None
    conditions = list(where)
    if len(conditions) != n_queries:
        raise InputError(
            f"where= holds {len(conditions)} conditions for {n_queries} queries; give one string "
            "for every query, or one condition (or None) per query"
        )
    for i, condition in enumerate(conditions):
        if condition is not None and not isinstance(condition, str):
            raise InputError(
                f"where= item {i} is {type(condition).__name__}; expected a SQL condition or None",
                item=i,
            )
    return conditions


def by_scope(
    scopes: Sequence[str | None],
    query_ids: Sequence[str],
    search: Callable[[str | None, list[int]], SearchResult],
) -> SearchResult:
    """Search each group of queries that share a condition with ``search(condition, rows)``
    (their rows, in order) and put the results back in the queries' order: each query is
    searched exactly as it would be alone under its condition. An error of a group's condition
    names its first query (``InputError.item``)."""
    groups: dict[str | None, list[int]] = {}
    for i, condition in enumerate(scopes):
        groups.setdefault(condition, []).append(i)
    parts = []
    for condition, rows in groups.items():
        try:
            parts.append((rows, search(condition, rows)))
        except InputError as exc:
            if exc.item is not None or condition is None:
                raise
            raise InputError(str(exc), item=rows[0]) from exc
    return stack_results(parts, list(query_ids))


def stack_results(
    parts: Sequence[tuple[list[int], SearchResult]], query_ids: list[str]
) -> SearchResult:
    """One SearchResult of several, each holding the queries at ``rows`` (padded to the widest)."""
    width = max(result.doc_ids.shape[1] for _, result in parts)
    shape = (len(query_ids), width)

    def place(pieces: Sequence[np.ndarray], fill: Any, dtype: Any) -> np.ndarray:
        out = np.full(shape, fill, dtype=dtype)
        for (rows, _), values in zip(parts, pieces, strict=True):
            out[rows, : values.shape[1]] = values
        return out

    results = [result for _, result in parts]
    reranked = [r.rerank_scores for r in results if r.rerank_scores is not None]
    fields = [r.field_scores for r in results if r.field_scores is not None]
    return SearchResult(
        query_ids,
        place([r.doc_ids for r in results], None, object),
        place([r.scores for r in results], np.nan, np.float32),
        place([r.fde_scores for r in results], np.nan, np.float32),
        place([r.maxsim_scores for r in results], np.nan, np.float32),
        place(reranked, np.nan, np.float32) if len(reranked) == len(results) else None,
        {name: place([f[name] for f in fields], np.nan, np.float32) for name in fields[0]}
        if fields and len(fields) == len(results)
        else None,
    )


def take_queries(
    flat: np.ndarray, offsets: np.ndarray, rows: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """The flat (N', d) vectors and (len(rows) + 1,) offsets of the queries at ``rows``."""
    pieces = [flat[offsets[i] : offsets[i + 1]] for i in rows]
    lengths = np.array([p.shape[0] for p in pieces], dtype=np.int64)
    sub = np.concatenate(pieces, axis=0) if pieces else flat[:0]
    return np.ascontiguousarray(sub), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def truncate(result: SearchResult, k: int) -> SearchResult:
    return SearchResult(
        result.query_ids,
        result.doc_ids[:, :k],
        result.scores[:, :k],
        result.fde_scores[:, :k],
        result.maxsim_scores[:, :k],
        None if result.rerank_scores is None else result.rerank_scores[:, :k],
        None
        if result.field_scores is None
        else {name: v[:, :k] for name, v in result.field_scores.items()},
    )


def _nullable(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


# ------------------------------------------------------------------------------------ stages
@dataclass(frozen=True)
class Candidates:
    """Row-aligned first-stage candidates: query q's c-th is (segment, row) of the index.

    ``segments`` and ``rows`` are (Q, C) int64, -1 where a query has fewer than C; ``scores``
    (Q, C) float32, -inf there.
    """

    segments: np.ndarray
    rows: np.ndarray
    scores: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        return self.segments >= 0


def check_request(k: int, candidates: int | None) -> int:
    """The number of first-stage candidates to take for ``k`` results (at least ``k``)."""
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    if candidates is not None and candidates < 1:
        raise InputError(f"candidates must be >= 1, got {candidates}")
    return max(k, candidates if candidates is not None else DEFAULT_CANDIDATES)


def first_candidates(
    k: int, candidates: int | None, first_stage: str, refine_depth: int | None
) -> int:
    """``check_request``'s candidates, at most ``max(k, refine_depth)`` under the centroid
    first stage: it already ranks them by centroid interaction, the order the depth keeps."""
    n_cand = check_request(k, candidates)
    if first_stage == "centroids" and refine_depth is not None:
        return min(n_cand, max(k, refine_depth))
    return n_cand


def query_ids_for(query_ids: Sequence[str] | None, n_queries: int) -> list[str]:
    ids = [str(i) for i in (query_ids if query_ids is not None else range(n_queries))]
    if len(ids) != n_queries:
        raise InputError(f"{len(ids)} query_ids for {n_queries} queries")
    return ids


def as_query_arrays(index: Index, query_vectors: Any, query_offsets: Any) -> tuple[Any, Any]:
    """Flat (N, d) float32 query vectors and (Q + 1,) offsets, checked against the index."""
    dim = index.config.dim
    try:
        return as_flat(query_vectors, dim, offsets=query_offsets, kind="query")
    except FDEInputError as exc:
        raise InputError(f"{exc} (the index stores {dim}-dimensional vectors)") from exc


@dataclass(frozen=True)
class CentroidQueries:
    """What the centroid first stage searches with: the queries' flat (N, d) float32 vectors
    and (Q + 1,) offsets (``first_stage_queries(..., centroids=True)``)."""

    flat: np.ndarray
    offsets: np.ndarray


def check_first_stage(name: str, configs: Sequence[Any], where: Any) -> str:
    """``name`` if every index config of ``configs`` can take that first stage; an error
    naming ``--first-stage`` otherwise."""
    if name not in FIRST_STAGES:
        raise InputError(f"--first-stage must be one of {', '.join(FIRST_STAGES)}, got {name!r}")
    for config in configs if name == "centroids" else ():
        if not config.takes_centroids:
            raise InputError(
                f"--first-stage centroids ranks pages by their tokens' residual-code centroids; "
                f"{where} stores {config.dtype} vectors. Leave --first-stage out, or build the "
                "index with --dtype res2 or res4"
            )
    return name


def first_stage_queries(
    index: Index,
    flat: np.ndarray,
    offsets: np.ndarray,
    *,
    device: str | None = None,
    centroids: bool = False,
) -> Any:
    """What faiss searches with, (Q, D) float32: the queries' FDEs, or for a single-vector
    index the sum of each query's vectors (whose inner product with a one-vector document is
    exactly that document's MaxSim). ``centroids``: the query vectors themselves
    (``CentroidQueries``), for ``centroid_first_stage``."""
    if centroids:
        return CentroidQueries(np.ascontiguousarray(flat, dtype=np.float32), offsets)
    if getattr(index.config, "single_vector", False):
        sums = np.add.reduceat(flat, offsets[:-1], axis=0) if flat.shape[0] else flat[:0]
        return np.ascontiguousarray(sums, dtype=np.float32)  # (Q, d)
    return encode_queries(flat, index.config.fde_config, offsets=offsets, device=device)


def first_stage(
    index: Index,
    query_matrix: np.ndarray,
    n_cand: int,
    allowed: list[np.ndarray | None],
    *,
    nprobe: int = 32,
    ef_search: int = 256,
) -> Candidates:
    """Top ``n_cand`` (segment, row, faiss score) per query over all segments.

    ``query_matrix`` (Q, D) float32 from ``first_stage_queries``; ``allowed`` per segment a bool
    mask of searchable rows, or None for all rows. Segments coded under the index's codebook are
    searched together by one structure (``Index.global_first_stage``), whatever their number;
    the others (``--faiss`` factories, segments older than the codebook) one faiss index each.
    ``CentroidQueries`` take the centroid first stage instead (``centroid_first_stage``)."""
    if isinstance(query_matrix, CentroidQueries):
        return centroid_first_stage(index, query_matrix, n_cand, allowed)
    n_queries = query_matrix.shape[0]
    all_seg, all_row, all_score = [], [], []
    coded = index.coded_segments()
    structure = index.global_first_stage() if coded else None
    if structure is not None:
        masks = [allowed[s] for s in coded]
        seg_of, row_of, scores = structure.search(query_matrix, n_cand, masks)
        all_seg.append(seg_of)
        all_row.append(row_of)
        all_score.append(scores)
    for s, seg in enumerate(index.segments):
        mask = allowed[s]
        if seg.fde_codes is not None or (mask is not None and not mask.any()):
            continue
        faiss_index = seg.faiss_index()
        params = search_params(faiss_index, mask, nprobe=nprobe, ef_search=ef_search)
        k = min(n_cand, seg.num_docs)
        if n_queries < _faiss_blas_threshold():
            with _one_openmp_thread():  # query by query: see _one_openmp_thread
                found = [faiss_index.search(query_matrix[q : q + 1], k, params=params)
                         for q in range(n_queries)]  # fmt: skip
            scores = np.concatenate([f[0] for f in found])
            rows = np.concatenate([f[1] for f in found])
        else:
            scores, rows = faiss_index.search(query_matrix, k, params=params)
        all_seg.append(np.where(rows >= 0, s, -1))
        all_row.append(rows)
        all_score.append(np.where(rows >= 0, scores, -np.inf))
    if not all_seg:
        empty = np.full((n_queries, 0), -1, dtype=np.int64)
        return Candidates(empty, empty, np.zeros((n_queries, 0), np.float32))
    seg_of = np.concatenate(all_seg, axis=1)
    row_of = np.concatenate(all_row, axis=1)
    score = np.concatenate(all_score, axis=1)
    if score.shape[1] > n_cand:
        top = np.argsort(-score, axis=1, kind="stable")[:, :n_cand]
        seg_of = np.take_along_axis(seg_of, top, 1)
        row_of = np.take_along_axis(row_of, top, 1)
        score = np.take_along_axis(score, top, 1)
    return Candidates(seg_of.astype(np.int64), row_of.astype(np.int64), score.astype(np.float32))


def centroid_first_stage(
    index: Index,
    queries: CentroidQueries,
    n_cand: int,
    allowed: list[np.ndarray | None],
    *,
    probe: int = CENTROID_PROBE,
) -> Candidates:
    """Top ``n_cand`` (segment, row, score) per query by centroid interaction, PLAID's
    candidate generation over residual codes: each query token's ``probe`` nearest centroids
    name the pages that hold a token of theirs (``Index.centroid_files``, the inverted files
    built from the codes); each such page is scored as MaxSim with every token standing for its
    centroid (a gather from the query x centroid table, no decoding), and the best are the
    candidates, their interaction the first-stage score. ``allowed`` as for ``first_stage``.
    A query whose probed centroids name fewer than ``n_cand`` pages probes twice as many, until
    they do or every centroid is probed: a search over at least k pages returns k (PLAID would
    return fewer). A segment too small to train the codec (stored in float16) is scored
    exactly. Unlike the FDE, whose partitions blur a long page's hundreds of tokens, the centroids keep each
    token apart: on MMLongBench's long pages it is the better first stage (issue 29)."""
    flat, offsets = queries.flat, queries.offsets
    n_queries = offsets.size - 1
    seg_out = np.full((n_queries, n_cand), -1, dtype=np.int64)
    row_out = np.full((n_queries, n_cand), -1, dtype=np.int64)
    score_out = np.full((n_queries, n_cand), -np.inf, dtype=np.float32)
    searched = [
        s
        for s, (seg, mask) in enumerate(zip(index.segments, allowed, strict=True))
        if seg.num_docs and (mask is None or mask.any())
    ]
    exact = [s for s in searched if not is_residual(index.segments[s].dtype)]
    # built before the workers start, once per reader; each file's searchable pages
    files = [(f, _file_mask(index, f, allowed)) for f in index.centroid_files()]
    files = [(f, mask) for f, mask in files if mask is None or mask.any()]
    batch = [centroid_tables(index.segments[f.segments[0]], flat, offsets) for f, _ in files]

    def one_query(q: int) -> None:
        query = flat[offsets[q] : offsets[q + 1]]
        found = []  # (segment numbers, rows, scores) of each part
        for s in exact:  # too few tokens to train the codec: scored exactly, all of them
            seg, mask = index.segments[s], allowed[s]
            rows = np.flatnonzero(seg.live if mask is None else mask)
            docs, doc_offsets = take_sets(seg.vectors, seg.offsets, rows)
            scores = maxsim_pairs(query, docs.astype(np.float32), doc_offsets)
            found.append((np.full(rows.size, s, dtype=np.int64), rows, scores))
        tables = [
            _query_table(t, index.segments[f.segments[0]], flat, offsets, q)
            for (f, _), t in zip(files, batch, strict=True)
        ]
        widest = max((t.shape[1] for t in tables), default=0)
        p = probe
        while True:  # wider until n_cand pages or every centroid
            coded = [
                _centroid_candidates(f, table, _probed_centroids(table, p), mask)
                for (f, mask), table in zip(files, tables, strict=True)
            ]
            if sum(c[1].size for c in found + coded) >= n_cand or p >= widest:
                break
            p *= 2
        parts = found + coded
        if not parts:
            return
        seg_of, row_of, score = (np.concatenate([c[i] for c in parts]) for i in range(3))
        score = score.astype(np.float32)
        top = np.lexsort((row_of, seg_of, -score))[:n_cand]  # ties in segment and row order
        seg_out[q, : top.size], row_out[q, : top.size] = seg_of[top], row_of[top]
        score_out[q, : top.size] = score[top]

    _each_query(one_query, list(range(n_queries)))
    return Candidates(seg_out, row_out, score_out)


def _file_mask(
    index: Index, file: CentroidFile, allowed: list[np.ndarray | None]
) -> np.ndarray | None:
    """(P,) bool: the pages of ``file`` a search may return (``allowed`` per segment, None:
    the live ones); None when that is every page."""
    masks = [allowed[s] for s in file.segments]
    if all(m is None for m in masks) and not any(
        index.segments[s].deleted.any() for s in file.segments
    ):
        return None
    return np.concatenate(
        [
            index.segments[s].live if m is None else m
            for s, m in zip(file.segments, masks, strict=True)
        ]
    )


def _probed_centroids(table: np.ndarray, probe: int) -> np.ndarray | None:
    """The centroids among some query token's ``probe`` nearest (``table`` (Tq, K) their
    similarities), ascending; None when that is every centroid."""
    if probe >= table.shape[1]:
        return None
    return np.unique(np.argpartition(table, -probe, axis=1)[:, -probe:])


def _centroid_candidates(
    file: CentroidFile, table: np.ndarray, probed: np.ndarray | None, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (segment numbers, rows) of ``file``'s pages holding a token of one of the
    ``probed`` centroids (None: any) and searchable under ``mask`` (per page), and their
    centroid interaction scores; ``table`` (Tq, K) the query tokens' similarities to the
    file's centroids."""
    if probed is None:
        pages = np.arange(file.offsets.size - 1, dtype=np.int64)
    else:
        lengths = file.starts[probed + 1] - file.starts[probed]
        at = np.repeat(file.starts[probed] - np.cumsum(lengths) + lengths, lengths)
        pages = np.unique(file.pages[at + np.arange(int(lengths.sum()))])
    if mask is not None:
        pages = pages[mask[pages]]
    if not pages.size:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    tokens, token_offsets = take_sets(file.tokens, file.offsets, pages)
    sims = np.take(table, tokens, axis=1)  # (Tq, tokens of the candidates)
    scores = np.maximum.reduceat(sims, token_offsets[:-1], axis=1).sum(axis=0)
    return (*file.locate(pages), scores)


def _faiss_blas_threshold() -> int:
    """The fewest queries faiss searches with one matrix product (below, query by query)."""
    import faiss as faiss_module

    faiss: Any = faiss_module  # its stubs lack cvar
    return int(faiss.cvar.distance_compute_blas_threshold)


@contextmanager
def _one_openmp_thread() -> Iterator[None]:
    """faiss on one OpenMP thread of this thread. Below its matrix-product threshold, faiss
    rounds a query's float32 scores differently by thread count and by the queries searched
    with it (3e-5 on 10,240-d FDEs); searched alone on one thread, a page gets the same score
    in every process and batch: a Ray actor runs one thread where the coordinator runs all."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def search_params(
    faiss_index: Any, mask: np.ndarray | None, *, nprobe: int = 32, ef_search: int = 256
) -> Any:
    """faiss search parameters: HNSW's efSearch or IVF's nprobe, and a row selector."""
    import faiss as faiss_module

    faiss: Any = faiss_module  # its stubs lack the SearchParameters classes

    concrete = faiss.downcast_index(faiss_index)
    if isinstance(concrete, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW()
        params.efSearch = ef_search
    elif isinstance(concrete, faiss.IndexIVF):
        params = faiss.SearchParametersIVF()
        params.nprobe = nprobe
    else:
        params = faiss.SearchParameters()
    if mask is not None:
        bitmap = np.packbits(mask, bitorder="little")
        selector = faiss.IDSelectorBitmap(mask.size, faiss.swig_ptr(bitmap))
        setattr(selector, "bitmap_ref", bitmap)  # noqa: B010 - keeps the buffer alive for faiss
        params.sel = selector
        params.selector_ref = selector
    return params


def take_sets(
    vectors: np.ndarray, offsets: np.ndarray, picks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sets ``picks`` (m,) of a flat (N, d) array with (n + 1,) offsets, as flat + (m + 1,)."""
    lengths = np.diff(offsets)[picks]
    out_offsets = np.zeros(picks.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=out_offsets[1:])
    starts = np.repeat(offsets[picks] - out_offsets[:-1], lengths)
    return vectors[starts + np.arange(out_offsets[-1])], out_offsets


def rescore(
    index: Index,
    flat: np.ndarray,
    offsets: np.ndarray,
    cands: Candidates,
    *,
    device: str | None = None,
    k: int | None = None,
    refine_depth: int | None = None,
) -> np.ndarray:
    """Exact MaxSim of each query against its own candidates: (Q, C) float32, NaN where a
    query has no candidate.

    With ``k`` (on the CPU), a float16 pass first scores every candidate with a proven error
    bound (``maxsim_half``) and only those that might reach their query's top k are scored
    exactly; the others keep their float16 score, which is strictly below the k-th exact one.
    Either way each query's top k and its scores are those of the exact kernel.

    An index with a refine copy (``IndexConfig.refine``) is scored from the copy: with ``k``
    on the CPU, only each query's ``refine_depth`` (default: the config's) best candidates on
    the compact codes (``_refine_picks``; the others are NaN); otherwise every candidate.
    Residual codes with ``k`` and a ``refine_depth`` (default: ``IndexConfig.default_depth``),
    on the CPU: only each query's depth best candidates by their tokens' centroids are decoded
    (``_residual_rescore``; the others are NaN); without a depth, every candidate is decoded
    and scored exactly.
    """
    if refine_depth is None:
        refine_depth = index.config.default_depth
    refined = index.refined()
    if refined is not index:
        if k is not None and _on_cpu(device) and half_accumulates_in_float32():
            cands = _refine_picks(index, flat, offsets, cands, max(k, refine_depth or 0))
        return rescore(refined, flat, offsets, cands, device=device, k=k)
    out = np.full(cands.segments.shape, np.nan, dtype=np.float32)
    exact = cands.valid
    residual = all(
        is_residual(index.segments[s].dtype) for s in np.unique(cands.segments[cands.valid])
    )
    if residual and k is not None and refine_depth is not None and _on_cpu(device):
        _residual_rescore(index, flat, offsets, cands, k, refine_depth, out)
        return out
    # Other residual searches decode every candidate once, for the exact pass: a float16 pass
    # first would decode them twice (Vaswani res4, 3,000 abstracts: 41-47 against 64-75 ms
    # per query, the same top 10).
    if k is not None and _on_cpu(device) and half_accumulates_in_float32() and not residual:
        fast, bounds = _fast_scores(index, flat, offsets, cands)
        exact = may_reach_top(fast, bounds, cands.valid, k)
        out = np.where(cands.valid & ~exact, fast, out)
    _exact_scores(index, flat, offsets, cands, exact, out, device)
    return out


def _residual_rescore(
    index: Index,
    flat: np.ndarray,
    offsets: np.ndarray,
    cands: Candidates,
    k: int,
    depth: int,
    out: np.ndarray,
) -> None:
    """``rescore`` of residual codes with ``k`` and a ``depth``, each query on a worker of its
    own, as PLAID scores: the query's similarity to every centroid once (``_centroid_table``),
    then its candidates' codes read once and ranked by centroid interaction (each token its
    centroid), only the ``max(k, depth)`` best kept (the others left NaN); their residuals are
    decoded (no centroid rows) and scored in float32 as centroid similarity + residual product,
    with proven bounds (``maxsim_float32``); those that may reach the query's top k get their
    centroid rows added (the full decoding, bit for bit) and the exact float64 pass. Decoding
    is most of a residual search: a depth of 128 of 512 candidates decodes a quarter, and the
    float32 pass replaces float64 products (24,779 MiniLM tokens against a 10-token query: 7.7
    against 50 ms)."""
    bounded = _float32_products_exact_enough()
    batch = {}  # each candidates' codebook's table of the batch (None: too large to keep)
    for s in np.unique(cands.segments[cands.valid]).tolist():
        digest = index.segments[s].codebook_digest()
        if digest not in batch:
            batch[digest] = centroid_tables(index.segments[s], flat, offsets)

    def one_query(q: int) -> None:
        query = flat[offsets[q] : offsets[q + 1]]
        parts = []  # per segment: segment, candidate columns, codes, page offsets, centroid ids
        for s in np.unique(cands.segments[q][cands.valid[q]]).tolist():
            cols = np.flatnonzero(cands.valid[q] & (cands.segments[q] == s))
            cols = cols[np.argsort(cands.rows[q, cols], kind="stable")]  # read in disk order
            codes, _, page_offsets = index.codes(s, cands.rows[q, cols])
            parts.append((index.segments[s], cols, codes, page_offsets, centroid_ids(codes)))
        tables = [  # (Tq, K) each
            _query_table(batch[p[0].codebook_digest()], p[0], flat, offsets, q) for p in parts
        ]
        keep = max(k, depth)
        if sum(p[1].size for p in parts) > keep:
            approx = np.concatenate(
                [
                    np.maximum.reduceat(t[:, p[4]], p[3][:-1], axis=1).sum(axis=0)
                    for t, p in zip(tables, parts, strict=True)
                ]
            )
            kept = np.zeros(approx.size, dtype=bool)
            kept[np.argsort(-approx, kind="stable")[:keep]] = True
            start, pruned = 0, []
            for seg, cols, codes, page_offsets, ids in parts:
                mine = np.flatnonzero(kept[start : start + cols.size])
                start += cols.size
                picked, picked_offsets = take_sets(codes, page_offsets, mine)
                picked_ids = take_sets(ids, page_offsets, mine)[0]
                pruned.append((seg, cols[mine], picked, picked_offsets, picked_ids))
            parts = pruned
        cols = np.concatenate([p[1] for p in parts])
        lengths = np.concatenate([np.diff(p[3]) for p in parts])
        set_offsets = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=set_offsets[1:])
        residuals = np.empty((int(set_offsets[-1]), flat.shape[1]), dtype=np.float32)
        add = np.concatenate([t[:, p[4]] for t, p in zip(tables, parts, strict=True)], axis=1)
        start = 0
        for seg, _, codes, _, _ in parts:  # decoded in place: a third faster than new arrays
            seg.decode_residual(
                codes, np.float32, residuals[start : start + len(codes)], centroids=False
            )
            start += len(codes)
        magnitude = np.concatenate([np.full(p[1].size, p[0].decoded_magnitude()) for p in parts])
        scores, bounds = maxsim_float32(
            query, residuals, set_offsets, magnitude, np.ascontiguousarray(add.T)
        )
        if not bounded:
            bounds[:] = np.inf
        need = np.flatnonzero(
            may_reach_top(scores[None], bounds[None], np.ones((1, cols.size), bool), k)[0]
        )
        docs, doc_offsets = take_sets(residuals, set_offsets, need)
        ids = take_sets(np.concatenate([p[4] for p in parts]), set_offsets, need)[0]
        # The full decoding, centroid + residual; each part's pages are a run of ``need``.
        ends = np.searchsorted(need, np.cumsum([p[1].size for p in parts]))
        for (seg, *_), a, b in zip(parts, np.concatenate([[0], ends[:-1]]), ends, strict=True):
            run = slice(doc_offsets[a], doc_offsets[b])
            docs[run] += np.take(seg.residual_parts()[0], ids[run], axis=0)
        scores[need] = maxsim_pairs(query, docs, doc_offsets, float64=True)
        out[q, cols] = scores

    _each_query(one_query, np.flatnonzero(cands.valid.any(axis=1)).tolist())


# The query x centroid tables kept for the latest batches of queries (``centroid_tables``).
TABLE_CACHE_BYTES = 1 << 27
_recent_tables: OrderedDict[tuple[bytes, bytes], np.ndarray] = OrderedDict()
_recent_tables_lock = threading.Lock()


def centroid_tables(segment: Segment, flat: np.ndarray, offsets: np.ndarray) -> np.ndarray | None:
    """(N, K) float32: every query token of ``flat`` (N, d; the queries at ``offsets``) against
    the centroids of a residual segment's codebook, each query's rows its own product
    (``_centroid_table``); None where the batch's table would take more than
    ``TABLE_CACHE_BYTES`` (each query then makes its own product when it needs it).

    The latest batches' tables are kept by codebook (``Segment.codebook_digest``) and query
    vectors: a search's first stage and its rescoring, and every shard of a collection coded
    under one codebook (``pipeline.shard_codebook``), read one table where each phase of each
    shard multiplied the query by the same centroids again (3 shards: 6 products of 8,192 x
    384 a query, 2.5 ms each on one core, now 1)."""
    centroids = segment.residual_parts()[0]
    if flat.shape[0] * centroids.shape[0] * 4 > TABLE_CACHE_BYTES:
        return None
    queries = np.ascontiguousarray(flat, dtype=np.float32)
    digest = hashlib.blake2b(queries.data, digest_size=16)
    digest.update(np.ascontiguousarray(offsets, dtype=np.int64).data)  # each query's product
    key = (segment.codebook_digest(), digest.digest())
    with _recent_tables_lock:
        if key in _recent_tables:
            _recent_tables.move_to_end(key)
            return _recent_tables[key]
    table = np.empty((queries.shape[0], centroids.shape[0]), dtype=np.float32)

    def one_query(q: int) -> None:
        table[offsets[q] : offsets[q + 1]] = _centroid_table(
            segment, queries[offsets[q] : offsets[q + 1]]
        )

    _each_query(one_query, list(range(offsets.size - 1)))
    table.flags.writeable = False  # shared by every search of the batch
    with _recent_tables_lock:
        _recent_tables[key] = table
        while sum(t.nbytes for t in _recent_tables.values()) > TABLE_CACHE_BYTES:
            _recent_tables.popitem(last=False)
    return table


def _query_table(
    batch: np.ndarray | None, segment: Segment, flat: np.ndarray, offsets: np.ndarray, q: int
) -> np.ndarray:
    """Query ``q``'s rows of its batch's ``centroid_tables`` (its own product without one)."""
    if batch is not None:
        return batch[offsets[q] : offsets[q + 1]]
    return _centroid_table(segment, flat[offsets[q] : offsets[q + 1]])


def _centroid_table(segment: Segment, query: np.ndarray) -> np.ndarray:
    """(Tq, K) float32: the query tokens' similarities to a residual segment's centroids, one
    product (PLAID's centroid scores: a token's centroid similarity is then a gather)."""
    centroids = segment.residual_parts()[0]
    queries = torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32))
    return torch.mm(queries, torch.from_numpy(centroids).T).numpy()


def _float32_products_exact_enough() -> bool:
    """Whether torch multiplies float32 in float32 (not in a lower precision it may be set to),
    as ``maxsim_float32``'s bounds assume."""
    return torch.get_float32_matmul_precision() == "highest"


def bounded_scores(
    index: Index, flat: np.ndarray, offsets: np.ndarray, cands: Candidates, device: str | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """(Q, C) fast scores of the valid candidates (NaN elsewhere) and bounds: each within its
    bound of the score ``rescore`` gives (over the refine copy where there is one). None where
    the fast pass does not run (a GPU, or float16 products not accumulated in float32)."""
    if not (_on_cpu(device) and half_accumulates_in_float32()):
        return None
    fast, bounds = _fast_scores(index.refined(), flat, offsets, cands)
    return np.where(cands.valid, fast, np.nan).astype(np.float64), bounds


def rescore_chosen(
    index: Index,
    flat: np.ndarray,
    offsets: np.ndarray,
    cands: Candidates,
    chosen: np.ndarray,
    device: str | None = None,
) -> np.ndarray:
    """(Q, C) the scores ``rescore`` gives (without k) of the ``chosen`` candidates, NaN
    elsewhere."""
    out = np.full(chosen.shape, np.nan, dtype=np.float32)
    _exact_scores(index.refined(), flat, offsets, cands, chosen, out, device)
    return out


def _refine_picks(
    index: Index, flat: np.ndarray, offsets: np.ndarray, cands: Candidates, depth: int
) -> Candidates:
    """Each query's ``depth`` best candidates by the fast pass over the compact codes (ties in
    candidate order), the others made invalid: what the refine copy rescores."""
    fast, _ = _fast_scores(index, flat, offsets, cands, with_bounds=False)
    keep = np.zeros(fast.shape, dtype=bool)
    for q in range(fast.shape[0]):
        cols = np.flatnonzero(cands.valid[q])
        keep[q, cols[np.argsort(-fast[q, cols], kind="stable")[:depth]]] = True
    return Candidates(
        np.where(keep, cands.segments, -1), np.where(keep, cands.rows, -1), cands.scores
    )


def int8_in_place(dim: int) -> bool:
    """Whether the fast pass multiplies int8 codes of this dimension as they are stored."""
    return dim <= INT8_MAX_DIM and int8_products_are_exact()


def _on_cpu(device: str | None) -> bool:
    """Whether products run on the CPU (the float16 pass is a CPU speed-up)."""
    return device is None or str(device).startswith("cpu")


def _exact_scores(
    index: Index,
    flat: np.ndarray,
    offsets: np.ndarray,
    cands: Candidates,
    chosen: np.ndarray,
    out: np.ndarray,
    device: str | None,
) -> None:
    """Writes into ``out`` the exact MaxSim of the ``chosen`` (Q, C) candidates, products in
    float64 rounded to float32 so that a score does not depend on the candidates beside it
    (identical documents score identically and tie by doc_id). The distinct chosen pages,
    across segments, are read and decoded once, in chunks of ``_EXACT_CHUNK_BYTES``, and
    each query scores its own pages of a chunk in one call."""
    segs, rows, position = _distinct_pages(cands, chosen)
    tokens = _page_tokens(index, segs, rows)
    views = _long_half_pages(index, segs, rows, tokens) if _on_cpu(device) else [None] * segs.size
    rest = chosen.copy()
    for q in np.flatnonzero(chosen.any(axis=1)).tolist():
        cols = np.flatnonzero(position[q] >= 0)
        pages = [views[i] for i in position[q, cols].tolist()]
        if any(page is None for page in pages):
            continue
        # Long float16 pages only: each multiplied where it lies in the memory map, page by
        # page (``maxsim_pages``), none copied to float32 first.
        query = flat[offsets[q] : offsets[q + 1]]
        out[q, cols] = maxsim_pages(query, np.array([0, len(query)]), pages)[0]
        rest[q] = False
    if not rest.any():
        return
    if not np.array_equal(rest, chosen):
        segs, rows, position = _distinct_pages(cands, rest)
        tokens = _page_tokens(index, segs, rows)
    for start, stop in _chunks(tokens * flat.shape[1] * 4, _EXACT_CHUNK_BYTES):
        span = slice(start, stop)
        vectors, set_offsets = _read_pages(index, segs[span], rows[span], tokens[span], np.float32)
        at = np.where((position >= start) & (position < stop), position - start, -1)

        def one_query(
            q: int,
            at: np.ndarray = at,
            size: int = stop - start,
            vectors: np.ndarray = vectors,
            set_offsets: np.ndarray = set_offsets,
        ) -> None:
            cols = np.flatnonzero(at[q] >= 0)
            picks = at[q, cols]
            query = flat[offsets[q] : offsets[q + 1]]
            if picks.size == size and np.array_equal(np.sort(picks), np.arange(picks.size)):
                # The query's candidates are the whole chunk: no copy, scores put in its order.
                out[q, cols] = maxsim_pairs(
                    query, vectors, set_offsets, device=device, float64=True
                )[picks]
                return
            docs, doc_offsets = take_sets(vectors, set_offsets, picks)
            out[q, cols] = maxsim_pairs(query, docs, doc_offsets, device=device, float64=True)

        queries = np.flatnonzero((at >= 0).any(axis=1)).tolist()
        if _on_cpu(device):
            _each_query(one_query, queries)
        else:
            for q in queries:
                one_query(q)


def _long_half_pages(
    index: Index, segs: np.ndarray, rows: np.ndarray, tokens: np.ndarray
) -> list[np.ndarray | None]:
    """A view of the stored vectors of each page (segment, row) of a float16 segment with at
    least ``LONG_PAGE_TOKENS`` tokens (``maxsim_pages`` reads those in place); None for the
    others."""
    views: list[np.ndarray | None] = []
    for s, row, n in zip(segs.tolist(), rows.tolist(), tokens.tolist(), strict=True):
        half = index.half_vectors(s) if n >= LONG_PAGE_TOKENS else None
        if half is None:
            views.append(None)
            continue
        vectors, seg_offsets, _ = half
        start = int(seg_offsets[row])
        views.append(vectors[start : start + n])
    return views


def _distinct_pages(
    cands: Candidates, chosen: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (segment, row) pages among the ``chosen`` (Q, C) candidates, sorted, and
    each chosen candidate's position among them (-1 elsewhere)."""
    keys = cands.segments.astype(np.int64) * (1 << 40) + cands.rows
    union, inverse = np.unique(keys[chosen], return_inverse=True)
    position = np.full(keys.shape, -1, dtype=np.int64)
    position[chosen] = inverse
    return union >> 40, union & ((1 << 40) - 1), position


def _page_tokens(index: Index, segs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Token count of each page (segment, row)."""
    tokens = np.empty(rows.size, dtype=np.int64)
    for s in np.unique(segs).tolist():
        at = segs == s
        seg_offsets = index.segments[s].offsets
        tokens[at] = seg_offsets[rows[at] + 1] - seg_offsets[rows[at]]
    return tokens


def _read_pages(
    index: Index, segs: np.ndarray, rows: np.ndarray, tokens: np.ndarray, dtype: Any
) -> tuple[np.ndarray, np.ndarray]:
    """The pages (segment, row), sorted by segment, of ``tokens`` vectors each
    (``_page_tokens``), decoded to ``dtype`` in that order into one array (each segment's
    pages written in place, not concatenated), with their offsets."""
    doc_offsets = np.zeros(rows.size + 1, dtype=np.int64)
    np.cumsum(tokens, out=doc_offsets[1:])
    out = np.empty((int(doc_offsets[-1]), index.config.dim), dtype=dtype)
    done = 0
    for s in np.unique(segs).tolist():
        picked = rows[segs == s]
        stop = int(doc_offsets[done + picked.size])
        index.vectors(s, picked, dtype=dtype, into=out[int(doc_offsets[done]) : stop])
        done += picked.size
    return out, doc_offsets


def _int8_pages(
    index: Index, segs: np.ndarray, rows: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The int8 codes and scales of each page (segment, row), as views of the stored (memory-
    mapped) arrays: nothing is read until the int8 pass multiplies them."""
    codes, scales = [], []
    for s, row in zip(segs.tolist(), rows.tolist(), strict=True):
        seg = index.segments[s]
        a, b = int(seg.offsets[row]), int(seg.offsets[row + 1])
        codes.append(seg.vectors[a:b])
        scales.append(seg.scales[a:b])
    return codes, scales


# Bytes of decoded candidate pages per fast-pass call over many segments' pages (one call
# instead of one per segment). Small enough that a chunk's float16 decodings stay in the cache
# and in memory malloc reuses: 1M pq1 pages, one query at C=512, p50 169-170 ms with 8 MB
# chunks against 195-199 ms with 256 MB (a fresh 135 MB array per query) and 179-181 with 4 MB.
_FAST_CHUNK_BYTES = 8 << 20
# Candidate tokens from which a float16 segment is read in place by its own fast-pass call;
# fewer are copied, with those of other segments, into chunks scored in one call each: a
# call's fixed costs (~1 ms, most of it a float16 product of a new shape) dominated one query
# against an index of many small segments (RESULTS 7c cont. 3).
_HALF_IN_PLACE_TOKENS = 1 << 16
# Query tokens up to which int8 pages are always scored on int8 products; a wider batch whose
# queries share most candidates decodes them to float16 once for all its queries (8 x 28
# tokens against 1,024 shared pages at C=512: 63 against 92 ms per query).
_INT8_MAX_QUERY_TOKENS = 64
# Bytes of decoded float32 pages per chunk of the exact pass.
_EXACT_CHUNK_BYTES = 64 << 20


def _fast_scores(
    index: Index, flat: np.ndarray, offsets: np.ndarray, cands: Candidates, with_bounds: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(Q, C) fast-pass scores of the valid candidates and their bounds (``maxsim_half``,
    ``maxsim_int8``).

    Pages are grouped by how the pass reads them. A float16 segment is read in place from its
    memory map, block by block, one segment per call. int8 pages of every segment are
    multiplied where they lie, in one call (exact int8 products, then scaled), unless
    ``_shared_widely``; those and pages of other codecs are decoded to float16 across segments
    in chunks, one call per chunk. All queries are scored against a call's pages at once when
    ``_all_at_once``, else each query against its own. ``with_bounds=False``: scores only (the
    float16 and decoded passes then leave the bounds infinite).
    """
    scores = np.full(cands.segments.shape, np.nan, dtype=np.float32)
    bounds = np.full(cands.segments.shape, np.inf)
    groups: dict[str, list[int]] = {}
    for s in np.unique(cands.segments[cands.valid]).tolist():
        dtype = index.segments[s].dtype
        kind = "decoded"  # as well as int8 codes without an exact int8 product here
        if dtype == "float16" or (dtype == "int8" and int8_in_place(flat.shape[1])):
            kind = dtype
        groups.setdefault(kind, []).append(s)
    float16 = groups.pop("float16", [])
    big = _in_place(index, cands, float16)
    if len(big) < len(float16):
        groups["float16"] = [s for s in float16 if s not in big]
    for s in big:
        stored, set_offsets, page_max = index.half_vectors(s)  # type: ignore[misc]
        _, rows, position = _distinct_pages(cands, cands.valid & (cands.segments == s))
        half = partial(
            maxsim_half,
            doc_vectors=stored,
            doc_offsets=set_offsets,
            page_max=page_max,
            bounds=with_bounds,
        )
        _score_chunk(flat, offsets, position, half, scores, bounds, rows=rows)
    for kind, segments in groups.items():
        mine = cands.valid & np.isin(cands.segments, segments)
        segs, rows, position = _distinct_pages(cands, mine)
        if kind == "int8" and not _shared_widely(position >= 0, segs.size, offsets):
            codes, scales = _int8_pages(index, segs, rows)
            int8 = partial(maxsim_int8, pages=codes, scales=scales)
            _score_chunk(flat, offsets, position, int8, scores, bounds)
            continue
        # A batch whose queries share most pages reads (decodes) them once and multiplies all
        # queries at once; otherwise each query reads its own pages, one product per chunk
        # (chunks of distinct pages across the batch held a few pages per query, one product
        # each, and every new product shape costs float16 ~0.5 ms here).
        if _all_at_once(mine, segs.size, np.diff(offsets)):
            _chunked_pass(
                index, flat, offsets, segs, rows, position, kind, scores, bounds, with_bounds
            )
            continue

        def one_query(q: int, kind: str = kind, mine: np.ndarray = mine) -> None:
            one = Candidates(
                cands.segments[q : q + 1], cands.rows[q : q + 1], cands.scores[q : q + 1]
            )
            segs, rows, position = _distinct_pages(one, mine[q : q + 1])
            query, at = flat[offsets[q] : offsets[q + 1]], slice(q, q + 1)
            one_offsets = np.array([0, len(query)])
            _chunked_pass(
                index,
                query,
                one_offsets,
                segs,
                rows,
                position,
                kind,
                scores[at],
                bounds[at],
                with_bounds,
            )

        _each_query(one_query, np.flatnonzero(mine.any(axis=1)).tolist())
    return scores, bounds


def _each_query(work: Callable[[int], None], queries: list[int]) -> None:
    """``work(q)`` for each query, on one worker thread per core when there are several (each
    running torch on one thread; the pages' copies, products and maxima release the GIL): the
    fast pass of one query over its own short pages is a copy and a few products too small to
    keep two cores busy, so two queries at once use both (Vaswani, batches of 64 queries)."""
    workers = min(len(queries), cpu_threads(1))
    if workers <= 1:
        for q in queries:
            work(q)
        return

    def task(q: int) -> None:
        torch.set_num_threads(1)  # this pool thread's setting only (OpenMP's is per thread)
        work(q)

    # A pool apart from latemm.ranking.scoring's, which a query's own pass may use.
    list(thread_pool(workers, "latemm-query").map(task, queries))  # re-raises a worker's error


def _chunked_pass(
    index: Index,
    flat: np.ndarray,
    offsets: np.ndarray,
    segs: np.ndarray,
    rows: np.ndarray,
    position: np.ndarray,
    kind: str,
    scores: np.ndarray,
    bounds: np.ndarray,
    with_bounds: bool,
) -> None:
    """The fast pass over the pages (``segs``, ``rows``, sorted; ``position``: (Q, C) index of
    each candidate among them) read as float16 into chunks of ``_FAST_CHUNK_BYTES``: stored
    values for ``kind`` float16, else decodings."""
    tokens = _page_tokens(index, segs, rows)
    stored = kind == "float16"
    for start, stop in _chunks(tokens * flat.shape[1] * 2, _FAST_CHUNK_BYTES):
        span = slice(start, stop)
        vectors, doc_offsets = _read_pages(index, segs[span], rows[span], tokens[span], np.float16)
        half = partial(
            maxsim_half,
            doc_vectors=vectors,
            doc_offsets=doc_offsets,
            exact_half=stored,
            page_max=_page_max(index, segs[span], rows[span]) if stored else None,
            bounds=with_bounds,
        )
        at = np.where((position >= start) & (position < stop), position - start, -1)
        _score_chunk(flat, offsets, at, half, scores, bounds)


def _in_place(index: Index, cands: Candidates, half: list[int]) -> list[int]:
    """The float16 segments among ``half`` holding at least ``_HALF_IN_PLACE_TOKENS``
    candidate tokens, or only candidate pages of at least ``LONG_PAGE_TOKENS`` tokens: the
    fast pass reads those in place, one call each, and the others' pages are copied into
    shared chunks (``_chunked_pass``)."""
    segs, rows, _ = _distinct_pages(cands, cands.valid & np.isin(cands.segments, half))
    tokens = _page_tokens(index, segs, rows)
    out = []
    for s in half:
        mine = tokens[segs == s]
        # Long pages are multiplied one by one where they lie (``maxsim_half``): a copy would
        # only add a read and a write of every candidate byte.
        if int(mine.sum()) >= _HALF_IN_PLACE_TOKENS or int(mine.min()) >= LONG_PAGE_TOKENS:
            out.append(s)
    return out


def _page_max(index: Index, segs: np.ndarray, rows: np.ndarray) -> np.ndarray | None:
    """The stored largest magnitude of each float16 page (segment, row), or None when a
    segment predates them (``maxsim_half`` then reads them from the pages)."""
    out = np.empty(rows.size, dtype=np.float16)
    for s in np.unique(segs).tolist():
        page_max = index.segments[s].page_max
        if page_max is None:
            return None
        at = segs == s
        out[at] = page_max[rows[at]]
    return out


def _shared_widely(mine: np.ndarray, n_pages: int, offsets: np.ndarray) -> bool:
    """Whether a batch of more than ``_INT8_MAX_QUERY_TOKENS`` query tokens would score its
    ``n_pages`` distinct pages (``mine``: (Q, C) where a query has one) all at once."""
    lengths = np.diff(offsets)
    several = np.count_nonzero(mine.any(axis=1)) > 1
    return bool(lengths.sum() > _INT8_MAX_QUERY_TOKENS and several) and _all_at_once(
        mine, n_pages, lengths
    )


def _all_at_once(mine: np.ndarray, n_pages: int, lengths: np.ndarray) -> bool:
    """Whether scoring all queries with pages in ``mine`` ((Q, C)) against all ``n_pages`` at
    once is at most twice the work of each query against its own (a wide product runs faster
    per FLOP)."""
    users = mine.any(axis=1)
    return n_pages * int(lengths[users].sum()) <= 2 * int((mine.sum(axis=1) * lengths).sum())


def _chunks(sizes: np.ndarray, limit: int) -> list[tuple[int, int]]:
    """Consecutive [start, stop) runs of ``sizes`` summing to at most ``limit`` (or one item)."""
    out, start, total = [], 0, 0
    for i, size in enumerate(sizes.tolist()):
        if i > start and total + size > limit:
            out.append((start, i))
            start, total = i, 0
        total += size
    if start < sizes.size:
        out.append((start, int(sizes.size)))
    return out


def _score_chunk(
    flat: np.ndarray,
    offsets: np.ndarray,
    position: np.ndarray,
    half: Any,
    scores: np.ndarray,
    bounds: np.ndarray,
    rows: np.ndarray | None = None,
) -> None:
    """Fills ``scores``/``bounds`` where ``position`` (Q, C) points into the call's pages:
    ``rows`` of ``half``'s documents (all of them, in order, by default)."""
    lengths = np.diff(offsets)
    mine = position >= 0  # (Q, C)
    users = np.flatnonzero(mine.any(axis=1))
    if users.size == 0:
        return
    if _all_at_once(mine, int(position.max()) + 1, lengths):
        q_flat, q_offsets = take_sets(flat, offsets, users)
        f, b = half(q_flat, q_offsets, rows=rows)
        slot = np.full(len(lengths), -1)
        slot[users] = np.arange(users.size)
        at = np.nonzero(mine)
        scores[at], bounds[at] = f[slot[at[0]], position[at]], b[slot[at[0]], position[at]]
        return
    for q in users:
        cols = np.flatnonzero(mine[q])
        query = flat[offsets[q] : offsets[q + 1]]
        picked = position[q, cols] if rows is None else rows[position[q, cols]]
        f, b = half(query, np.array([0, len(query)]), rows=picked)
        scores[q, cols], bounds[q, cols] = f[0], b[0]


def doc_ids_of(index: Index, cands: Candidates) -> np.ndarray:
    """(Q, C) object array of the candidates' doc ids, None where invalid."""
    out = np.full(cands.segments.shape, None, dtype=object)
    for s in np.unique(cands.segments[cands.valid]):
        in_seg = cands.segments == s
        out[in_seg] = index.segments[int(s)].doc_ids[cands.rows[in_seg]]
    return out


def top_k(doc_ids: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) column positions of each row's best ``keys``, ties by doc_id; -1 pads rows with
    fewer valid entries (doc_id None or key NaN)."""
    out = np.full((doc_ids.shape[0], k), -1, dtype=np.int64)
    for q in range(doc_ids.shape[0]):
        cols = np.flatnonzero((doc_ids[q] != None) & ~np.isnan(keys[q]))  # noqa: E711
        # Best score first; ties by doc_id so results do not depend on storage order.
        order = cols[np.lexsort((doc_ids[q, cols].astype(str), -keys[q, cols]))][:k]
        out[q, : order.size] = order
    return out


def gather(values: np.ndarray, picks: np.ndarray, fill: Any = np.nan) -> np.ndarray:
    """``values[q, picks[q, j]]`` row by row, ``fill`` where ``picks`` is -1."""
    if values.shape[1] == 0:  # no candidate at all (a ``where`` that matches no page)
        return np.full(picks.shape, fill, dtype=values.dtype)
    taken = np.take_along_axis(values, np.maximum(picks, 0), axis=1)
    return np.where(picks >= 0, taken, fill)


def read_pages(
    index: Index, doc_ids: Sequence[str], allow_files: Sequence[Any] = ()
) -> dict[str, Any]:
    """``Page`` (text and image) of each doc_id, reading only those two columns, once per
    segment that holds any of them. An image the index names by path is read only under
    ``allow_files`` (``latemm.data.io.read_image_file``; by default none): an error names the
    doc_id, the path and the fix."""
    from latemm.data.io import image_bytes, source_page_image
    from latemm.encoders.base import Page

    locations = index.locations()
    by_segment: dict[int, list[str]] = {}
    for doc_id in dict.fromkeys(doc_ids):
        if doc_id in locations:
            by_segment.setdefault(locations[doc_id][0], []).append(doc_id)
    pages = {}
    for s, ids in by_segment.items():
        seg = index.segments[s]
        names = [c for c in ("text", "image", "source", "page") if c in seg.schema.names]
        table = seg.metadata(names) if names else None
        for doc_id in ids:
            row = locations[doc_id][1]
            cell = {n: table.column(n)[row].as_py() for n in names}  # type: ignore[union-attr]
            try:
                image = image_bytes(cell.get("image"), allow_files)
                if image is None:  # a text-only index: the page of its source PDF, if allowed
                    image = source_page_image(cell.get("source"), cell.get("page"), allow_files)
                pages[doc_id] = Page(text=cell.get("text"), image=image)
            except InputError as exc:
                raise InputError(f"{index.path}, doc_id {doc_id!r}: {exc}") from exc
    return pages


def rerank_result(
    result: SearchResult,
    queries: Sequence[Any],
    pages: dict[str, Any],
    reranker: Any,
    *,
    depth: int,
    fusion: str = "none",
) -> SearchResult:
    """Reorder each query's top ``depth`` with ``reranker`` (pages by doc_id from ``pages``).

    The reranked documents come first, by rerank score with ties broken by the stage before
    (or by reciprocal rank fusion with it, ``fusion="rrf"``); the rest keep their order. The
    final ``score`` of a reranked document is its rerank score (or fused score)."""
    from latemm.retrieval.reranker import rerank_order

    doc_ids, scores = result.doc_ids.copy(), result.scores.copy()
    carried = [result.fde_scores.copy(), result.maxsim_scores.copy()]
    carried += [v.copy() for v in (result.field_scores or {}).values()]
    rerank_scores = np.full(doc_ids.shape, np.nan, dtype=np.float32)
    for q, query in enumerate(queries):
        n = int(sum(d is not None for d in doc_ids[q, :depth]))
        if n == 0:
            continue
        got = reranker.score(
            query, [pages[d] for d in doc_ids[q, :n]], doc_keys=list(doc_ids[q, :n])
        )
        before = np.where(np.isnan(carried[1][q, :n]), scores[q, :n], carried[1][q, :n])
        order = rerank_order(got, np.nan_to_num(before, nan=-np.inf), fusion=fusion)
        final = got
        if fusion == "rrf":
            final = np.zeros(n, dtype=np.float32)
            final[order] = 1.0 / (60.0 + np.arange(1, n + 1))
        for array in (doc_ids, *carried):
            array[q, :n] = array[q, :n][order]
        rerank_scores[q, :n] = got[order]
        scores[q, :n] = final[order]
    names = list(result.field_scores or {})
    fields = dict(zip(names, carried[2:], strict=True)) if names else result.field_scores
    return SearchResult(
        result.query_ids, doc_ids, scores, carried[0], carried[1], rerank_scores, fields
    )


class Retriever:
    """FDE + faiss candidates, exact MaxSim rescoring, over an opened index.

    Parameters
    ----------
    index
        An ``Index`` or the path of one.
    encoder
        Encodes text or image queries (``search``); not needed for ``search_embeddings``. Must
        match the encoder recorded in the index.
    device
        torch device for FDE and MaxSim (``"cuda"`` for a GPU).
    nprobe, ef_search
        faiss search parameters for IVF and HNSW indexes.
    refine_depth
        For an index with a refine copy: candidates per query rescored from the copy. For
        residual codes: candidates per query decoded and scored exactly, the best by centroid
        interaction. Default: what the index records (``IndexConfig.default_depth``; for
        residual codes written before it did, every candidate).
    first_stage
        ``"fde"`` (FDE + faiss) or, for residual codes, ``"centroids"`` (PLAID's candidate
        generation: ``centroid_first_stage``). Default: the index's ``IndexConfig.first_stage``.
    """

    def __init__(
        self,
        index: Index | str | Path,
        *,
        encoder: Any = None,
        device: str | None = None,
        nprobe: int = 32,
        ef_search: int = 256,
        reranker: Any = None,
        rerank_depth: int = 20,
        rerank_fusion: str = "none",
        refine_depth: int | None = None,
        first_stage: str | None = None,
    ) -> None:
        self.index = index if isinstance(index, Index) else Index.open(index)
        config = self.index.config
        self.first_stage = check_first_stage(
            first_stage or config.first_stage, [config], self.index.path
        )
        if refine_depth is not None and refine_depth < 1:
            raise InputError(f"refine_depth must be >= 1, got {refine_depth}")
        if refine_depth is not None and not self.index.config.takes_refine_depth:
            raise InputError(
                f"refine_depth: the index {self.index.path} has no refine copy (it was built "
                "without --refine) and no residual codes; leave the depth out"
            )
        self.refine_depth = refine_depth if refine_depth is not None else config.default_depth
        self.encoder = encoder
        self.device = device
        self.nprobe = nprobe
        self.ef_search = ef_search
        self.reranker = reranker
        self.rerank_depth = rerank_depth
        self.rerank_fusion = rerank_fusion
        if encoder is not None:
            from latemm.encoders.base import check_recorded

            check_recorded(self.index.config.encoder, encoder.info, self.index.path)

    # ------------------------------------------------------------------------------ API
    def search(
        self,
        queries: Sequence[Any],
        *,
        k: int = 10,
        candidates: int | None = None,
        where: Where = None,
        query_ids: Sequence[str] | None = None,
    ) -> SearchResult:
        """Encode queries (text or ``Page``) with the encoder, then ``search_embeddings``."""
        if self.encoder is None:
            raise InputError(
                "this Retriever has no encoder; pass encoder= (or load the index's encoder with "
                "latemm.load_encoder) or call search_embeddings with precomputed vectors"
            )
        encoded = self.encoder.encode_queries(list(queries))
        result = self.search_embeddings(
            encoded.vectors,
            encoded.offsets,
            k=max(k, self.rerank_depth if self.reranker is not None else k),
            candidates=candidates,
            where=where,
            query_ids=query_ids,
        )
        if self.reranker is not None:
            result = self.rerank(result, list(queries))
        return truncate(result, k)

    def rerank(self, result: SearchResult, queries: Sequence[Any]) -> SearchResult:
        """Reorder each query's top ``rerank_depth`` with the reranker (``rerank_result``);
        ties are broken by MaxSim, or fused with it by ``rerank_fusion="rrf"``."""
        if self.reranker is None:
            raise InputError("this Retriever has no reranker")
        top = result.doc_ids[:, : self.rerank_depth]
        pages = read_pages(
            self.index,
            [d for d in top.ravel() if d is not None],
            getattr(self.reranker, "allow_files", ()),
        )
        return rerank_result(
            result,
            queries,
            pages,
            self.reranker,
            depth=self.rerank_depth,
            fusion=self.rerank_fusion,
        )

    def search_embeddings(
        self,
        query_vectors: Any,
        query_offsets: Any = None,
        *,
        k: int = 10,
        candidates: int | None = None,
        where: Where = None,
        query_ids: Sequence[str] | None = None,
        rescore: bool = True,
    ) -> SearchResult:
        """Search with precomputed query multi-vectors.

        Parameters
        ----------
        query_vectors, query_offsets
            A sequence of (T_q, d) float arrays, or a flat (N, d) array with (Q + 1,) offsets.
        k
            Results per query.
        candidates
            First-stage candidates rescored with exact MaxSim (default 512, at least k).
        where
            SQL condition over the metadata (DuckDB), applied before the first stage; or one
            per query (None: no condition for that query).
        rescore
            False returns the FDE ranking alone.
        """
        flat, offsets = as_query_arrays(self.index, query_vectors, query_offsets)
        ids = query_ids_for(query_ids, offsets.size - 1)
        # No more results than live documents: the result arrays are (Q, k).
        k = min(k, max(1, len(self.index)))
        n_cand = first_candidates(k, candidates, self.first_stage, self.refine_depth)
        scopes = scopes_of(where, len(ids))
        if scopes is not None:
            return by_scope(
                scopes,
                ids,
                lambda condition, rows: self.search_embeddings(
                    *take_queries(flat, offsets, rows),
                    k=k,
                    candidates=candidates,
                    where=condition,
                    query_ids=[ids[i] for i in rows],
                    rescore=rescore,
                ),
            )
        assert where is None or isinstance(where, str)  # per-query conditions: by_scope above
        cands = self.candidates(flat, offsets, n_cand, self._allowed(where))
        exact = self._rescore(flat, offsets, cands, k) if rescore else None
        return self._assemble(ids, cands, exact, k)

    # -------------------------------------------------------------------------- stages
    def candidates(
        self, flat: np.ndarray, offsets: np.ndarray, n_cand: int, allowed: list[np.ndarray | None]
    ) -> Candidates:
        """The first stage for flat query vectors with (Q + 1,) offsets."""
        matrix = first_stage_queries(
            self.index,
            flat,
            offsets,
            device=self.device,
            centroids=self.first_stage == "centroids",
        )
        return first_stage(
            self.index, matrix, n_cand, allowed, nprobe=self.nprobe, ef_search=self.ef_search
        )

    def _rescore(
        self, flat: np.ndarray, offsets: np.ndarray, cands: Candidates, k: int | None = None
    ) -> np.ndarray:
        return rescore(
            self.index,
            flat,
            offsets,
            cands,
            device=self.device,
            k=k,
            refine_depth=self.refine_depth,
        )

    def _assemble(
        self, ids: list[str], cands: Candidates, exact: np.ndarray | None, k: int
    ) -> SearchResult:
        """The SearchResult of the top k by MaxSim (or by first-stage score without it)."""
        doc_ids = doc_ids_of(self.index, cands)
        fde = np.where(cands.valid, cands.scores, np.nan).astype(np.float32)
        if exact is None:
            exact = np.full(fde.shape, np.nan, dtype=np.float32)
            key = fde
        else:
            key = exact
        picks = top_k(doc_ids, key, k)
        return SearchResult(
            ids,
            gather(doc_ids, picks, fill=None),
            gather(key, picks).astype(np.float32),
            gather(fde, picks).astype(np.float32),
            gather(exact, picks).astype(np.float32),
        )

    def _allowed(self, where: str | None) -> list[np.ndarray | None]:
        """Per segment: a bool mask of searchable rows (live and matching ``where``), or None
        when every row is searchable."""
        masks: list[np.ndarray | None] = []
        for seg in self.index.segments:
            masks.append(None if not seg.deleted.any() else seg.live.copy())
        if where is None:
            return masks
        from latemm.ranking.filters import filter_masks

        return list(filter_masks(self.index, where))
