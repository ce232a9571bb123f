"""The float16 fast pass (``maxsim_half``) stays within its proven bound of float64 and of the
float32 kernel for every storage codec, and rescoring with it (``rescore(k=...)``) returns
exactly the float32 kernel's top k, on near ties and batched or one query at a time."""

from __future__ import annotations

import numpy as np
import pytest

from index_store import Index, IndexConfig, codecs, create
from latemm.ranking import scoring
from latemm.ranking.scoring import (
    half_accumulates_in_float32,
    int8_products_are_exact,
    maxsim,
    maxsim_half,
    may_reach_top,
)
from latemm.retrieval.retriever import Candidates, gather, rescore, top_k

DIM = 128


def _flat(sets: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sets])]).astype(np.int64)
    return np.concatenate(sets), offsets


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _adversarial(rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Queries whose components sit just below a float16 rounding midpoint (the rounding error
    is as large as it gets) and documents with a token along the sign of that error, so the
    float16 query misses the most it can; plus huge, tiny (subnormal) and ordinary pages."""
    q16 = _unit(rng, 24).astype(np.float16)
    ulp = np.spacing(np.abs(q16)).astype(np.float32)
    sign = rng.choice([-1.0, 1.0], size=q16.shape).astype(np.float32)
    query = q16.astype(np.float32) + sign * ulp * np.float32(0.499)
    aligned = np.sign(query - query.astype(np.float16).astype(np.float32)) / np.sqrt(DIM)
    pages = [
        np.concatenate([aligned[:3], _unit(rng, 50)]).astype(np.float32),
        (_unit(rng, 1030) * np.float32(300.0)),
        (_unit(rng, 7) * np.float32(1e-5)),
        _unit(rng, 1030),
        _unit(rng, 1),
        np.concatenate([_unit(rng, 200), aligned[10:11]]).astype(np.float32),
    ]
    return [query[:20], query[20:], _unit(rng, 28)], pages


def _stored(vectors: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(float32, float16) decodings of ``vectors`` stored as ``dtype``."""
    codebook = codecs.train(vectors, dtype) if codecs.is_trained(dtype) else None
    codes, scales = codecs.encode(vectors, dtype, codebook)
    wide = codecs.decode(codes, scales, dtype, DIM, codebook)
    half = codecs.decode(codes, scales, dtype, DIM, codebook, out=np.float16)
    return wide, half


def _check_bound(q, qo, wide, do, fast, bound, tight: float) -> None:
    """``fast`` is within ``bound`` of float64 MaxSim and of the float32 kernel over the
    decoded ``wide`` vectors, and the bound stays under ``tight`` on the unit-vector pages."""
    kernel = maxsim(q, qo, wide, do).astype(np.float64)
    q64, d64 = q.astype(np.float64), wide.astype(np.float64)
    exact = np.array(
        [
            [
                (q64[a:b] @ d64[c:e].T).max(axis=1).sum()
                for c, e in zip(do[:-1], do[1:], strict=True)
            ]
            for a, b in zip(qo[:-1], qo[1:], strict=True)
        ]
    )
    assert fast.shape == bound.shape == exact.shape and np.isfinite(bound).all()
    assert (np.abs(fast - exact) <= bound).all(), np.max(np.abs(fast - exact) / bound)
    assert (np.abs(fast - kernel) <= bound).all(), np.max(np.abs(fast - kernel) / bound)
    unit = np.array([i not in (1, 2) for i in range(len(do) - 1)])
    assert (bound[:, unit] <= tight).all(), bound[:, unit].max()


def _bound_case(dtype: str, seed: int = 3):
    rng = np.random.default_rng(seed)
    queries, pages = _adversarial(rng)
    pages += [_unit(rng, int(t)) for t in rng.integers(1, 300, 12)]
    if codecs.is_trained(dtype):  # enough vectors to train a codebook on
        pages += [_unit(rng, 1030)]
    return _flat(queries), _flat(pages)


@pytest.mark.parametrize("dtype", ["float16", "float32", "int8", "binary", "pq1"])
def test_fast_pass_is_within_its_bound_of_float64_and_of_the_float32_kernel(dtype) -> None:
    (q, qo), (d, do) = _bound_case(dtype)
    wide, half = _stored(d, dtype)
    fast, bound = maxsim_half(q, qo, half, do, exact_half=dtype == "float16")
    # Tight enough to use: about 1% of these unit-vector scores (6 to 9).
    _check_bound(q, qo, wide, do, fast, bound, tight=0.1)
    # Scores alone (the refine copy's ranking pass): the same scores, no bound claimed.
    alone, none = maxsim_half(q, qo, half, do, exact_half=dtype == "float16", bounds=False)
    np.testing.assert_array_equal(alone, fast)
    assert np.isinf(none).all()


def test_int8_codes_read_in_place_are_within_their_bound() -> None:
    """int8 storage is not decoded: the query is split into two int8 parts, multiplied with
    the codes exactly (int32), and each similarity is scaled before the maximum."""
    assert int8_products_are_exact()
    (q, qo), (d, do) = _bound_case("int8")
    codes, scales = codecs.encode(d, "int8")
    wide = codecs.decode(codes, scales, "int8", DIM)
    fast, bound = maxsim_half(q, qo, codes, do, scales=scales)
    # Much tighter than the float16 pass: the split query is within ~3e-5 of the query.
    _check_bound(q, qo, wide, do, fast, bound, tight=0.01)
    half_fast, half_bound = maxsim_half(q, qo, wide.astype(np.float16), do, exact_half=False)
    assert np.abs(fast - half_fast).max() <= half_bound.max()
    assert np.median(bound) < 0.1 * np.median(half_bound)


@pytest.mark.parametrize("in_place_from", [1, 512, 10**9])
def test_int8_pages_multiplied_in_place_score_as_pages_copied_into_blocks(
    monkeypatch, in_place_from
) -> None:
    """Long pages are multiplied where they lie, one product per page into a shared buffer,
    short ones copied into blocks: either way, every page of any length (one block mixes
    lengths, the shorter padded), with more query tokens than one product takes, gets the
    same fast score and bound, and the scores keep their bound to the float32 kernel."""
    rng = np.random.default_rng(11)
    pages = [_unit(rng, int(t)) for t in (1030, 5, 700, 1030, 513, 40, 1030, 511, 2)]
    queries = [_unit(rng, 40), _unit(rng, 3), _unit(rng, 33)]  # > _INT8_GROUP tokens
    (q, qo), (d, do) = _flat(queries), _flat(pages)
    codes, scales = codecs.encode(d, "int8")
    rows = np.array([3, 0, 8, 2, 6, 4])
    want = maxsim_half(q, qo, codes, do, scales=scales, rows=rows, block_tokens=4096)
    monkeypatch.setattr(scoring, "_INT8_IN_PLACE_TOKENS", in_place_from)
    got = maxsim_half(q, qo, codes, do, scales=scales, rows=rows, block_tokens=4096)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    wide = codecs.decode(codes, scales, "int8", DIM)
    picked, picked_offsets = _flat([wide[do[i] : do[i + 1]] for i in rows])
    _check_bound(q, qo, picked, picked_offsets, got[0], got[1], tight=0.01)


def test_int8_pass_gives_a_non_finite_query_token_an_infinite_bound() -> None:
    rng = np.random.default_rng(8)
    codes, scales = codecs.encode(_unit(rng, 20), "int8")
    query = _unit(rng, 3)
    query[1, 5] = np.nan
    fast, bound = maxsim_half(
        query, np.array([0, 1, 3]), codes, np.array([0, 7, 20]), scales=scales
    )
    assert np.isfinite(bound[0]).all() and np.isinf(bound[1]).all()


def test_fast_pass_bound_is_attained_to_within_a_small_factor() -> None:
    """A query token just below float16 rounding midpoints against a page token along its
    rounding error makes the fast pass miss by most of its bound: the bound is not slack."""
    rng = np.random.default_rng(4)
    queries, _ = _adversarial(rng)
    for token in queries[0][:3]:
        query = token[None]  # (1, d)
        error = query - query.astype(np.float16).astype(np.float32)
        page = (np.sign(error) / np.sqrt(DIM)).astype(np.float16)  # (1, d)
        one = np.array([0, 1])
        fast, bound = maxsim_half(query, one, page, one)
        kernel = maxsim(query, one, page, one)
        assert 0.5 * bound[0, 0] <= abs(fast[0, 0] - kernel[0, 0]) <= bound[0, 0]


def test_float16_products_accumulate_in_float32_on_this_backend() -> None:
    # The bound assumes it; rescore falls back to the float32 kernel alone when it fails.
    assert half_accumulates_in_float32()


def test_may_reach_top_keeps_every_candidate_that_could_enter_or_tie() -> None:
    scores = np.array([[10.0, 9.0, 8.5, 7.0, 1.0], [3.0, 2.0, 0.0, 0.0, 0.0]])
    bounds = np.array([[0.1, 0.2, 0.3, 0.1, np.inf], [0.5, 0.5, 0.0, 0.0, 0.0]])
    valid = np.array([[True] * 5, [True, True, False, False, False]])
    got = may_reach_top(scores, bounds, valid, 2)
    # lam = min(10 - 0.1, 9 - 0.2) = 8.8: 8.5 + 0.3 reaches it (a tie is kept), 7.1 does not,
    # an infinite bound always does; a query with at most k candidates keeps them all.
    assert got.tolist() == [[True, True, True, False, True], [True, True, False, False, False]]


def _index(tmp_path, dtype: str, docs: list[np.ndarray]) -> Index:
    half = len(docs) // 2
    with create(tmp_path / "idx", IndexConfig(dim=DIM, dtype=dtype)) as writer:
        writer.add([f"d{i:03d}" for i in range(half)], docs[:half])
        writer.commit()
        writer.add([f"d{i:03d}" for i in range(half, len(docs))], docs[half:])
        writer.commit()
    return Index.open(tmp_path / "idx")


def _near_ties(rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """Pages a float16 pass cannot tell apart (one value moved by a float32 ulp, exact copies)
    among ordinary ones; the query is made of the shared page's tokens so they lead."""
    base = _unit(rng, 40)
    twins = []
    for i in range(8):
        page = base.copy()
        page[i % 3, i] = np.nextafter(page[i % 3, i], np.float32(2.0 * (i % 2) - 1.0))
        twins.append(page)
    docs = [_unit(rng, int(t)) for t in rng.integers(5, 60, 30)]
    for i, page in enumerate(twins + [base, base]):
        docs.insert(3 * i + 1, page)
    return docs, base[rng.choice(40, 12, replace=False)] + 0.01 * _unit(rng, 12)


def _top(index: Index, cands: Candidates, scores: np.ndarray, k: int) -> tuple[list, np.ndarray]:
    from latemm.retrieval.retriever import doc_ids_of

    ids = doc_ids_of(index, cands)
    picks = top_k(ids, scores, k)
    return gather(ids, picks, fill=None).tolist(), gather(scores, picks)


@pytest.mark.parametrize("dtype", ["float16", "float32", "int8"])
def test_rescore_with_k_returns_the_float32_kernels_top_k_on_near_ties(tmp_path, dtype) -> None:
    rng = np.random.default_rng(5)
    docs, query = _near_ties(rng)
    index = _index(tmp_path, dtype, docs)
    rows = np.concatenate([np.arange(s.num_docs) for s in index.segments])
    segs = np.concatenate([np.full(s.num_docs, i) for i, s in enumerate(index.segments)])
    cands = Candidates(segs[None], rows[None], np.zeros((1, rows.size), np.float32))
    flat, offsets = query, np.array([0, len(query)])
    every = rescore(index, flat, offsets, cands)
    for k in (1, 3, 10):
        fast = rescore(index, flat, offsets, cands, k=k)
        want_ids, want_scores = _top(index, cands, every, k)
        got_ids, got_scores = _top(index, cands, fast, k)
        assert got_ids == want_ids
        np.testing.assert_array_equal(got_scores, want_scores)
        # The fast pass did spare work: some candidates kept their float16 score.
        assert (fast != every).any()


def test_rescore_with_k_batched_equals_one_query_at_a_time(tmp_path) -> None:
    rng = np.random.default_rng(6)
    docs, query = _near_ties(rng)
    index = _index(tmp_path, "float16", docs)
    queries = [query, _unit(rng, 9), docs[4][:5].copy(), _unit(rng, 3)]
    flat, offsets = _flat(queries)
    n0 = index.segments[0].num_docs
    segments = rng.integers(0, 2, (4, 30))
    rows = np.where(segments == 0, rng.integers(0, n0, (4, 30)), rng.integers(0, 19, (4, 30)))
    segments[2, 5:], rows[2, 5:] = -1, -1  # fewer candidates than k
    segments[3], rows[3] = -1, -1  # and none
    cands = Candidates(segments, rows, np.zeros((4, 30), np.float32))
    batched = rescore(index, flat, offsets, cands, k=6)
    assert np.isnan(batched[3]).all() and np.isnan(batched[2, 5:]).all()
    for q in range(4):
        one = Candidates(segments[q : q + 1], rows[q : q + 1], cands.scores[q : q + 1])
        alone = rescore(index, queries[q], np.array([0, len(queries[q])]), one, k=6)
        got_ids, got = _top(index, one, batched[q : q + 1], 6)
        want_ids, want = _top(index, one, alone, 6)
        assert got_ids == want_ids
        np.testing.assert_array_equal(got, want)
        every = rescore(index, queries[q], np.array([0, len(queries[q])]), one)
        np.testing.assert_array_equal(got, _top(index, one, every, 6)[1])


def test_rescore_with_k_on_disjoint_candidates_scores_each_query_against_its_own(tmp_path) -> None:
    # Three queries with disjoint candidates in one segment: scoring all against the union
    # would triple the work, so each query is scored against its own pages only.
    rng = np.random.default_rng(7)
    docs, query = _near_ties(rng)
    index = _index(tmp_path, "float16", docs)
    queries = [query, docs[1][:6].copy(), _unit(rng, 4)]
    flat, offsets = _flat(queries)
    rows = rng.permutation(index.segments[0].num_docs)[:18].reshape(3, 6)
    cands = Candidates(np.zeros_like(rows), rows, np.zeros(rows.shape, np.float32))
    batched = rescore(index, flat, offsets, cands, k=2)
    every = rescore(index, flat, offsets, cands)
    for q in range(3):
        one = Candidates(cands.segments[q : q + 1], rows[q : q + 1], cands.scores[q : q + 1])
        alone = rescore(index, queries[q], np.array([0, len(queries[q])]), one, k=2)
        want_ids, want = _top(index, one, every[q : q + 1], 2)
        for got_scores in (batched[q : q + 1], alone):
            got_ids, got = _top(index, one, got_scores, 2)
            assert got_ids == want_ids
            np.testing.assert_array_equal(got, want)


def test_int8_bound_is_attained_to_within_a_small_factor() -> None:
    """A page token along the sign of the query's int8 split error (its codes are all +-127,
    exact) makes the in-place pass miss by a large part of its bound."""
    rng = np.random.default_rng(4)
    one = np.array([0, 1])
    ratios = []
    for query in _unit(rng, 3):
        query = query[None]  # (1, d)
        split = scoring._Int8Query(query)
        parts = split.codes.numpy().astype(np.float64)
        error = query - split.unit.numpy() * (128.0 * parts[:1] + parts[1:])
        codes, scales = codecs.encode((np.sign(error) / np.sqrt(DIM)).astype(np.float32), "int8")
        fast, bound = maxsim_half(query, one, codes, one, scales=scales)
        wide = codecs.decode(codes, scales, "int8", DIM).astype(np.float64)
        exact = float((query.astype(np.float64) @ wide[0])[0])
        ratios.append(abs(fast[0, 0] - exact) / bound[0, 0])
    assert max(ratios) <= 1.0 and min(ratios) >= 0.4, ratios


def test_int8_batch_sharing_its_candidates_gives_the_same_top_k_as_one_query_at_a_time(
    tmp_path,
) -> None:
    # 6 x 12 query tokens against the same pages: the batch decodes them to float16 once
    # (``_shared_widely``); each query alone multiplies the int8 codes in place.
    from latemm.retrieval.retriever import _shared_widely

    rng = np.random.default_rng(9)
    docs, query = _near_ties(rng)
    index = _index(tmp_path, "int8", docs)
    queries = [query] + [docs[3 * i][:12].copy() for i in range(5)]
    flat, offsets = _flat(queries)
    rows = np.concatenate([np.arange(s.num_docs) for s in index.segments])
    segs = np.concatenate([np.full(s.num_docs, i) for i, s in enumerate(index.segments)])
    cands = Candidates(
        np.tile(segs, (6, 1)), np.tile(rows, (6, 1)), np.zeros((6, rows.size), np.float32)
    )
    from latemm.retrieval.retriever import _distinct_pages

    segs, _, position = _distinct_pages(cands, cands.valid)
    assert _shared_widely(position >= 0, segs.size, offsets)
    batched = rescore(index, flat, offsets, cands, k=5)
    for q in range(6):
        one = Candidates(cands.segments[q : q + 1], cands.rows[q : q + 1], cands.scores[q : q + 1])
        query_q = queries[q]
        alone = rescore(index, query_q, np.array([0, len(query_q)]), one, k=5)
        every = rescore(index, query_q, np.array([0, len(query_q)]), one)
        want_ids, want = _top(index, one, every, 5)
        for got_scores in (batched[q : q + 1], alone):
            got_ids, got = _top(index, one, got_scores, 5)
            assert got_ids == want_ids
            np.testing.assert_array_equal(got, want)


def test_int8_pass_over_many_chunks_sharing_one_read_buffer_scores_as_one_chunk(
    tmp_path, monkeypatch
) -> None:
    # Candidates' int8 codes are read into a buffer each thread reuses; with one page per
    # chunk every read overwrites the last, which must not change a single fast score.
    from latemm.retrieval import retriever

    rng = np.random.default_rng(10)
    docs, query = _near_ties(rng)
    docs = [d[: 5 + i % 7] for i, d in enumerate(docs)]  # pages of several lengths
    index = _index(tmp_path, "int8", docs)
    rows = np.concatenate([np.arange(s.num_docs) for s in index.segments])
    segs = np.concatenate([np.full(s.num_docs, i) for i, s in enumerate(index.segments)])
    cands = Candidates(segs[None], rows[None], np.zeros((1, rows.size), np.float32))
    offsets = np.array([0, len(query)])
    whole = rescore(index, query, offsets, cands, k=5)
    monkeypatch.setattr(retriever, "_FAST_CHUNK_BYTES", 1)
    chunked = rescore(index, query, offsets, cands, k=5)
    np.testing.assert_array_equal(chunked, whole)
    got_ids, got = _top(index, cands, chunked, 5)
    want_ids, want = _top(index, cands, rescore(index, query, offsets, cands), 5)
    assert got_ids == want_ids
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("in_place_tokens", [0, 1 << 30])
@pytest.mark.parametrize("shared", [False, True])
def test_fast_pass_over_many_small_float16_segments_in_place_or_gathered(
    tmp_path, monkeypatch, in_place_tokens, shared
) -> None:
    # Six segments of a float16 index; each query's candidates are read in place per segment
    # (threshold 0) or copied across segments into shared chunks, for a batch whose queries
    # have their own candidates (one query at a time) or the same ones (all at once).
    from latemm.retrieval import retriever

    rng = np.random.default_rng(12)
    docs, query = _near_ties(rng)
    with create(tmp_path / "idx", IndexConfig(dim=DIM, dtype="float16")) as writer:
        for part in range(6):
            chunk = range(part * len(docs) // 6, (part + 1) * len(docs) // 6)
            writer.add([f"d{i:03d}" for i in chunk], [docs[i] for i in chunk])
            writer.commit()
    index = Index.open(tmp_path / "idx")
    assert len(index.segments) == 6
    monkeypatch.setattr(retriever, "_HALF_IN_PLACE_TOKENS", in_place_tokens)
    rows = np.concatenate([np.arange(s.num_docs) for s in index.segments])
    segs = np.concatenate([np.full(s.num_docs, i) for i, s in enumerate(index.segments)])
    # Shared: every query has every page; else each has its own third of them.
    order = np.arange(rows.size) if shared else rng.permutation(rows.size)
    picks = [order] * 3 if shared else np.array_split(order[: rows.size // 3 * 3], 3)
    cands = Candidates(
        np.stack([segs[p] for p in picks]),
        np.stack([rows[p] for p in picks]),
        np.zeros((3, len(picks[0])), np.float32),
    )
    queries = [query, docs[4][:9].copy(), _unit(rng, 5)]
    flat, offsets = _flat(queries)
    distinct = np.unique(np.concatenate(picks)).size
    assert retriever._all_at_once(cands.valid, distinct, np.diff(offsets)) == shared
    every = rescore(index, flat, offsets, cands)
    fast, bounds = retriever._fast_scores(index, flat, offsets, cands)
    assert np.isfinite(bounds).all()
    assert (np.abs(fast.astype(np.float64) - every) <= bounds).all()
    got = rescore(index, flat, offsets, cands, k=5)
    for q in range(3):
        one = Candidates(cands.segments[q : q + 1], cands.rows[q : q + 1], cands.scores[q : q + 1])
        want_ids, want = _top(index, one, every[q : q + 1], 5)
        got_ids, got_scores = _top(index, one, got[q : q + 1], 5)
        assert got_ids == want_ids
        np.testing.assert_array_equal(got_scores, want)


@pytest.mark.parametrize("page_max", [False, True])
@pytest.mark.parametrize("rows", [False, True])
def test_pages_of_many_lengths_multiplied_unpadded_are_within_their_bound(
    monkeypatch, page_max, rows
) -> None:
    """Text pages (many lengths) skip the padded blocks: one product over their tokens as they
    lie (or gathered, for ``rows``), each page's maximum over its own columns; within the bound,
    as the padded path is, with stored or computed page magnitudes."""
    (q, qo), (d, do) = _bound_case("float16")
    half = d.astype(np.float16)
    wide = half.astype(np.float32)
    n = do.size - 1
    picked = np.arange(n)[::-1].copy() if rows else None  # not consecutive: gathered
    stored = scoring.page_magnitudes(half, do) if page_max else None
    calls = _spy(monkeypatch, "_ragged_maxima")
    fast, bound = maxsim_half(q, qo, half, do, rows=picked, page_max=stored)
    assert calls  # the case's pages (1 to 1,030 tokens) take the unpadded path
    order = picked if rows else np.arange(n)
    _check_bound(q, qo, wide, do, fast[:, np.argsort(order)], bound[:, np.argsort(order)], 0.1)
    monkeypatch.setattr(scoring, "_MAX_PADDING_WASTE", 2.0)  # the padded path, for reference
    padded, padded_bound = maxsim_half(q, qo, half, do, rows=picked, page_max=stored)
    assert len(calls) == 1
    assert (np.abs(fast - padded) <= bound + padded_bound).all()


def test_search_over_text_pages_unpadded_equals_the_padded_path_and_brute_force(
    tmp_path, monkeypatch
) -> None:
    """The shape-picked rescoring of short text pages returns exactly the top k ids and scores
    of the padded path and of brute force (float64 products rounded to float32)."""
    from latemm.retrieval.retriever import Retriever

    rng = np.random.default_rng(11)
    lengths = rng.integers(3, 120, 300)
    docs = [_unit(rng, int(t)) for t in lengths]
    ids = [f"d{i:03d}" for i in range(len(docs))]
    with create(tmp_path / "idx", IndexConfig(dim=DIM)) as writer:  # float16 storage
        for a in range(0, len(docs), 100):
            writer.add(ids[a : a + 100], docs[a : a + 100])
            writer.commit()
    index = Index.open(tmp_path / "idx")
    queries = [_unit(rng, int(t)) for t in (5, 12, 31)]
    queries.append(docs[7][:9].copy())  # a query whose answer is clear
    unpadded = Retriever(index).search_embeddings(queries, k=10, candidates=200)
    monkeypatch.setattr(scoring, "_MAX_PADDING_WASTE", 2.0)
    padded = Retriever(index).search_embeddings(queries, k=10, candidates=200)
    np.testing.assert_array_equal(unpadded.doc_ids, padded.doc_ids)
    np.testing.assert_array_equal(unpadded.scores, padded.scores)
    everything = Retriever(index).search_embeddings(queries, k=10, candidates=len(docs))
    stored = [x.astype(np.float16).astype(np.float32) for x in docs]
    d, do = _flat(stored)
    for q, query in enumerate(queries):
        exact = maxsim(query, np.array([0, len(query)]), d, do, float64=True)[0]
        cands = set(unpadded.doc_ids[q])
        best = np.lexsort((np.array(ids), -exact))[:10]
        if cands == {ids[j] for j in best}:  # the first stage found the exact top 10
            assert list(unpadded.doc_ids[q]) == [ids[j] for j in best]
            np.testing.assert_array_equal(unpadded.scores[q], exact[best])
        np.testing.assert_array_equal(everything.doc_ids[q], [ids[j] for j in best])
        np.testing.assert_array_equal(everything.scores[q], exact[best])


def _long_pages(rng: np.random.Generator) -> list[np.ndarray]:
    """Long text-like pages of 256 to 2,000 tokens (one of each end), two exact copies of one
    page (a tie) and one page that copies another but for one value moved by a float32 ulp."""
    lengths = [scoring.LONG_PAGE_TOKENS, 2000, *rng.integers(300, 1200, 10).tolist()]
    pages = [_unit(rng, int(t)) for t in lengths]
    twin = pages[3].copy()
    twin[5, 7] = np.nextafter(twin[5, 7], np.float32(2.0))
    return [*pages, pages[2].copy(), pages[2].copy(), twin]


def test_maxsim_pages_equals_float64_brute_force_on_ragged_pages() -> None:
    """Pages given one by one (1 token to 2,000, copies among them) score exactly as the
    float64 kernel scores them in one flat array, in float16 and float32 storage."""
    rng = np.random.default_rng(21)
    pages = [_unit(rng, 1), *_long_pages(rng), _unit(rng, 2)]
    queries, offsets = _flat([_unit(rng, 20), _unit(rng, 1), pages[5][:9] + 0.01])
    for dtype in (np.float16, np.float32):
        stored = [p.astype(dtype) for p in pages]
        d, do = _flat(stored)
        views = [d[a:b] for a, b in zip(do[:-1], do[1:], strict=True)]
        got = scoring.maxsim_pages(queries, offsets, views)
        want = maxsim(queries, offsets, d, do, float64=True)
        np.testing.assert_array_equal(got, want)
        assert got[:, 13].tolist() == got[:, 14].tolist()  # the two copies tie exactly


@pytest.mark.parametrize("page_max", [False, True])
@pytest.mark.parametrize("rows", [False, True])
def test_long_pages_are_multiplied_in_place_within_their_bound(monkeypatch, page_max, rows) -> None:
    """Pages of LONG_PAGE_TOKENS and more take the page-by-page path (no copy, no padding);
    their fast scores are within the bound of float64 MaxSim and of the float32 kernel."""
    rng = np.random.default_rng(22)
    pages = _long_pages(rng)
    half = _flat(pages)[0].astype(np.float16)
    do = _flat(pages)[1]
    wide = half.astype(np.float32)
    q, qo = _flat([_unit(rng, 20), _unit(rng, 3), pages[4][10:30] + 0.02])
    n = do.size - 1
    picked = np.arange(n)[::-1].copy() if rows else None
    stored = scoring.page_magnitudes(half, do) if page_max else None
    calls = _spy(monkeypatch, "_page_maxima")
    fast, bound = maxsim_half(q, qo, half, do, rows=picked, page_max=stored)
    assert calls
    order = np.argsort(picked) if rows else np.arange(n)
    _check_bound(q, qo, wide, do, fast[:, order], bound[:, order], tight=0.1)


def test_search_over_long_pages_equals_brute_force_over_the_candidates(
    tmp_path, monkeypatch
) -> None:
    """Long float16 pages (read in place by both passes) beside a segment of one-token pages:
    the top k ids and scores are brute force's (float64 products rounded to float32, ties by
    doc_id) over all pages, and over a subset of candidates smaller than k."""
    from latemm.retrieval import retriever
    from latemm.retrieval.retriever import Retriever

    rng = np.random.default_rng(23)
    docs = _long_pages(rng) + _long_pages(rng) + [_unit(rng, 1) for _ in range(6)]
    ids = [f"d{i:03d}" for i in range(len(docs))]
    with create(tmp_path / "idx", IndexConfig(dim=DIM)) as writer:  # float16 storage
        for a, b in ((0, 15), (15, 30), (30, len(docs))):
            writer.add(ids[a:b], docs[a:b])
            writer.commit()
    index = Index.open(tmp_path / "idx")
    queries = [_unit(rng, 20), docs[2][:12] + 0.001, docs[31][:1].copy(), docs[20][40:60].copy()]
    d, do = _flat([x.astype(np.float16).astype(np.float32) for x in docs])
    calls: list[str] = []
    for module, name in ((scoring, "_page_maxima"), (retriever, "maxsim_pages")):
        inner = getattr(module, name)
        monkeypatch.setattr(
            module, name, lambda *a, _f=inner, _n=name, **kw: calls.append(_n) or _f(*a, **kw)
        )
    result = Retriever(index).search_embeddings(queries, k=10, candidates=len(docs))
    # The long pages' fast pass and their exact pass (for a query whose top k are all long).
    assert {"_page_maxima", "maxsim_pages"} <= set(calls)
    for q, query in enumerate(queries):
        exact = maxsim(query, np.array([0, len(query)]), d, do, float64=True)[0]
        best = np.lexsort((np.array(ids), -exact))[:10]
        assert list(result.doc_ids[q]) == [ids[j] for j in best]
        np.testing.assert_array_equal(result.scores[q], exact[best])
    # k larger than the candidates: every candidate is scored exactly.
    flat, offsets = _flat(queries)
    rows = np.concatenate([np.arange(s.num_docs) for s in index.segments])
    segs = np.concatenate([np.full(s.num_docs, i) for i, s in enumerate(index.segments)])
    pick = rng.choice(rows.size, 7, replace=False)
    cands = Candidates(
        np.tile(segs[pick], (len(queries), 1)),
        np.tile(rows[pick], (len(queries), 1)),
        np.zeros((len(queries), pick.size), np.float32),
    )
    got = rescore(index, flat, offsets, cands, k=12)
    every = rescore(index, flat, offsets, cands)
    np.testing.assert_array_equal(got, every)
    for q, query in enumerate(queries):
        exact = maxsim(query, np.array([0, len(query)]), d, do, float64=True)[0]
        np.testing.assert_array_equal(got[q], exact[pick])


@pytest.mark.parametrize("float64", [False, True])
def test_small_maxsim_on_one_thread_equals_the_torch_path_and_a_loop(monkeypatch, float64):
    """Small problems (``_NUMPY_MAX_SIMILARITIES``) are scored on this thread alone: the same
    scores as the blocked torch path, and as a plain loop over the pairs."""
    rng = np.random.default_rng(11)
    q_lengths, d_lengths = [3, 1, 5], [4, 1, 7, 2, 4]
    queries = rng.standard_normal((sum(q_lengths), 16)).astype(np.float32)
    docs = rng.standard_normal((sum(d_lengths), 16)).astype(np.float16)
    qo = np.concatenate([[0], np.cumsum(q_lengths)]).astype(np.int64)
    do = np.concatenate([[0], np.cumsum(d_lengths)]).astype(np.int64)
    small = scoring.maxsim(queries, qo, docs, do, float64=float64)
    monkeypatch.setattr(scoring, "_NUMPY_MAX_SIMILARITIES", 0)
    blocked = scoring.maxsim(queries, qo, docs, do, float64=float64)
    np.testing.assert_allclose(small, blocked, rtol=1e-6, atol=1e-6)
    if float64:
        np.testing.assert_array_equal(small, blocked)
    want = [
        [
            (
                queries[qo[i] : qo[i + 1]].astype(np.float64)
                @ docs[do[j] : do[j + 1]].T.astype(np.float64)
            )
            .max(axis=1)
            .sum()
            for j in range(len(d_lengths))
        ]
        for i in range(len(q_lengths))
    ]
    np.testing.assert_allclose(small, want, rtol=1e-5, atol=1e-5)
    assert small.dtype == np.float32 and small.shape == (3, 5)


def _spy(monkeypatch, name: str) -> list[int]:
    """Count the calls of ``latemm.ranking.scoring.<name>`` (each still runs): one entry per
    call."""
    calls: list[int] = []
    inner = getattr(scoring, name)
    monkeypatch.setattr(scoring, name, lambda *a, **kw: calls.append(1) or inner(*a, **kw))
    return calls


def test_float32_maxsim_is_within_its_bound_of_the_exact_score() -> None:
    """``maxsim_float32``'s scores are within their bounds of float64 MaxSim (and of the
    float32 kernel), on values of very different magnitudes, and the bounds are tight enough
    to prune: far below the gaps between scores."""
    from latemm.ranking.scoring import maxsim_float32

    rng = np.random.default_rng(3)
    for scale in (1e-3, 1.0, 300.0):
        lengths = rng.integers(1, 40, 60)
        docs = (scale * rng.standard_normal((int(lengths.sum()), 48))).astype(np.float32)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        query = rng.standard_normal((7, 48)).astype(np.float32)
        magnitude = np.array(
            [np.abs(docs[a:b]).max() for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
        )
        scores, bounds = maxsim_float32(query, docs, offsets, magnitude)
        exact = np.array(
            [
                (query.astype(np.float64) @ docs[a:b].T.astype(np.float64)).max(1).sum()
                for a, b in zip(offsets[:-1], offsets[1:], strict=True)
            ]
        )
        kernel = maxsim(query, np.array([0, 7]), docs, offsets)[0]
        assert (np.abs(scores - exact) <= bounds).all()
        assert (np.abs(scores.astype(np.float64) - kernel) <= bounds).all()
        assert (bounds < 1e-4 * np.abs(exact).max()).all()


def test_float32_maxsim_split_into_centroids_and_residuals_is_within_its_bound() -> None:
    """PLAID's split (``add``: centroid similarities, ``doc_vectors``: residuals): the score is
    within its bound of float64 MaxSim over the float32 sums centroid + residual, and the
    bound stays tight."""
    from latemm.ranking.scoring import maxsim_float32

    rng = np.random.default_rng(4)
    for scale in (1e-2, 1.0, 50.0):
        centroids = (scale * rng.standard_normal((64, 48))).astype(np.float32)
        lengths = rng.integers(1, 30, 50)
        n = int(lengths.sum())
        ids = rng.integers(0, 64, n)
        residuals = (0.1 * scale * rng.standard_normal((n, 48))).astype(np.float32)
        decoded = centroids[ids] + residuals  # float32 sums, as the codec decodes
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        query = rng.standard_normal((6, 48)).astype(np.float32)
        add = np.ascontiguousarray((query @ centroids.T)[:, ids].T)  # (N, Tq) float32
        magnitude = np.full(50, float(np.abs(centroids).max() + np.abs(residuals).max()))
        scores, bounds = maxsim_float32(query, residuals, offsets, magnitude, add)
        exact = np.array(
            [
                (query.astype(np.float64) @ decoded[a:b].T.astype(np.float64)).max(1).sum()
                for a, b in zip(offsets[:-1], offsets[1:], strict=True)
            ]
        )
        assert (np.abs(scores - exact) <= bounds).all()
        assert (bounds < 1e-4 * np.abs(exact).max()).all()
