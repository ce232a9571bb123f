"""The retriever's stages one by one: MaxSim against a plain loop (the oracle of every
brute-force test), batched rescoring against per-query scoring, metadata and page reads
counted, and the whole search against brute force."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index_store import Index, IndexConfig, create
from latemm.ranking.scoring import maxsim
from latemm.retrieval.retriever import (
    Candidates,
    Retriever,
    SearchResult,
    first_stage,
    first_stage_queries,
    read_pages,
    rescore,
    take_sets,
    top_k,
)

DIM = 6


def _loop_maxsim(queries: list[np.ndarray], docs: list[np.ndarray]) -> np.ndarray:
    out = np.zeros((len(queries), len(docs)))
    for i, query in enumerate(queries):
        for j, doc in enumerate(docs):
            total = 0.0
            for t in query:
                total += max(float(sum(a * b for a, b in zip(t, u, strict=True))) for u in doc)
            out[i, j] = total
    return out


def _flat(sets: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sets])]).astype(np.int64)
    return np.concatenate(sets).astype(np.float32), offsets


@pytest.mark.parametrize("block_tokens", [1, 7, 1 << 16])
def test_maxsim_equals_a_plain_loop(block_tokens) -> None:
    rng = np.random.default_rng(3)
    queries = [rng.standard_normal((int(t), DIM)) for t in rng.integers(1, 6, 4)]
    # Equal and unequal document lengths take different kernel paths.
    docs = [rng.standard_normal((int(t), DIM)) for t in rng.integers(1, 9, 11)]
    docs += [rng.standard_normal((3, DIM)) for _ in range(3)]
    q, qo = _flat(queries)
    d, do = _flat(docs)
    got = maxsim(q, qo, d, do, block_tokens=block_tokens)
    np.testing.assert_allclose(got, _loop_maxsim(queries, docs), rtol=1e-5, atol=1e-5)
    half = maxsim(q, qo, d.astype(np.float16), do, block_tokens=block_tokens)
    docs16 = [x.astype(np.float16).astype(np.float64) for x in docs]
    np.testing.assert_allclose(half, _loop_maxsim(queries, docs16), rtol=1e-4, atol=1e-4)


def _build(path, n: int = 40, segments: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    docs = {}
    with create(path, IndexConfig(dim=DIM, dtype="float32")) as writer:
        for s in range(segments):
            ids = [f"d{s}-{i}" for i in range(n)]
            vecs = [
                rng.standard_normal((int(t), DIM)).astype(np.float32) for t in rng.integers(1, 9, n)
            ]
            writer.add(
                ids,
                vecs,
                metadata=pa.table(
                    {
                        "year": [2000 + i for i in range(n)],
                        "text": [f"page {i}" for i in range(n)],
                        "image": [bytes([i]) * 50 for i in range(n)],
                    }
                ),
            )
            writer.commit()
            docs.update(zip(ids, vecs, strict=True))
    return Index.open(path), docs


def test_take_sets_picks_sets_in_order() -> None:
    sets = [np.full((t, 2), i, np.float32) for i, t in enumerate([2, 1, 3, 2])]
    flat, offsets = _flat(sets)
    got, got_offsets = take_sets(flat, offsets, np.array([3, 0, 3]))
    assert got_offsets.tolist() == [0, 2, 4, 6]
    assert got[:, 0].tolist() == [3, 3, 0, 0, 3, 3]


def test_batched_rescoring_equals_per_query_scoring_and_reads_each_segment_once(
    tmp_path, monkeypatch
) -> None:
    index, docs = _build(tmp_path / "idx")
    rng = np.random.default_rng(1)
    queries = [rng.standard_normal((int(t), DIM)).astype(np.float32) for t in (2, 4, 3, 1, 5)]
    flat, offsets = _flat(queries)
    cands = first_stage(index, first_stage_queries(index, flat, offsets), 25, [None] * 3)
    calls: list[int] = []
    original = Index.vectors
    monkeypatch.setattr(
        Index,
        "vectors",
        lambda self, s, rows, **kw: calls.append(s) or original(self, s, rows, **kw),
    )
    got = rescore(index, flat, offsets, cands)
    assert sorted(calls) == [0, 1, 2]  # one read per segment for the whole batch
    for q, query in enumerate(queries):
        for c in range(cands.segments.shape[1]):
            doc_id = index.segments[cands.segments[q, c]].doc_ids[cands.rows[q, c]]
            want = _loop_maxsim([query], [docs[doc_id]])[0, 0]
            assert got[q, c] == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_padded_candidates_stay_nan_and_top_k_pads() -> None:
    doc_ids = np.array([["b", "a", None], ["c", None, None]], dtype=object)
    keys = np.array([[1.0, 1.0, np.nan], [0.5, np.nan, np.nan]])
    assert top_k(doc_ids, keys, 3).tolist() == [[1, 0, -1], [0, -1, -1]]
    cands = Candidates(np.full((1, 2), -1), np.full((1, 2), -1), np.full((1, 2), -np.inf))
    assert not cands.valid.any()


def test_search_equals_brute_force_across_segments(tmp_path) -> None:
    index, docs = _build(tmp_path / "idx")
    rng = np.random.default_rng(2)
    queries = [rng.standard_normal((3, DIM)).astype(np.float32) for _ in range(6)]
    result = Retriever(index).search_embeddings(queries, k=10, candidates=len(docs))
    ids = sorted(docs)
    exact = _loop_maxsim(queries, [docs[i] for i in ids])
    for q in range(len(queries)):
        order = np.lexsort((np.array(ids), -exact[q]))[:10]
        assert list(result.doc_ids[q]) == [ids[j] for j in order]
        np.testing.assert_allclose(result.maxsim_scores[q], exact[q, order], rtol=1e-5)


def _count_reads(monkeypatch) -> list[list[str] | None]:
    """The columns of every Parquet read of metadata (whole-file or pinned-file reads)."""
    reads: list[list[str] | None] = []
    read_table, read_file = pq.read_table, pq.ParquetFile.read

    def counted_table(path, columns=None, **kw):
        reads.append(columns)
        return read_table(path, columns=columns, **kw)

    def counted_file(self, columns=None, **kw):
        reads.append(columns)
        return read_file(self, columns=columns, **kw)

    monkeypatch.setattr(pq, "read_table", counted_table)
    monkeypatch.setattr(pq.ParquetFile, "read", counted_file)
    return reads


def test_where_reads_metadata_once_per_segment_without_page_content(tmp_path, monkeypatch) -> None:
    index, _ = _build(tmp_path / "idx")
    reads = _count_reads(monkeypatch)
    result = Retriever(index).search_embeddings(
        [np.ones((2, DIM), np.float32)], k=5, where="year >= 2038"
    )
    assert len(reads) == 3, reads  # one per segment
    assert all(set(c) == {"doc_id", "year"} for c in reads)
    assert {d.split("-")[1] for d in result.doc_ids[0]} <= {"38", "39"}


def test_read_pages_reads_text_and_image_only_once_per_segment(tmp_path, monkeypatch) -> None:
    index, _ = _build(tmp_path / "idx")
    reads = _count_reads(monkeypatch)
    pages = read_pages(index, ["d0-3", "d0-5", "d2-7", "d0-3"])
    assert sorted(reads) == [["text", "image"], ["text", "image"]]
    assert pages["d0-5"].text == "page 5" and pages["d2-7"].image == bytes([7]) * 50


def test_run_dict_keeps_query_ids_and_leaves_out_missing_entries() -> None:
    nan = np.nan
    result = SearchResult(
        ["q7", "q9"],
        np.array([["a", "b"], ["c", None]], dtype=object),
        np.array([[2.0, 1.5], [0.25, nan]], dtype=np.float32),
        np.full((2, 2), nan, np.float32),
        np.full((2, 2), nan, np.float32),
    )
    assert result.to_run() == {"q7": {"a": 2.0, "b": 1.5}, "q9": {"c": 0.25}}
    assert result.to_arrow().num_rows == 3
