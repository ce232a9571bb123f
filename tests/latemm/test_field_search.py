"""Searching a multi-field index (``latemm.field_search``): what rank fusion does with pages a
BM25 field did not match (#30 B10, P8), run through the CLI as the issue's script runs it."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

N = 80
WORDS = (
    "revenue profit growth market climate carbon energy solar policy budget tax school model "
    "data image report bank loan"
).split()


@pytest.fixture(scope="module")
def emb_bm25(tmp_path_factory):
    """The issue's corpus (80 pages here, 200 there; 20 random words and 3-8 random 16-d
    vectors each) in one index with an ``emb`` (precomputed multi-vector) and a ``bm25`` field."""
    from latemm.cli import main

    root = tmp_path_factory.mktemp("b10")
    r, g = random.Random(0), np.random.default_rng(0)
    ids = [f"d{i:05d}" for i in range(N)]
    vectors = [g.standard_normal((r.randint(3, 8), 16)).astype(np.float32) for _ in ids]
    texts = [" ".join(r.choice(WORDS) for _ in range(20)) for _ in ids]
    corpus = root / "c.parquet"
    pq.write_table(
        pa.table({"doc_id": ids, "text": texts, "embedding": [v.tolist() for v in vectors]}),
        corpus,
    )
    idx = root / "idx"
    fields = ["--field", "emb=embedding:embedding", "--field", "bm25=bm25"]
    assert main(["index", str(corpus), "--index", str(idx), *fields, "--quiet"]) == 0
    return root, idx


def _queries(root, texts):
    g = np.random.default_rng(1)
    path = root / f"q{len(texts)}-{abs(hash(tuple(texts)))}.parquet"
    embeddings = [g.standard_normal((4, 16)).astype(np.float32).tolist() for _ in texts]
    pq.write_table(
        pa.table(
            {
                "query_id": [f"q{i}" for i in range(len(texts))],
                "text": texts,
                "embedding": embeddings,
            }
        ),
        path,
    )
    return path


def _ranks(scores, doc_ids) -> np.ndarray:
    """1-based rank of each score, best first, ties by doc_id (as the fusion ranks)."""
    order = np.lexsort((doc_ids.to_numpy().astype(str), -scores.to_numpy()))
    out = np.empty(order.size)
    out[order] = np.arange(1, order.size + 1)
    return out


def _search(idx, queries, out, *flags):
    from latemm.cli import main

    assert main(["search", str(idx), str(queries), "--out", str(out), "--quiet", *flags]) == 0
    return pq.read_table(out).to_pandas()


def test_rrf_gives_nothing_for_a_bm25_field_that_matched_no_page(emb_bm25) -> None:
    """#30 B10: a query of stop words scores every page 0 in BM25; the fused top 10 is emb's."""
    root, idx = emb_bm25
    queries = _queries(root, ["the of and is a"])
    fused = _search(idx, queries, root / "fused.parquet", "--fusion", "rrf")
    alone = _search(idx, queries, root / "emb.parquet", "--fields", "emb")
    assert fused.doc_id.tolist() == alone.doc_id.tolist()
    assert (fused.score_bm25 == 0).all()
    # Each page's fused score is its emb rank's alone: 1 / (60 + rank).
    np.testing.assert_allclose(fused.score, 1 / (60 + np.arange(1, 11)), rtol=1e-6)


def test_rrf_ranks_only_the_pages_bm25_matched(emb_bm25) -> None:
    """Pages with a BM25 score of 0 get no BM25 contribution in a query that matches some."""
    root, idx = emb_bm25
    queries = _queries(root, ["solar"])
    flags = ("--fusion", "rrf", "--k", str(N), "--candidates", str(N))
    fused = _search(idx, queries, root / "fused-solar.parquet", *flags)
    matched = (fused.score_bm25 > 0).to_numpy()
    want = 1 / (60 + _ranks(fused.score_emb, fused.doc_id))
    bm25_ranks = _ranks(fused.score_bm25[matched], fused.doc_id[matched])
    want[matched] += 1 / (60 + bm25_ranks)
    assert 0 < matched.sum() < len(fused) == N
    np.testing.assert_allclose(fused.score, want, rtol=1e-5)


@pytest.mark.parametrize("fusion", ["rrf", "weighted"])
def test_bm25_only_query_matching_nothing_returns_no_pages(emb_bm25, fusion) -> None:
    """#30 P8: no arbitrary pages in doc_id order with a positive score; the query that does
    match still gets its matches, all with a positive BM25 score."""
    root, idx = emb_bm25
    queries = _queries(root, ["the of and is a", "zebra", "carbon"])
    run = _search(
        idx, queries, root / f"bm25-{fusion}.parquet", "--fields", "bm25", "--fusion", fusion
    )
    assert set(run.query_id) == {"q2"}
    assert len(run) == 10 and (run.score_bm25 > 0).all()
