"""The per-part phases of a field search: what ``FieldRetriever`` asks of each part (one
shard's sub-index of a vector field), whether that part is opened in this process or served
by a Ray actor (``latemm.runs.distributed.ShardActors``).

``IndexPart`` runs the phases on an opened ``Index``: the searchable rows under a condition,
the first stage of given query encodings, where pooled doc ids live, and the fast and exact
MaxSim of given candidates. A Ray actor holds ``IndexPart`` objects and runs the very same
methods; its handle on the coordinator (``ActorPart``) returns each call's result as a
``Pending`` so that every shard's call is under way before the first one is waited for
(``resolve``). ``FieldRetriever`` merges, fuses and reranks on the coordinator either way:
there is one implementation of the search.

Imports ``index_store`` and ``latemm.retrieval.retriever``; never Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from index_store import Index
from latemm.ranking.filters import filter_masks
from latemm.retrieval.retriever import (
    Candidates,
    Retriever,
    bounded_scores,
    doc_ids_of,
    first_stage,
    read_pages,
    rescore,
    rescore_chosen,
)


class Pending:
    """A part's call under way (a Ray actor's); ``result()`` waits for its value."""

    def result(self) -> Any:
        raise NotImplementedError


class PartPhases(Protocol):
    """What ``FieldRetriever`` calls on each part of a vector field. Every method may return
    its value or a ``Pending`` one; ``resolve`` waits for a list of them."""

    def allowed(self, where: str | None, hidden: frozenset[str], store: Any = None) -> Any:
        """(per-segment masks, the doc ids that ``where`` admits: empty without ``where``);
        ``store``: the page store that ``where``'s content columns (text, image) are read from."""

    def first_stage(
        self, matrix: np.ndarray, n_cand: int, masks: Any, *, nprobe: int, ef_search: int
    ) -> Any:
        """(Q, C) doc ids (None pads) and scores (NaN pads) of the first stage."""

    def locate(self, pool: np.ndarray) -> Any:
        """``Candidates``: (segment, row) of each pooled doc id held here, -1 elsewhere."""

    def rescore(
        self,
        flat: np.ndarray,
        offsets: np.ndarray,
        cands: Candidates,
        device: str | None,
        k: int | None = None,
        refine_depth: int | None = None,
    ) -> Any:
        """(Q, C) MaxSim of the located candidates (``retriever.rescore``): exact, or with
        ``k`` exact wherever a query's top k depends on it."""

    def bounded(
        self, flat: np.ndarray, offsets: np.ndarray, cands: Candidates, device: str | None
    ) -> Any:
        """``retriever.bounded_scores`` of the located candidates (None: no fast pass)."""

    def rescore_chosen(
        self,
        flat: np.ndarray,
        offsets: np.ndarray,
        cands: Candidates,
        chosen: np.ndarray,
        device: str | None,
    ) -> Any:
        """``retriever.rescore_chosen`` of the ``chosen`` located candidates."""

    def pages(self, doc_ids: Sequence[str], allow_files: Sequence[Any]) -> Any:
        """``retriever.read_pages``: the pages of an index written before the page store."""


class IndexPart:
    """The phases of one opened ``Index`` (in this process, or inside a Ray actor)."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def allowed(
        self, where: str | None, hidden: frozenset[str], store: Any = None
    ) -> tuple[list[np.ndarray | None], set[str]]:
        index = self.index
        if where is None or store is None:
            masks = Retriever(index)._allowed(where)
        else:
            masks = list(
                filter_masks(
                    index,
                    where,
                    content=store.columns(),
                    read_content=lambda names, meta: store.read_columns(
                        meta.column("doc_id").to_pylist(), names
                    ),
                )
            )
        if hidden:
            masks = [
                _without(seg.doc_ids, mask if mask is not None else seg.live, hidden)
                for seg, mask in zip(index.segments, masks, strict=True)
            ]
        admitted: set[str] = set()
        if where is not None:
            for s, mask in enumerate(masks):
                seg = index.segments[s]
                admitted.update(seg.doc_ids[mask if mask is not None else seg.live])
        return masks, admitted

    def first_stage(
        self, matrix: np.ndarray, n_cand: int, masks: Any, *, nprobe: int, ef_search: int
    ) -> tuple[np.ndarray, np.ndarray]:
        cands = first_stage(self.index, matrix, n_cand, masks, nprobe=nprobe, ef_search=ef_search)
        return doc_ids_of(self.index, cands), np.where(cands.valid, cands.scores, np.nan)

    def locate(self, pool: np.ndarray) -> Candidates:
        locations, absent = self.index.locations(), (-1, -1)  # None pads and other parts' ids
        found = [locations.get(d, absent) for d in pool.ravel().tolist()]  # a lookup each
        segs = np.fromiter((s for s, _ in found), np.int64, len(found)).reshape(pool.shape)
        rows = np.fromiter((r for _, r in found), np.int64, len(found)).reshape(pool.shape)
        return Candidates(segs, rows, np.zeros(pool.shape, np.float32))

    def rescore(
        self,
        flat: np.ndarray,
        offsets: np.ndarray,
        cands: Candidates,
        device: str | None,
        k: int | None = None,
        refine_depth: int | None = None,
    ) -> np.ndarray:
        return rescore(
            self.index, flat, offsets, cands, device=device, k=k, refine_depth=refine_depth
        )

    def bounded(
        self, flat: np.ndarray, offsets: np.ndarray, cands: Candidates, device: str | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        return bounded_scores(self.index, flat, offsets, cands, device)

    def rescore_chosen(
        self,
        flat: np.ndarray,
        offsets: np.ndarray,
        cands: Candidates,
        chosen: np.ndarray,
        device: str | None,
    ) -> np.ndarray:
        return rescore_chosen(self.index, flat, offsets, cands, chosen, device)

    def pages(self, doc_ids: Sequence[str], allow_files: Sequence[Any]) -> dict[str, Any]:
        return read_pages(self.index, doc_ids, allow_files)


def phases(part: Any) -> PartPhases:
    """The phases of a vector field's part: an opened ``Index`` runs them here; any other part
    (a Ray actor's handle) is one already."""
    return IndexPart(part) if isinstance(part, Index) else part


def resolve(values: Sequence[Any]) -> list[Any]:
    """The values of several parts' calls, in order: a ``Pending`` one waited for (all of them
    were started before the first wait, so remote parts work at the same time)."""
    return [v.result() if isinstance(v, Pending) else v for v in values]


def _without(doc_ids: Any, mask: np.ndarray | None, hidden: frozenset[str]) -> np.ndarray:
    """``mask`` (None: every row) with the rows whose id is in ``hidden`` turned off."""
    out = np.ones(len(doc_ids), dtype=bool) if mask is None else np.array(mask, dtype=bool)
    out &= np.fromiter((d not in hidden for d in doc_ids), dtype=bool, count=len(doc_ids))
    return out
