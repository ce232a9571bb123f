"""Searching a multi-field index: phased ranking over named fields.

1. First phase, per field: FDE + faiss (multi-vector), faiss inner product (single-vector) or
   bm25s (bm25) give each query's top ``C``; the lists are fused (auto, RRF or weighted) and the
   fused top ``C`` are the candidates.
2. Second phase, per field, over those candidates: exact MaxSim for the rescoring fields
   (every multi-vector field by default) and for single-vector fields (their inner product
   *is* MaxSim), BM25 scores for bm25 fields, first-phase scores for multi-vector fields left
   out of rescoring. These are fused the same way into the final ranking.
3. The MLLM reranker, if given, reorders the top ``rerank_depth``.

The run keeps every field's second-phase score (``score_<field>``). Kernels live in
``latemm.retrieval.retriever`` (stages) and ``latemm.ranking.fusion``; this module wires them per
field.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from index_store.errors import IndexCorruptError, IndexLockedError, InputError
from latemm.index.collection import open_collection
from latemm.index.field_shards import FieldShards, hidden_ids, read_field_shards, shard_layout
from latemm.index.fields import (
    LEGACY_FIELD,
    PRESETS,
    FieldsManifest,
    FieldSpec,
    encoder_from_spec,
    field_dir,
    one_field,
    open_field,
    read_fields,
    read_journal,
)
from latemm.ranking import fusion as fusion_lib
from latemm.ranking.filters import matching_rows
from latemm.retrieval.field_parts import phases, resolve
from latemm.retrieval.retriever import (
    Candidates,
    SearchResult,
    Where,
    as_query_arrays,
    by_scope,
    check_first_stage,
    first_candidates,
    first_stage_queries,
    gather,
    query_ids_for,
    rerank_result,
    scopes_of,
    take_queries,
    top_k,
    truncate,
)

# How long a reader keeps re-opening the fields while writers change them under it (a delete
# changes every shard in turn; a batch of deletes, one after another), waiting twice as long
# after each try from OPEN_FIRST_WAIT_S to at most OPEN_MAX_WAIT_S, before it gives up.
OPEN_PATIENCE_S = 30.0
OPEN_FIRST_WAIT_S = 0.01
OPEN_MAX_WAIT_S = 0.5

# RRF fusion uses bounded scores (``FieldRetriever._second_phases``) while k is at most this
# fraction's inverse of the candidates.
_RRF_BOUNDED_SHARE = 8


@dataclass(frozen=True)
class SearchPlan:
    """Which fields seed the candidates (``fields``), which are rescored with exact MaxSim
    (``rescore``; they may be outside ``fields``, then they only count in the second phase),
    how the phases fuse, and each scored field's weight (``weights``, aligned with
    ``scored``)."""

    fields: tuple[str, ...]
    fusion: str
    weights: tuple[float, ...]
    rescore: tuple[str, ...]
    normalization: str = "minmax"
    rrf_k: int = fusion_lib.RRF_K

    @property
    def scored(self) -> tuple[str, ...]:
        """The fields of the second phase: the searched ones, then rescore-only ones."""
        return self.fields + tuple(n for n in self.rescore if n not in self.fields)

    def first_weights(self) -> list[float]:
        """The searched fields' weights; equal ones if all are 0 (so a field can seed the
        candidates without counting in the final score)."""
        weights = list(self.weights[: len(self.fields)])
        return weights if sum(weights) > 0 else [1.0] * len(weights)


def _preset_fields(manifest: FieldsManifest, preset: str) -> list[str]:
    if preset not in PRESETS:
        raise InputError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    names = [f.name for f in manifest.fields if f.reads in PRESETS[preset]]
    if not names:
        reads = ", ".join(f"{f.name} reads {f.reads}" for f in manifest.fields)
        raise InputError(
            f"preset {preset!r} searches fields that read {' or '.join(PRESETS[preset])}; "
            f"this index has none ({reads}). Add one with `latemm index --field`"
        )
    return names


def plan(
    manifest: FieldsManifest,
    *,
    fields: Sequence[str] | None = None,
    fusion: str | None = None,
    weights: dict[str, float] | None = None,
    rescore_fields: Sequence[str] | None = None,
    preset: str | None = None,
    normalization: str | None = None,
    rrf_k: int | None = None,
) -> SearchPlan:
    """Validate a search request against the index's fields (every error names the field).

    A request that names none of ``fields``, ``preset``, ``fusion``, ``weights``,
    ``normalization`` and ``rrf_k`` gets the index's recorded search defaults (``latemm tune
    --save``) if it has them, else every field under ``auto``; naming any of them sets the
    whole fusion from the request and the built-in defaults."""
    saved = manifest.search_defaults
    request = (fields, fusion, weights, preset, normalization, rrf_k)
    if saved is not None and all(v is None for v in request):
        fields, fusion, rrf_k, normalization = (
            saved.fields,
            saved.fusion,
            saved.rrf_k,
            saved.normalization,
        )
        weights = None if saved.weights is None else dict(saved.weights)
    fusion = fusion if fusion is not None else "auto"
    normalization = normalization if normalization is not None else "minmax"
    if fusion not in fusion_lib.FUSIONS:
        raise InputError(f"--fusion must be one of {', '.join(fusion_lib.FUSIONS)}, got {fusion!r}")
    if normalization not in fusion_lib.NORMALIZATIONS:
        raise InputError(
            f"--normalization must be one of {', '.join(fusion_lib.NORMALIZATIONS)}, got "
            f"{normalization!r}"
        )
    if rrf_k is None:
        rrf_k = fusion_lib.AUTO_RRF_K if fusion == "auto" else fusion_lib.RRF_K
    if isinstance(rrf_k, bool) or not isinstance(rrf_k, int) or rrf_k < 1:
        raise InputError(f"--rrf-k must be a positive integer, got {rrf_k!r}")
    if rrf_k > fusion_lib.RRF_K_MAX:
        raise InputError(
            f"--rrf-k {rrf_k} is too large: at most {fusion_lib.RRF_K_MAX} (60 is usual; a "
            "larger k flattens the rank differences towards equal scores)"
        )
    if preset is not None and fields is not None:
        raise InputError("give --preset or --fields, not both")
    names = _preset_fields(manifest, preset) if preset is not None else None
    names = list(fields) if fields is not None else names or manifest.names
    if not names:
        raise InputError("--fields names no field")
    if len(set(names)) != len(names):
        raise InputError(f"--fields {','.join(names)} names a field twice")
    specs = [manifest.get(name) for name in names]  # unknown names raise, listing the fields
    rescore = (
        [s.name for s in specs if s.kind == "multi"]
        if rescore_fields is None
        else list(rescore_fields)
    )
    for name in rescore:
        if manifest.get(name).kind == "bm25":
            raise InputError(
                f"--rescore-field {name!r} is a bm25 field; MaxSim rescoring needs a vector field"
            )
    scored = names + [n for n in rescore if n not in names]
    if len(scored) == 1 and fusion == "auto":  # one field: its scores are the ranking
        fusion = fusion_lib.IDENTITY
    return SearchPlan(
        tuple(names),
        fusion,
        tuple(fusion_lib.check_weights(weights, scored)),
        tuple(rescore),
        normalization,
        rrf_k,
    )


@dataclass(frozen=True)
class Hits:
    """One field's first phase: (Q, C) doc ids (None pads) and scores (NaN pads)."""

    doc_ids: np.ndarray
    scores: np.ndarray
    full: np.ndarray | None = None  # bm25: (Q, n_docs) scores of every document


def union(hit_lists: Sequence[np.ndarray]) -> np.ndarray:
    """(Q, U) object: each query's distinct doc ids over several (Q, C_f) lists, None pads."""
    rows = []
    for q in range(hit_lists[0].shape[0]):
        seen = dict.fromkeys(d for ids in hit_lists for d in ids[q] if d is not None)
        rows.append(list(seen))
    width = max(1, max((len(r) for r in rows), default=0))  # one padding column if none
    out = np.full((len(rows), width), None, dtype=object)
    for q, row in enumerate(rows):
        out[q, : len(row)] = row
    return out


def align(pool: np.ndarray, doc_ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` (Q, C) of ``doc_ids`` placed at their columns of ``pool`` (Q, U); NaN where
    a pooled document is not among them."""
    out = np.full(pool.shape, np.nan, dtype=np.float64)
    for q in range(pool.shape[0]):
        where = {d: c for c, d in enumerate(doc_ids[q]) if d is not None}
        for u, d in enumerate(pool[q]):
            if d in where:
                out[q, u] = values[q, where[d]]
    return out


def bm25_hits(full: np.ndarray, doc_ids: np.ndarray, allowed: np.ndarray | None, n: int) -> Hits:
    """Top ``n`` of (Q, n_docs) BM25 scores, ties by doc_id, skipping disallowed documents and
    those that match no query term (score 0: BM25 retrieves nothing it did not match)."""
    scores = np.where(allowed, full, np.nan) if allowed is not None else full.astype(np.float64)
    scores = np.where(scores > 0, scores, np.nan)
    ids = np.broadcast_to(doc_ids, full.shape)
    picks = top_k(ids, scores, min(n, doc_ids.size))
    return Hits(gather(ids, picks, fill=None), gather(scores, picks), full)


def merge_hits(hits: Sequence[Hits], n: int, n_queries: int) -> Hits:
    """The top ``n`` of several parts' first phases of one field (the shards of a collection):
    best score first, ties by doc_id, as everywhere; one part is returned as it is."""
    if len(hits) == 1:
        return hits[0]
    if not hits:
        empty = np.full((n_queries, 0), None, dtype=object)
        return Hits(empty, np.zeros((n_queries, 0), np.float64))
    ids = np.concatenate([h.doc_ids for h in hits], axis=1)
    scores = np.concatenate([h.scores for h in hits], axis=1)
    picks = top_k(ids, scores, min(n, ids.shape[1]))
    return Hits(gather(ids, picks, fill=None), gather(scores, picks))


class FieldRetriever:
    """Search a multi-field index (or an old single-field one, as field ``default``).

    Parameters
    ----------
    index_dir
        The index folder.
    fields, fusion, weights, rescore_fields, preset, normalization, rrf_k
        See ``plan``: default all fields, ``auto`` fusion (reciprocal rank fusion with k = 10,
        each field weighted per query by its agreement with the others, ``fusion.
        agreement_weights``; RESULTS 4b), every multi-vector field rescored with exact MaxSim.
        ``fusion="rrf"`` is plain RRF (k = 60); ``fusion="weighted"`` a convex combination of
        min-max normalised scores (Bruch et al. 2023). An index tuned with ``latemm tune
        --save`` searches with its recorded settings when none of these is given.
    encoders
        name -> Encoder, overriding the recorded ones (and needed for none: precomputed fields
        take ``query_vectors``).
    actors
        None opens every part here. Otherwise ``actors(index_dir)`` returns what serves the
        vector fields' parts elsewhere, e.g. ``latemm.runs.distributed.ShardActors`` (one Ray
        actor per shard; what ``latemm search --ray`` and ``latemm.search(..., ray=)`` pass):
        the same phases run there, merged, fused and reranked here. ``close()`` releases them.
    refine_depth, first_stage
        As for ``Retriever``: ``first_stage="centroids"`` finds every vector field's
        candidates by PLAID's candidate generation (residual codes only). Left out, each
        field takes what its index records (``IndexConfig.first_stage`` / ``default_depth``).
    """

    def __init__(
        self,
        index_dir: str | Path,
        *,
        fields: Sequence[str] | None = None,
        fusion: str | None = None,
        weights: dict[str, float] | None = None,
        rescore_fields: Sequence[str] | None = None,
        preset: str | None = None,
        normalization: str | None = None,
        rrf_k: int | None = None,
        encoders: dict[str, Any] | None = None,
        device: str | None = None,
        nprobe: int = 32,
        ef_search: int = 256,
        reranker: Any = None,
        rerank_depth: int = 20,
        rerank_fusion: str = "none",
        actors: Callable[[Path], Any] | None = None,
        refine_depth: int | None = None,
        first_stage: str | None = None,
    ) -> None:
        self.path = Path(index_dir)
        # What serves the vector fields' parts elsewhere (``latemm.runs.distributed.
        # ShardActors`` on Ray): ``open(folder, spec, legacy=)`` returns a part whose
        # phases (``latemm.retrieval.field_parts.PartPhases``) run there. Injected: never Ray here.
        self._actors = None if actors is None else actors(self.path)
        # shards.json: shards of named fields, or of one encoder's field
        self._collection = open_collection(self.path)
        self.sharded = self._collection.sharded
        deadline, wait, tries = time.monotonic() + OPEN_PATIENCE_S, OPEN_FIRST_WAIT_S, 0
        while True:  # every field from one state of the index
            tries += 1
            # A reader never writes: an unfinished delete (its journal) is not finished here
            # but honoured, its ids left out of every field; the next writer finishes it.
            pending, self.manifest, layout = self._state()
            self.plan = plan(
                self.manifest,
                fields=fields,
                fusion=fusion,
                weights=weights,
                rescore_fields=rescore_fields,
                preset=preset,
                normalization=normalization,
                rrf_k=rrf_k,
            )
            self.specs = {n: self.manifest.get(n) for n in self.plan.scored}
            # Each field is a list of parts: one per shard that holds it (one part unsharded).
            self.parts = {n: self._open_parts(layout, n, s) for n, s in self.specs.items()}
            self._layout = layout
            if self._unchanged(pending, layout):
                break
            if time.monotonic() + wait > deadline:
                raise IndexLockedError(
                    f"{self.path} changed {tries} times in {OPEN_PATIENCE_S:.0f} s while it was "
                    "being opened (writes under way); search it again when they finish"
                )
            time.sleep(wait)  # let the writer finish the change it is making
            wait = min(2 * wait, OPEN_MAX_WAIT_S)
        self.hidden = frozenset(pending or ())
        self._built = self._builds()
        for name, parts in self.parts.items():
            if self.specs[name].kind == "bm25":  # one field over the collection: its statistics
                from latemm.index.bm25 import BM25Index

                self.parts[name] = [BM25Index.merged(parts, self.hidden)]
        # The most documents a searched field holds over its parts: an upper bound on what a
        # search returns (``capped``).
        self.documents = max(
            sum(p.doc_ids.size if self.specs[n].kind == "bm25" else len(p) for p in parts)
            for n, parts in self.parts.items()
        )
        given = dict(encoders or {})
        self.encoders = {
            n: given[n] if n in given else encoder_from_spec(s, device=device)
            for n, s in self.specs.items()
            if s.kind != "bm25"
        }
        self.refine_depth = self._checked_refine_depth(refine_depth)
        # None: each field's recorded first stage (``IndexConfig.first_stage``, ``_sizing``)
        self.first_stage = first_stage and check_first_stage(first_stage, [], self.path)
        for name, parts in self.parts.items():  # every vector field's parts can take it
            if self.specs[name].kind != "bm25" and first_stage is not None:
                configs = [p.config for p in parts]
                check_first_stage(first_stage, configs, f"field {name!r} of {self.path}")
        self.device, self.nprobe, self.ef_search = device, nprobe, ef_search
        self.reranker, self.rerank_depth, self.rerank_fusion = reranker, rerank_depth, rerank_fusion

    def _checked_refine_depth(self, depth: int | None) -> int | None:
        """``refine_depth``: candidates per query rescored from a refine copy, as for
        ``Retriever``; it applies to one searched field, whose index has a refine copy."""
        if depth is None:
            return None
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise InputError(f"refine_depth must be >= 1, got {depth!r}")
        if self.plan.fusion != fusion_lib.IDENTITY:
            raise InputError(
                f"--refine-depth applies to one searched field; this search fuses "
                f"{', '.join(self.plan.scored)}, each scored from its refine copy: leave it out"
            )
        (name,) = self.plan.scored
        if not any(getattr(p.config, "takes_refine_depth", False) for p in self.parts[name]):
            raise InputError(
                f"refine_depth: the index {self.path} has no refine copy (it was built without "
                "--refine) and no residual codes; leave the depth out"
            )
        return depth

    # ------------------------------------------------------------------------------ API
    def search(
        self,
        queries: Sequence[Any],
        *,
        k: int = 10,
        candidates: int | None = None,
        where: Where = None,
        query_ids: Sequence[str] | None = None,
        query_vectors: dict[str, Any] | None = None,
        rerank: bool = True,
    ) -> SearchResult:
        """Search text or ``Page`` queries over the planned fields.

        ``where``: one condition over the metadata for every query, or one per query (None:
        none for that query), applied before the first phase.

        ``query_vectors``: field name -> the queries' precomputed vectors (a sequence of
        (T, d) arrays) for fields without an encoder, or to skip encoding.

        ``rerank=False`` leaves the reranker out (queries given only as vectors: ``rerank``
        then reorders the result with their text or images)."""
        ids = query_ids_for(query_ids, len(queries))
        rerank = rerank and self.reranker is not None
        depth = max(k, self.rerank_depth) if rerank else k
        n_cand = first_candidates(depth, candidates, *self._sizing())
        encoded = self._encode(list(queries), query_vectors or {})
        scopes = scopes_of(where, len(ids))
        if scopes is None:
            result = self._ranked(encoded, ids, where, n_cand, depth)  # type: ignore[arg-type]
        else:
            result = by_scope(
                scopes,
                ids,
                lambda condition, rows: self._ranked(
                    {n: _take(e, rows) for n, e in encoded.items()},
                    [ids[i] for i in rows],
                    condition,
                    n_cand,
                    depth,
                ),
            )
        if rerank:
            result = self.rerank(result, queries)
        return truncate(result, k)

    def _sizing(self) -> tuple[str, int | None]:
        """The first stage and depth that size each query's candidates (``first_candidates``):
        those given, else what the one searched vector field records (a fused search keeps
        every field's candidates whole)."""
        stage, depth = self.first_stage, self.refine_depth
        (name, *others) = self.plan.scored
        if not others and self.specs[name].kind != "bm25":
            config = self.parts[name][0].config
            stage = stage or config.first_stage
            depth = depth if depth is not None else config.default_depth
        return stage or "fde", depth

    def rerank(self, result: SearchResult, queries: Sequence[Any]) -> SearchResult:
        """Reorder each query's top ``rerank_depth`` with the reranker (``rerank_result``),
        each page read from the page store (or shard) that holds it."""
        if self.reranker is None:
            raise InputError("this searcher has no reranker")
        top = [d for d in result.doc_ids[:, : self.rerank_depth].ravel() if d is not None]
        return rerank_result(
            result,
            list(queries),
            self.pages(top),
            self.reranker,
            depth=self.rerank_depth,
            fusion=self.rerank_fusion,
        )

    def _ranked(
        self, encoded: dict[str, Any], ids: list[str], where: str | None, n_cand: int, depth: int
    ) -> SearchResult:
        """The phases for encoded queries under one condition: the fused top ``depth``."""
        allowed = self._allowed(where)
        hits = {n: self._first_phase(n, encoded[n], n_cand, allowed[n]) for n in self.plan.fields}
        first_weights, weights = self._weights(hits)
        pool, first = self._candidates(hits, n_cand, first_weights)
        exact = self._second_phases(encoded, pool, hits, depth, weights)
        return self._result(ids, pool, first, exact, depth, weights)

    def _weights(self, hits: dict[str, Hits]) -> tuple[list[Any], list[Any]]:
        """The first phase's and the second phase's field weights: the plan's, or under
        ``auto`` the searched fields' times their per-query agreement (``fusion.
        agreement_weights``, from the first-phase lists; rescore-only fields keep theirs)."""
        first, scored = self.plan.first_weights(), list(self.plan.weights)
        if self.plan.fusion != "auto":
            return first, scored
        lists = [h.doc_ids for h in hits.values()]  # bm25 lists hold matched pages only
        n = len(self.plan.fields)
        return (
            fusion_lib.agreement_weights(lists, first),
            fusion_lib.agreement_weights(lists, scored[:n]) + scored[n:],
        )

    def pages(self, doc_ids: Sequence[str], allow: Sequence[Any] | None = None) -> dict[str, Any]:
        """Text and image of each doc id: from the index's page store (``latemm.index.pagestore``),
        or, in an index written before it existed, from the first field holding it. Page
        images named by path are read only under ``allow`` (default: the reranker's
        ``allow_files``); a page that cannot be read is an error naming the best-ranked such
        page of ``doc_ids``."""
        if allow is None:
            allow = getattr(self.reranker, "allow_files", ())
        try:
            return self._read_pages(doc_ids, allow)
        except InputError:
            for doc_id in doc_ids:  # one at a time, in rank order: the first failure is raised
                self._read_pages([doc_id], allow)
            raise

    def _read_pages(self, doc_ids: Sequence[str], allow: Sequence[Any]) -> dict[str, Any]:
        from latemm.encoders.base import Page
        from latemm.index.pagestore import open_store
        from latemm.index.pagestore import read_pages as read_stored

        if not hasattr(
            self, "_stores"
        ):  # opened on first use: a search without rerank never reads them
            stores = (
                open_store(folder, fields.pages, self.hidden) for folder, fields in self._layout
            )
            self._stores = [store for store in stores if store is not None]
        pages: dict[str, Any] = {}
        for store in self._stores:  # the index's store, or each shard's
            pages.update(read_stored(store, [d for d in doc_ids if d not in pages], allow))
        for name, index in ((n, part) for n, parts in self.parts.items() for part in parts):
            missing = [d for d in doc_ids if d not in pages]
            if not missing:
                break
            if self.specs[name].kind != "bm25":
                pages.update(resolve([phases(index).pages(missing, allow)])[0])
            else:
                texts = index.texts()
                pages.update(
                    {d: Page(text=texts[index.position[d]]) for d in missing if d in index.position}
                )
        return pages

    def close(self) -> None:
        """Release the actors serving the parts (nothing to do in-process)."""
        if self._actors is not None:
            self._actors.close()

    def capped(self, k: int) -> int:
        """``k`` at most the documents the searched fields hold (at least 1): results are
        (Q, k) arrays, so a k far beyond the collection (``--k 300000000``) is capped, not
        allocated; a run holds the same rows either way."""
        return min(k, max(1, self.documents))

    def state(self) -> dict[str, Any]:
        """What the searched fields hold now: each vector field's generation, each bm25
        field's build (a search resumes only over the same state)."""
        return self._built

    @property
    def indexes(self) -> dict[str, Any]:
        """Each field's one part (an ``Index`` or a ``BM25Index``); a sharded collection's
        vector fields have one part per shard (``parts``)."""
        return {n: parts[0] for n, parts in self.parts.items() if len(parts) == 1}

    def _builds(self) -> dict[str, Any]:
        """``state`` as opened: per field its generation (bm25: build), a list of them over
        the shards of a sharded collection."""
        out: dict[str, Any] = {}
        for name, parts in self.parts.items():
            bm25 = self.specs[name].kind == "bm25"
            states = [p.path.name if bm25 else p.generation for p in parts]
            out[name] = states if self.sharded else states[0]
        return out

    def _state(self) -> tuple[list[str] | None, FieldsManifest, list[tuple[Path, FieldsManifest]]]:
        """The unfinished delete's ids (None: none), the fields, and each folder of fields
        (the index itself, or every shard that holds a fields index) with its own fields."""
        if not self.sharded:
            manifest = read_fields(self.path)
            return read_journal(self.path), manifest, [(self.path, manifest)]
        if not self._collection.named_fields:  # shards of one encoder: its field ``default``
            from latemm.index.sharded import (
                check_layout,
                pending_deletes,
                read_manifest,
                shard_dirs,
            )

            sharded = read_manifest(self.path)
            check_layout(self.path, sharded)
            fields = one_field(sharded.config)
            self._generation = sharded.generation
            hidden = sorted(pending_deletes(self.path))
            return hidden or None, fields, [(f, fields) for f in shard_dirs(self.path, sharded)]
        shards: FieldShards = read_field_shards(self.path)
        layout = [(folder, fields) for _, folder, fields in shard_layout(self.path, shards)]
        self._generation = shards.generation
        return hidden_ids(self.path, shards), shards.manifest(), layout

    def _open_parts(
        self, layout: list[tuple[Path, FieldsManifest]], name: str, spec: FieldSpec
    ) -> list[Any]:
        """Field ``name`` opened in every folder of ``layout`` that holds it; a shard whose
        field holds no page yet is left out."""
        # A vector field's parts are opened here, or served by ``actors`` (a Ray actor per
        # folder); a bm25 field is one index of the collection, on the coordinator.
        opener = open_field if self._actors is None or spec.kind == "bm25" else self._actors.open
        if not self.sharded:
            return [opener(self.path, spec, legacy=self.manifest.legacy)]
        parts = []
        for folder, fields in layout:
            if name not in fields.names:
                continue
            own, legacy = fields.get(name), fields.legacy
            if own.kind == "bm25" or (field_dir(folder, own, legacy) / "manifest.json").is_file():
                try:
                    parts.append(opener(folder, own, legacy=legacy))
                except IndexCorruptError as exc:
                    raise IndexCorruptError(
                        f"{self.path}: shard {folder.name} ({folder}) cannot be opened: {exc}. "
                        f"Rebuild it by re-running `latemm index` into {self.path} (indexing "
                        "resumes and routes each doc_id to the same shard)"
                    ) from exc
        return parts

    def resume_record(
        self, queries: str | Path, *, k: int, candidates: int | None, where: str | None
    ) -> dict[str, Any]:
        """The settings a search of a query file records beside its finished batches
        (``latemm.runs.jobs.run_queries``): the index and its fields' state, the plan, the
        encoders, the reranker. ``where`` is checked here, before any batch is written."""
        self._allowed(where)
        reranker = self.reranker
        return {
            "index": str(self.path.resolve()),
            "generation": self.state(),
            "queries": str(Path(queries).resolve()),
            "k": k,
            "candidates": candidates,
            "where": where,
            "plan": {
                "fields": list(self.plan.fields),
                "fusion": self.plan.fusion,
                "weights": list(self.plan.weights),
                "rescore": list(self.plan.rescore),
                "normalization": self.plan.normalization,
                "rrf_k": self.plan.rrf_k,
            },
            "encoder": {
                n: None if e is None else e.info.to_dict() for n, e in self.encoders.items()
            },
            "reranker": None
            if reranker is None
            else str(getattr(reranker, "model_id", type(reranker).__name__)),
            "rerank_depth": self.rerank_depth if reranker is not None else None,
            "rerank_fusion": self.rerank_fusion if reranker is not None else None,
            # absent for the FDE: records written before there was a choice still resume
            **({"first_stage": self.first_stage} if self.first_stage not in (None, "fde") else {}),
        }

    # -------------------------------------------------------------------------- stages
    def _encode(self, queries: list[Any], given: dict[str, Any]) -> dict[str, Any]:
        """Per field: (flat, offsets) query vectors, or the query texts for bm25 fields."""
        unknown = [n for n in given if n not in self.specs]
        if unknown:
            raise InputError(
                f"query vectors for unknown field(s) {unknown}; fields: {list(self.specs)}"
            )
        out: dict[str, Any] = {}
        cache: dict[str, Any] = {}
        for name, spec in self.specs.items():
            if spec.kind == "bm25" or (spec.reads == "text" and name not in given):
                texts = _texts(queries, name, spec)
                if spec.kind == "bm25":
                    out[name] = texts
                    continue
            if name in given:
                out[name] = as_query_arrays(self._part(name), given[name], None)
                continue
            encoder = self.encoders.get(name)
            if encoder is None:
                raise InputError(
                    f"field {name!r} holds precomputed vectors ({spec.options.get('embedding_column')!r}); "
                    "give the query file's column of its vectors (`latemm search ... "
                    f"--query-column {name}=COLUMN`; in Python query_vectors={{name: ...}})"
                )
            key = repr(sorted(encoder.info.to_dict().items(), key=str))
            if key not in cache:
                vectors = encoder.encode_queries(queries)
                cache[key] = (vectors.vectors, vectors.offsets)
            out[name] = cache[key]
        return out

    def _part(self, name: str) -> Any:
        """A part of vector field ``name`` (each shares the field's config)."""
        if not self.parts[name]:
            raise InputError(
                f"field {name!r} holds no page in any shard of {self.path}; index pages it can "
                "read, or leave it out with --fields"
            )
        return self.parts[name][0]

    def _unchanged(self, pending: list[str] | None, layout: list[Any]) -> bool:
        """Whether the index is still in the state the fields were opened in: the same
        unfinished delete (or none), the same fields.json (every shard's), each vector field
        at the generation opened. A delete that changed some fields between two opens shows
        here."""
        from index_store.manifest import Manifest

        generation = getattr(self, "_generation", None)
        now, manifest, now_layout = self._state()
        if now != pending or manifest.to_dict() != self.manifest.to_dict():
            return False
        if generation != getattr(self, "_generation", None):
            return False
        if [(f, m.to_dict()) for f, m in now_layout] != [(f, m.to_dict()) for f, m in layout]:
            return False
        return all(
            Manifest.read(index.path).generation == index.generation
            for name, parts in self.parts.items()
            for index in parts
            if self.specs[name].kind != "bm25"
        )

    def _allowed(self, where: str | None) -> dict[str, Any]:
        """Per field: searchable rows (per-segment masks for vector fields, one mask over the
        documents for bm25), from each vector field's own metadata and, for the page content
        columns it no longer keeps (text, image), from its folder's page store; the ids of an
        unfinished delete are never searchable (a bm25 field left them out of its statistics on
        open). A bm25 field keeps the pages some vector field admits; searched alone, it is
        filtered on the page store."""
        out: dict[str, Any] = {}
        admitted: set[str] = set()
        vector = [n for n in self.parts if self.specs[n].kind != "bm25"]
        for name in vector:  # per part: per segment
            got = resolve(
                [
                    phases(p).allowed(where, self.hidden, self._part_store(p, where))
                    for p in self.parts[name]
                ]
            )
            out[name] = [masks for masks, _ in got]
            admitted.update(*(ids for _, ids in got))
        for name, parts in self.parts.items():
            if name not in vector:
                index = parts[0]
                if where is not None and not vector:
                    out[name] = self._store_mask(name, index.doc_ids, where)
                    continue
                out[name] = (
                    None if where is None else np.array([d in admitted for d in index.doc_ids])
                )
        return out

    def _part_store(self, part: Any, where: str | None) -> Any:
        """The page store ``where`` may read content columns from for a vector field's part
        (an opened ``Index`` or an actor's part, both with ``path``): None without ``where``
        or for an index written before the page store."""
        if where is None or self.manifest.legacy:
            return None
        return self._store(Path(part.path).parent.parent)

    def _store(self, folder: Path) -> Any:
        """The page store of ``folder`` (the index, or one shard), opened once; None for a
        folder written before the page store existed."""
        from latemm.index.pagestore import open_store

        if not hasattr(self, "_folder_stores"):
            self._folder_stores: dict[Path, Any] = {}
        if folder not in self._folder_stores:
            record = next((m.pages for f, m in self._layout if f == folder), None)
            self._folder_stores[folder] = open_store(folder, record, self.hidden)
        return self._folder_stores[folder]

    def _store_mask(self, name: str, doc_ids: np.ndarray, where: str) -> np.ndarray:
        """A bm25 field searched without a vector field: the documents whose page store
        content (text, source, page, ...) and doc_id satisfy ``where``."""
        import pyarrow as pa

        stores = [s for s in (self._store(folder) for folder, _ in self._layout) if s is not None]
        if not stores:
            raise InputError(
                f"--where needs the page metadata, which vector fields keep; field "
                f"{name!r} is bm25 only. Search a vector field too"
            )
        ids = [str(d) for d in doc_ids]
        columns = tuple(dict.fromkeys(c for store in stores for c in store.columns()))
        meta = pa.table(
            {
                "doc_id": pa.array(ids, pa.string()),
                "_segment": pa.array(np.zeros(len(ids), np.int32)),
                "_row": pa.array(np.arange(len(ids), dtype=np.int64)),
            }
        )

        def read(names: list[str], table: pa.Table) -> pa.Table:
            merged = {c: [None] * len(ids) for c in names}
            for store in stores:  # each page lives in one shard's store
                got = store.read_columns(ids, names)
                for c in names:
                    for i, value in enumerate(got.column(c).to_pylist()):
                        if value is not None:
                            merged[c][i] = value
            return pa.table({c: pa.array(v) for c, v in merged.items()})

        _, rows = matching_rows(meta, where, content=columns, read_content=read)
        mask = np.zeros(len(ids), dtype=bool)
        mask[rows] = True
        return mask

    def _first_phase(self, name: str, query: Any, n_cand: int, allowed: Any) -> Hits:
        """One field's first phase: per part (shard), then merged (``merge_hits``)."""
        parts = self.parts[name]
        if self.specs[name].kind == "bm25":
            return bm25_hits(parts[0].scores(query), parts[0].doc_ids, allowed, n_cand)
        flat, offsets = query
        pending = []
        matrices: dict[str, np.ndarray] = {}  # shards share a config: the queries' FDEs once
        for index, masks in zip(parts, allowed, strict=True):
            key = repr(index.config.to_dict())
            if key not in matrices:
                matrices[key] = first_stage_queries(
                    index,
                    flat,
                    offsets,
                    device=self.device,
                    centroids=(self.first_stage or index.config.first_stage) == "centroids",
                )
            pending.append(
                phases(index).first_stage(
                    matrices[key], n_cand, masks, nprobe=self.nprobe, ef_search=self.ef_search
                )
            )
        hits = [Hits(ids, scores) for ids, scores in resolve(pending)]
        return merge_hits(hits, n_cand, offsets.size - 1)

    def _candidates(
        self, hits: dict[str, Hits], n_cand: int, weights: Sequence[Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The fused first phase's top ``n_cand``: (Q, C) doc ids and fused scores."""
        pool = union([h.doc_ids for h in hits.values()])
        # A bm25 field scored every document: a pooled one outside its top list gets its true
        # score, not "absent" (vector fields only know the scores of what they retrieved).
        scores = [
            align(pool, h.doc_ids, h.scores) if h.full is None else self._bm25_at(n, h.full, pool)
            for n, h in hits.items()
        ]
        fused = self._fuse(list(hits), scores, pool, weights)
        picks = top_k(pool, fused, n_cand)
        return gather(pool, picks, fill=None), gather(fused, picks)

    def _second_phases(
        self,
        encoded: dict[str, Any],
        pool: np.ndarray,
        hits: dict[str, Hits],
        k: int,
        weights: Sequence[Any],
    ) -> dict[str, np.ndarray]:
        """Every scored field's (Q, C) scores of the candidates, exact wherever the fused top
        ``k`` depends on them.

        On the CPU a MaxSim field is first scored by the fast pass, each score within a proven
        bound of the exact one (``retriever.bounded_scores``); then, until the fused top k is
        settled, the scores its fused values depend on (``fusion.entangled``) and those of the
        candidates that may make it are computed exactly. The top k, its fused scores and every
        field's scores in it are then those of exact scores everywhere; other candidates may
        keep their fast scores. With k at least the candidates, under RRF with k over an eighth
        of them, and on a GPU, every score is computed exactly."""
        # Under RRF the top k's ranks entangle each of them with its neighbours in every field:
        # a top k over an eighth of the candidates needs nearly every score exactly, and the
        # fast pass only adds its cost (2,000 ColPali-shaped pages, C = 512: k = 10 2.7x
        # faster bounded, k = 100 1.15x slower; experiments/bench_fusion_latency).
        # A top k of every candidate shows every score: nothing to spare.
        if self.plan.fusion == fusion_lib.IDENTITY:
            # One field: each part settles its own top k as ``Retriever`` does (from its refine
            # copy at ``refine_depth``, if it has one); a candidate left with its fast score
            # there is below that part's k-th exact score, so the merged top k is exact.
            (name,) = self.plan.scored
            return {name: self._second_phase(name, encoded[name], pool, hits.get(name), k)}
        share = _RRF_BOUNDED_SHARE if self.plan.fusion in ("rrf", "auto") else 1
        bound = share * k < pool.shape[1]
        lows, highs, work = {}, {}, {}
        for name in self.plan.scored:
            spec = self.specs[name]
            fast = None
            multi = spec.kind == "multi"
            if bound and multi and name in self.plan.rescore:
                flat, offsets = encoded[name]
                parts = self.parts[name]
                held = resolve([phases(p).locate(pool) for p in parts])
                located = list(zip(parts, held, strict=True))
                fast = _bounded_parts(located, flat, offsets, pool.shape, self.device)
            if fast is None:
                exact = self._second_phase(name, encoded[name], pool, hits.get(name))
                lows[name] = highs[name] = exact
                continue
            lows[name], highs[name] = fast[0] - fast[1], fast[0] + fast[1]
            work[name] = (located, flat, offsets, fast[0])
        while work:
            low, high = fusion_lib.fuse_bounds(
                self.plan.fusion,
                self._matched(list(lows), list(lows.values())),
                self._matched(list(highs), list(highs.values())),
                pool,
                weights,
                normalization=self.plan.normalization,
                rrf_k=self.plan.rrf_k,
            )
            low, high = np.nan_to_num(low, nan=-np.inf), np.nan_to_num(high, nan=-np.inf)
            kth = -np.sort(-low, axis=1)[:, min(k, low.shape[1]) - 1 : min(k, low.shape[1])]
            # A candidate that may make the top k needs its fused score and its own scores.
            unknown = np.any([lows[n] < highs[n] for n in work], axis=0)
            unsure = (high >= kth) & ((low < high) | unknown)
            if not unsure.any():
                break
            computed = False
            for name, (located, flat, offsets, _) in work.items():
                chosen = fusion_lib.entangled(
                    self.plan.fusion,
                    lows[name],
                    highs[name],
                    unsure,
                    normalization=self.plan.normalization,
                )
                # Once most of a row's unknown scores are needed, the rest soon follow: all of
                # them in one pass instead of round after round.
                open_scores = lows[name] < highs[name]
                most = chosen.sum(axis=1) > open_scores.sum(axis=1) // 2
                chosen = np.where(most[:, None], open_scores, chosen)
                if chosen.any():
                    out = _rescore_chosen_parts(located, flat, offsets, chosen, self.device)
                    lows[name] = np.where(chosen, out, lows[name])
                    highs[name] = np.where(chosen, out, highs[name])
                    computed = True
            if not computed:  # every score known: the bounds are the fused scores
                break
        return {
            name: np.where(lows[name] == highs[name], lows[name], work[name][3])
            if name in work
            else lows[name]
            for name in self.plan.scored
        }

    def _second_phase(
        self, name: str, query: Any, pool: np.ndarray, hits: Hits | None, k: int | None = None
    ) -> np.ndarray:
        """(Q, C) this field's exact scores of the candidates (NaN where it lacks one); with
        ``k``, exact wherever each part's top k depends on them (``retriever.rescore``)."""
        parts, spec = self.parts[name], self.specs[name]
        if spec.kind == "bm25":
            full = (
                hits.full if hits is not None and hits.full is not None else parts[0].scores(query)
            )
            return self._bm25_at(name, full, pool)
        if spec.kind == "single" or name in self.plan.rescore:
            flat, offsets = query
            out = np.full(pool.shape, np.nan, dtype=np.float64)
            located = resolve([phases(index).locate(pool) for index in parts])
            got = resolve(  # each candidate is scored where it lives
                [
                    phases(index).rescore(flat, offsets, cands, self.device, k, self.refine_depth)
                    for index, cands in zip(parts, located, strict=True)
                ]
            )
            for cands, scores in zip(located, got, strict=True):
                out = np.where(cands.valid, scores.astype(np.float64), out)
            return out
        assert hits is not None  # a field outside rescore is a searched one
        return align(pool, hits.doc_ids, hits.scores)

    def _bm25_at(self, name: str, full: np.ndarray, pool: np.ndarray) -> np.ndarray:
        """(Q, U) bm25 field ``name``'s scores ``full`` (Q, n_docs) of the pooled doc ids; NaN
        for ids it does not hold."""
        position = self.parts[name][0].position
        cols = np.array([[position.get(d, -1) for d in row] for row in pool]).reshape(pool.shape)
        if full.shape[1] == 0:
            return np.full(pool.shape, np.nan)
        return np.where(cols >= 0, np.take_along_axis(full, np.maximum(cols, 0), 1), np.nan)

    def _matched(self, names: Sequence[str], scores: list[np.ndarray]) -> list[np.ndarray]:
        """The fields' scores as rank fusion reads them: a bm25 field's score 0 (the page
        matches no query term) is no score, so RRF gives such a page nothing from that field
        instead of ranking the non-matches among themselves by doc_id. Score fusions read
        0 as the lowest score it is."""
        if self.plan.fusion not in ("rrf", "auto"):
            return scores
        return [
            np.where(s > 0, s, np.nan) if self.specs[n].kind == "bm25" else s
            for n, s in zip(names, scores, strict=True)
        ]

    def _fuse(
        self,
        names: Sequence[str],
        scores: list[np.ndarray],
        pool: np.ndarray,
        weights: Sequence[Any],
    ) -> Any:
        return fusion_lib.fuse(
            self.plan.fusion,
            self._matched(names, scores),
            pool,
            weights,
            normalization=self.plan.normalization,
            rrf_k=self.plan.rrf_k,
        )

    def _result(
        self,
        ids: list[str],
        pool: np.ndarray,
        first: np.ndarray,
        exact: dict[str, np.ndarray],
        k: int,
        weights: Sequence[Any],
    ) -> SearchResult:
        fused = self._fuse(list(exact), list(exact.values()), pool, weights)
        picks = top_k(pool, fused, k)
        maxsim = (
            gather(exact[self.plan.rescore[0]], picks)
            if len(self.plan.rescore) == 1
            else np.full(picks.shape, np.nan)
        )
        return SearchResult(
            ids,
            gather(pool, picks, fill=None),
            gather(fused, picks).astype(np.float32),
            gather(first, picks).astype(np.float32),
            maxsim.astype(np.float32),
            None,
            {n: gather(v, picks).astype(np.float32) for n, v in exact.items()},
        )


class OneFieldRetriever:
    """An index of one encoder, plain (``manifest.json``) or sharded (``latemm.index.sharded``),
    searched through the collection searcher, ``FieldRetriever``, as its one field
    (``default``), with ``Retriever``'s result columns and methods. Sharded, the first stage's
    candidates are the best of every shard's, each rescored where it lives, so its results are
    those of the unsharded index built from the same pages. What ``latemm search`` and
    ``latemm.search`` use for either kind (``latemm.runs.jobs.open_retriever``); ``Retriever``
    remains the in-process kernel over one opened ``Index``.

    Parameters
    ----------
    index
        The index directory (plain or sharded).
    encoder
        Encodes queries (``search``); must match the encoder the index records.
    reranker, rerank_depth, rerank_fusion
        As for ``Retriever``: the merged top ``rerank_depth`` of each query is reranked here,
        with page content read from the folder (shard) that holds it.
    actors
        None searches the shards in this process. Otherwise ``actors(index)`` serves them
        elsewhere, as for ``FieldRetriever`` (``latemm.runs.distributed.ShardActors`` on Ray, what
        ``latemm.runs.jobs.open_retriever(..., ray=ADDRESS)`` passes); sharded indexes only.
    refine_depth, **options
        ``refine_depth``, ``first_stage``, ``device``, ``nprobe``, ``ef_search``, as for
        ``Retriever``.
    """

    def __init__(
        self,
        index: str | Path,
        *,
        encoder: Any = None,
        actors: Callable[[Path], Any] | None = None,
        reranker: Any = None,
        rerank_depth: int = 20,
        rerank_fusion: str = "none",
        refine_depth: int | None = None,
        **options: Any,
    ) -> None:
        from latemm.encoders.base import check_recorded
        from latemm.index.sharded import read_manifest

        self.path = Path(index)
        collection = open_collection(self.path)
        self.sharded = collection.sharded
        if collection.named_fields and not self.sharded:
            raise InputError(
                f"{self.path} is a multi-field index: search it by its fields (FieldRetriever, "
                "latemm.search or `latemm search`), not as one encoder's index"
            )
        if actors is not None and not self.sharded:  # before any actor connects
            raise InputError(
                f"--ray serves a sharded index; {self.path} is an ordinary one. Build a sharded "
                "index with `latemm index CORPUS --index DIR --shards N`, or leave out --ray"
            )
        self.encoder = encoder
        self.reranker, self.rerank_depth, self.rerank_fusion = reranker, rerank_depth, rerank_fusion
        self.searcher = FieldRetriever(
            self.path,
            encoders={LEGACY_FIELD: encoder},
            actors=actors,
            refine_depth=refine_depth,
            reranker=reranker,
            rerank_depth=rerank_depth,
            rerank_fusion=rerank_fusion,
            **options,
        )
        # The recorded config: shards.json's, or the one index's as the searcher opened it.
        self.config = (
            read_manifest(self.path).config
            if self.sharded
            else self.searcher.indexes[LEGACY_FIELD].config
        )
        if encoder is not None:
            check_recorded(self.config.encoder, encoder.info, self.path)

    @property
    def generation(self) -> int:
        """The generation the index was opened at (of ``shards.json`` when sharded)."""
        if self.sharded:
            return int(self.searcher._generation)
        return int(self.searcher.state()[LEGACY_FIELD])

    def indexes(self) -> list[Any]:
        """Every shard (or the one index), opened read-only (to check a ``where`` filter
        before searching)."""
        if not self.sharded:
            return [self.searcher.indexes[LEGACY_FIELD]]
        from latemm.index.sharded import open_shard, read_manifest

        return [open_shard(self.path, s) for s in range(read_manifest(self.path).num_shards)]

    def search(
        self,
        queries: Sequence[Any],
        *,
        k: int = 10,
        candidates: int | None = None,
        where: Where = None,
        query_ids: Sequence[str] | None = None,
    ) -> SearchResult:
        """Encode queries (text or ``Page``) once and search every shard (reranking the
        merged top ``rerank_depth`` with the reranker, if any)."""
        if self.encoder is None:
            raise InputError(
                "this OneFieldRetriever has no encoder; pass encoder= or call search_embeddings "
                "with precomputed vectors"
            )
        result = self.searcher.search(
            list(queries),
            k=self.searcher.capped(k),  # as ``Retriever``: no more results than documents
            candidates=candidates,
            where=where,
            query_ids=query_ids,
        )
        return self._one_field(result)

    def rerank(self, result: SearchResult, queries: Sequence[Any]) -> SearchResult:
        """Reorder each query's top ``rerank_depth`` with the reranker (``rerank_result``),
        reading each page from the folder (shard) that holds it."""
        return self.searcher.rerank(result, queries)

    def search_embeddings(
        self,
        query_vectors: Any,
        query_offsets: Any = None,
        *,
        k: int = 10,
        candidates: int | None = None,
        where: Where = None,
        query_ids: Sequence[str] | None = None,
    ) -> SearchResult:
        """As ``Retriever.search_embeddings``, over every shard (or the one index)."""
        from fde import FDEInputError, as_flat

        dim = self.config.dim
        try:
            flat, offsets = as_flat(query_vectors, dim, offsets=query_offsets, kind="query")
        except FDEInputError as exc:
            raise InputError(f"{exc} (the index stores {dim}-dimensional vectors)") from exc
        vectors = [flat[offsets[q] : offsets[q + 1]] for q in range(offsets.size - 1)]
        result = self.searcher.search(
            [None] * len(vectors),
            k=self.searcher.capped(k),
            candidates=candidates,
            where=where,
            query_ids=query_ids,
            query_vectors={LEGACY_FIELD: vectors},
            rerank=False,  # no query text or images here: ``rerank`` takes them
        )
        return self._one_field(result)

    @staticmethod
    def _one_field(result: SearchResult) -> SearchResult:
        """The result as one index gives it: without the per-field score columns."""
        return replace(result, field_scores=None)

    def close(self) -> None:
        """Release the shard actors (nothing to do in-process)."""
        self.searcher.close()


def _bounded_parts(
    located: list[tuple[Any, Candidates]],
    flat: np.ndarray,
    offsets: np.ndarray,
    shape: tuple[int, ...],
    device: str | None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """``retriever.bounded_scores`` of the pooled candidates, each from the part (shard) that
    holds it: (Q, C) fast scores (NaN where no part holds one) and bounds; None where the fast
    pass does not run."""
    fast = np.full(shape, np.nan, dtype=np.float64)
    bounds = np.full(shape, np.nan, dtype=np.float64)
    results = resolve([phases(index).bounded(flat, offsets, c, device) for index, c in located])
    for (_, cands), got in zip(located, results, strict=True):
        if got is None:
            return None
        if len(located) == 1:
            return got
        fast = np.where(cands.valid, got[0], fast)
        bounds = np.where(cands.valid, got[1], bounds)
    return fast, bounds


def _rescore_chosen_parts(
    located: list[tuple[Any, Candidates]],
    flat: np.ndarray,
    offsets: np.ndarray,
    chosen: np.ndarray,
    device: str | None,
) -> np.ndarray:
    """``retriever.rescore_chosen`` of the ``chosen`` candidates, each in its part."""
    if len(located) == 1:
        index, cands = located[0]
        return resolve([phases(index).rescore_chosen(flat, offsets, cands, chosen, device)])[0]
    out = np.full(chosen.shape, np.nan, dtype=np.float32)
    mine = [(index, cands, chosen & cands.valid) for index, cands in located]
    mine = [(index, cands, m) for index, cands, m in mine if m.any()]
    got = resolve([phases(i).rescore_chosen(flat, offsets, c, m, device) for i, c, m in mine])
    for (_, _, m), scores in zip(mine, got, strict=True):
        out = np.where(m, scores, out)
    return out


def _take(encoded: Any, rows: list[int]) -> Any:
    """The encoded queries at ``rows``: texts (bm25 fields) or (flat, offsets) vectors."""
    if isinstance(encoded, list):
        return [encoded[i] for i in rows]
    flat, offsets = encoded
    return take_queries(flat, offsets, rows)


def _texts(queries: list[Any], name: str, spec: FieldSpec) -> list[str]:
    """Query texts for a field that reads text; an image-only query is an error naming it."""
    out = []
    for i, query in enumerate(queries):
        text = query if isinstance(query, str) else getattr(query, "text", None)
        if not text:
            raise InputError(
                f"query {i} has no text; field {name!r} ({spec.kind}, reads {spec.reads}) "
                "cannot encode image queries. Search it with text queries, or leave it out "
                "with --fields",
                item=i,
            )
        out.append(str(text))
    return out


def run_schema(fields: Sequence[str]) -> Any:
    """The run table's schema: ``latemm.data.io.RUN_SCHEMA`` plus ``score_<field>`` per field."""
    import pyarrow as pa

    from latemm.data.io import RUN_SCHEMA

    return pa.schema([*RUN_SCHEMA, *(pa.field(f"score_{n}", pa.float32()) for n in fields)])
