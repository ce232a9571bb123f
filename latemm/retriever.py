"""Search: FDE first stage over faiss, then exact MaxSim rescoring of the candidates.

Imports ``fde``, ``index_store`` and ``latemm.scoring``; encoders only when given one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fde import FDEInputError, as_flat, encode_queries
from index_store import Index
from index_store.errors import InputError
from latemm.scoring import maxsim_pairs

# Candidates rescored exactly by default: recall@10 >= 0.98 against exhaustive MaxSim on
# MiniLM-embedded Vaswani and ColPali-shaped pages (experiments/bench_search.py).
DEFAULT_CANDIDATES = 512


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
        return pa.table(
            {
                "query_id": pa.array(rows["query_id"], pa.string()),
                "doc_id": pa.array(rows["doc_id"], pa.string()),
                "rank": pa.array(rows["rank"], pa.int32()),
                "score": pa.array(rows["score"], pa.float32()),
                "fde_score": pa.array(rows["fde_score"], pa.float32()),
                "maxsim_score": pa.array(rows["maxsim_score"], pa.float32()),
                "rerank_score": pa.array(rows["rerank_score"], pa.float32()),
            }
        )


def truncate(result: SearchResult, k: int) -> SearchResult:
    return SearchResult(
        result.query_ids,
        result.doc_ids[:, :k],
        result.scores[:, :k],
        result.fde_scores[:, :k],
        result.maxsim_scores[:, :k],
        None if result.rerank_scores is None else result.rerank_scores[:, :k],
    )


def _nullable(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


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
    ) -> None:
        self.index = index if isinstance(index, Index) else Index.open(index)
        self.encoder = encoder
        self.device = device
        self.nprobe = nprobe
        self.ef_search = ef_search
        self.reranker = reranker
        self.rerank_depth = rerank_depth
        self.rerank_fusion = rerank_fusion
        recorded = self.index.config.encoder
        if encoder is not None and recorded is not None:
            from latemm.encoders.base import is_compatible

            reason = is_compatible(recorded, encoder.info)
            if reason is not None:
                raise InputError(
                    f"the index {self.index.path} was built with encoder {recorded['name_or_path']!r} "
                    f"(dim {recorded['dim']}); queries would be encoded with "
                    f"{encoder.info.name_or_path!r} (dim {encoder.info.dim}), which differs: "
                    f"{reason}. Use the index's encoder (leave out --encoder)"
                )

    # ------------------------------------------------------------------------------ API
    def search(
        self,
        queries: Sequence[Any],
        *,
        k: int = 10,
        candidates: int | None = None,
        where: str | None = None,
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
        """Reorder each query's top ``rerank_depth`` with the reranker.

        The reranked documents come first, by rerank score with ties broken by MaxSim (or by
        reciprocal rank fusion with ``rerank_fusion="rrf"``); the rest keep their order. The
        final ``score`` of a reranked document is its rerank score (or fused score).
        """
        from latemm.encoders.base import Page
        from latemm.io import image_bytes
        from latemm.reranker import rerank_order

        if self.reranker is None:
            raise InputError("this Retriever has no reranker")
        doc_ids = result.doc_ids.copy()
        scores, fde, exact = (
            result.scores.copy(),
            result.fde_scores.copy(),
            result.maxsim_scores.copy(),
        )
        rerank_scores = np.full(doc_ids.shape, np.nan, dtype=np.float32)
        for q, query in enumerate(queries):
            depth = int(sum(d is not None for d in doc_ids[q, : self.rerank_depth]))
            if depth == 0:
                continue
            pages = []
            for doc_id in doc_ids[q, :depth]:
                meta = self.index.get(doc_id).metadata
                pages.append(Page(text=meta.get("text"), image=image_bytes(meta.get("image"))))
            got = self.reranker.score(query, pages, doc_keys=list(doc_ids[q, :depth]))
            ms = np.nan_to_num(exact[q, :depth], nan=-np.inf)
            order = rerank_order(
                got,
                np.where(np.isnan(exact[q, :depth]), fde[q, :depth], ms),
                fusion=self.rerank_fusion,
            )
            if self.rerank_fusion == "rrf":
                final = np.zeros(depth, dtype=np.float32)
                final[order] = 1.0 / (60.0 + np.arange(1, depth + 1))
            else:
                final = got
            for array in (doc_ids, fde, exact):
                array[q, :depth] = array[q, :depth][order]
            rerank_scores[q, :depth] = got[order]
            scores[q, :depth] = final[order]
        return SearchResult(result.query_ids, doc_ids, scores, fde, exact, rerank_scores)

    def search_embeddings(
        self,
        query_vectors: Any,
        query_offsets: Any = None,
        *,
        k: int = 10,
        candidates: int | None = None,
        where: str | None = None,
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
            SQL condition over the metadata (DuckDB), applied before the first stage.
        rescore
            False returns the FDE ranking alone.
        """
        dim = self.index.config.dim
        try:
            flat, offsets = as_flat(query_vectors, dim, offsets=query_offsets, kind="query")
        except FDEInputError as exc:
            raise InputError(f"{exc} (the index stores {dim}-dimensional vectors)") from exc
        n_queries = offsets.size - 1
        ids = [str(i) for i in (query_ids if query_ids is not None else range(n_queries))]
        if len(ids) != n_queries:
            raise InputError(f"{len(ids)} query_ids for {n_queries} queries")
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}")
        if candidates is not None and candidates < 1:
            raise InputError(f"candidates must be >= 1, got {candidates}")
        # No more results than live documents: the result arrays are (Q, k).
        k = min(k, max(1, len(self.index)))
        n_cand = max(k, candidates if candidates is not None else DEFAULT_CANDIDATES)
        allowed = self._allowed(where)
        query_fde = encode_queries(
            flat, self.index.config.fde_config, offsets=offsets, device=self.device
        )
        seg_of, row_of, fde_scores = self._first_stage(query_fde, n_cand, allowed)
        out_ids = np.full((n_queries, k), None, dtype=object)
        out_final = np.full((n_queries, k), np.nan, dtype=np.float32)
        out_fde = np.full((n_queries, k), np.nan, dtype=np.float32)
        out_maxsim = np.full((n_queries, k), np.nan, dtype=np.float32)
        for q in range(n_queries):
            valid = seg_of[q] >= 0
            segs, rows, fdes = seg_of[q][valid], row_of[q][valid], fde_scores[q][valid]
            if segs.size == 0:
                continue
            doc_ids = np.array(
                [self.index.segments[s].doc_ids[r] for s, r in zip(segs, rows, strict=True)],
                dtype=object,
            )
            if rescore:
                exact = self._maxsim(flat[offsets[q] : offsets[q + 1]], segs, rows)
                key = exact
            else:
                exact = np.full(segs.size, np.nan, dtype=np.float32)
                key = fdes
            # Best score first; ties by doc_id so results do not depend on storage order.
            order = np.lexsort((doc_ids.astype(str), -key))[:k]
            n = order.size
            out_ids[q, :n] = doc_ids[order]
            out_final[q, :n] = key[order]
            out_fde[q, :n] = fdes[order]
            out_maxsim[q, :n] = exact[order]
        return SearchResult(ids, out_ids, out_final, out_fde, out_maxsim)

    # -------------------------------------------------------------------------- stages
    def _allowed(self, where: str | None) -> list[np.ndarray | None]:
        """Per segment: a bool mask of searchable rows (live and matching ``where``), or None
        when every row is searchable."""
        masks: list[np.ndarray | None] = []
        for seg in self.index.segments:
            masks.append(None if not seg.deleted.any() else seg.live.copy())
        if where is None:
            return masks
        from latemm.filters import filter_masks

        return list(filter_masks(self.index, where))

    def _first_stage(
        self, query_fde: np.ndarray, n_cand: int, allowed: list[np.ndarray | None]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top ``n_cand`` (segment, row, FDE score) per query over all segments."""
        import faiss

        n_queries = query_fde.shape[0]
        all_seg, all_row, all_score = [], [], []
        for s, seg in enumerate(self.index.segments):
            mask = allowed[s]
            if mask is not None and not mask.any():
                continue
            index = seg.faiss_index()
            params = self._search_params(index, mask, faiss)
            kk = min(n_cand, seg.num_docs)
            scores, rows = index.search(query_fde, kk, params=params)
            all_seg.append(np.where(rows >= 0, s, -1))
            all_row.append(rows)
            all_score.append(np.where(rows >= 0, scores, -np.inf))
        if not all_seg:
            empty = np.full((n_queries, 0), -1, dtype=np.int64)
            return empty, empty, np.zeros((n_queries, 0), np.float32)
        seg_of = np.concatenate(all_seg, axis=1)
        row_of = np.concatenate(all_row, axis=1)
        score = np.concatenate(all_score, axis=1)
        if score.shape[1] > n_cand:
            top = np.argsort(-score, axis=1, kind="stable")[:, :n_cand]
            seg_of = np.take_along_axis(seg_of, top, 1)
            row_of = np.take_along_axis(row_of, top, 1)
            score = np.take_along_axis(score, top, 1)
        return seg_of, row_of, score.astype(np.float32)

    def _search_params(self, index: Any, mask: np.ndarray | None, faiss: Any) -> Any:
        concrete = faiss.downcast_index(index)
        if isinstance(concrete, faiss.IndexHNSW):
            params = faiss.SearchParametersHNSW()
            params.efSearch = self.ef_search
        elif isinstance(concrete, faiss.IndexIVF):
            params = faiss.SearchParametersIVF()
            params.nprobe = self.nprobe
        else:
            params = faiss.SearchParameters()
        if mask is not None:
            bitmap = np.packbits(mask, bitorder="little")
            selector = faiss.IDSelectorBitmap(mask.size, faiss.swig_ptr(bitmap))
            selector.bitmap_ref = bitmap  # keep the buffer alive while faiss holds a pointer
            params.sel = selector
            params.selector_ref = selector
        return params

    def _maxsim(self, query: np.ndarray, segs: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Exact MaxSim of one query against candidate (segment, row) pairs, in their order."""
        scores = np.empty(segs.size, dtype=np.float32)
        for s in np.unique(segs):
            picked = np.flatnonzero(segs == s)
            vectors, offsets = self.index.vectors(int(s), rows[picked])
            scores[picked] = maxsim_pairs(query, vectors, offsets, device=self.device)
        return scores
