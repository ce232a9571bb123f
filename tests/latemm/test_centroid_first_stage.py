"""The centroid first stage (``--first-stage centroids``, PLAID's candidate generation over
residual codes) against brute-force oracles computed here from the stored codes: which pages
become candidates, their centroid interaction scores, and the search it feeds."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index_store import Index, IndexConfig, InputError, codecs, create
from latemm.cli import main
from latemm.ranking.scoring import maxsim_pairs
from latemm.retrieval.retriever import (
    Retriever,
    centroid_first_stage,
    first_stage_queries,
)
from tests.index_store.test_residual_codec import DIM, _docs


def _index(path, dtype: str = "res4", codebook: str = "segment") -> Index:
    """A small segment (too few tokens to train: float16), two residual segments of their own
    codebooks, two deletions. ``codebook="index"``: the codebook trained by the second commit
    (its segment merges the first two), the third segment coded under it (as ``latemm index``
    builds)."""
    config = IndexConfig(dim=DIM, dtype=dtype, residual_codebook=codebook)
    with create(path, config) as writer:
        writer.add([f"s{i}" for i in range(4)], _docs(40, 4))
        writer.commit()
        for part in range(2):
            writer.add([f"d{part}-{i}" for i in range(120)], _docs(41 + part, 120))
            writer.commit(final=codebook == "index" and part == 0)
        writer.delete(["s2", "d1-5"])
        writer.commit(final=True)
    return Index.open(path)


def _oracle(index: Index, query: np.ndarray, probe: int, allowed) -> dict[tuple[int, int], float]:
    """(segment, row) -> first-stage score, by brute force: a residual segment's rows holding a
    token among some query token's ``probe`` nearest centroids, scored as MaxSim with each token
    replaced by its centroid; a float16 segment's rows, scored exactly."""
    out = {}
    for s, seg in enumerate(index.segments):
        live = seg.live if allowed[s] is None else allowed[s]
        if seg.dtype == "float16":
            for row in np.flatnonzero(live):
                a, b = seg.offsets[row], seg.offsets[row + 1]
                vectors = np.asarray(seg.vectors[a:b], dtype=np.float64)
                out[s, int(row)] = float((query.astype(np.float64) @ vectors.T).max(1).sum())
            continue
        centroids, _, _ = codecs.residual_parts(seg.codebook.astype(np.float32), 4)
        table = query.astype(np.float64) @ centroids.T.astype(np.float64)
        near = {int(c) for row in table for c in np.argsort(-row)[:probe]}
        for row in np.flatnonzero(live):
            a, b = seg.offsets[row], seg.offsets[row + 1]
            ids = codecs.centroid_ids(np.asarray(seg.vectors[a:b]))
            if near & {int(c) for c in ids}:
                out[s, int(row)] = float(table[:, ids].max(1).sum())
    return out


def _widened(index: Index, query: np.ndarray, probe: int, allowed, n_cand: int):
    """``_oracle`` at ``probe``, doubled until it names ``n_cand`` pages or probes every
    centroid (what the first stage does for a query whose probes name too few pages)."""
    widest = max(
        codecs.residual_parts(s.codebook.astype(np.float32), 4)[0].shape[0]
        for s in index.segments
        if s.dtype == "res4"
    )
    while True:
        want = _oracle(index, query, probe, allowed)
        if len(want) >= n_cand or probe >= widest:
            return want
        probe *= 2


@pytest.mark.parametrize(
    ("probe", "codebook", "dtypes"),
    [
        (1, "segment", ["float16", "res4", "res4"]),
        (3, "segment", ["float16", "res4", "res4"]),
        (2, "index", ["res4", "res4"]),  # segments sharing one codebook (and its tables)
    ],
)
def test_candidates_and_scores_are_those_of_brute_force_over_the_codes(
    tmp_path, probe, codebook, dtypes
) -> None:
    index = _index(tmp_path / "idx", codebook=codebook)
    assert [s.dtype for s in index.segments] == dtypes
    queries = _docs(50, 5, 2, 6)
    flat = np.concatenate(queries).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum([len(q) for q in queries])])
    allowed = [seg.live.copy() if seg.deleted.any() else None for seg in index.segments]
    allowed[-1] = (np.arange(120) % 3 != 0) & index.segments[-1].live  # a filter on the last
    for n_cand in (7, 400):
        cands = centroid_first_stage(
            index, first_stage_queries(index, flat, offsets, centroids=True), n_cand, allowed,
            probe=probe,
        )  # fmt: skip
        for q, query in enumerate(queries):
            want = _widened(index, query, probe, allowed, n_cand)
            order = sorted(want, key=lambda key: -want[key])[:n_cand]
            valid = cands.valid[q]
            got = list(
                zip(cands.segments[q][valid].tolist(), cands.rows[q][valid].tolist(), strict=True)
            )
            assert set(got) == set(order)
            np.testing.assert_allclose(
                cands.scores[q][valid], [want[key] for key in got], rtol=1e-5, atol=1e-5
            )
            assert (np.diff(cands.scores[q][valid]) <= 0).all()  # best first


def test_every_live_page_is_a_candidate_when_every_centroid_is_probed(tmp_path) -> None:
    index = _index(tmp_path / "idx")
    queries = _docs(51, 3, 2, 6)
    flat = np.concatenate(queries).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum([len(q) for q in queries])])
    allowed = Retriever(index)._allowed(None)
    cands = centroid_first_stage(
        index, first_stage_queries(index, flat, offsets, centroids=True), 1000, allowed,
        probe=1 << 20,
    )  # fmt: skip
    live = {(s, r) for s, seg in enumerate(index.segments) for r in np.flatnonzero(seg.live)}
    for q in range(3):
        valid = cands.valid[q]
        assert set(zip(cands.segments[q][valid], cands.rows[q][valid], strict=True)) == live


def test_a_search_over_every_candidate_is_the_exact_search(tmp_path) -> None:
    """With the depth and the candidates covering every page, the centroid first stage feeds the
    rescoring every page: the exact search's ids and scores, as with the FDE."""
    index = _index(tmp_path / "idx")
    queries = _docs(52, 6, 2, 6)
    for k in (1, 8):
        exact = Retriever(index).search_embeddings(queries, k=k, candidates=300)
        got = Retriever(index, first_stage="centroids", refine_depth=300).search_embeddings(
            queries, k=k, candidates=300
        )
        assert (got.doc_ids == exact.doc_ids).all()
        np.testing.assert_array_equal(got.scores, exact.scores)


def test_a_depth_keeps_the_first_stages_best(tmp_path) -> None:
    """Under a depth, each query's results are the exact top k of the first stage's best
    ``depth`` candidates, whose order is the centroid interaction's."""
    index = _index(tmp_path / "idx")
    queries = _docs(53, 4, 2, 6)
    depth, k = 12, 4
    flat = np.concatenate(queries).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum([len(q) for q in queries])])
    retriever = Retriever(index, first_stage="centroids", refine_depth=depth)
    result = retriever.search_embeddings(queries, k=k)
    cands = retriever.candidates(flat, offsets, depth, retriever._allowed(None))
    for q, query in enumerate(queries):
        valid = cands.valid[q]
        kept = list(zip(cands.segments[q][valid], cands.rows[q][valid], strict=True))
        exact = []
        for s, r in kept:
            vectors, _, offs = index.codes(s, np.array([r]))
            decoded = index.segments[s].decode(vectors, None, np.float32)
            exact.append(maxsim_pairs(query, decoded, offs, float64=True)[0])
        ids = np.array([index.segments[s].doc_ids[r] for s, r in kept])
        order = np.lexsort((ids, -np.array(exact)))[:k]
        assert list(result.doc_ids[q]) == list(ids[order])


def test_the_centroid_first_stage_is_refused_without_residual_codes(tmp_path) -> None:
    index = _index(tmp_path / "idx", dtype="float16")
    with pytest.raises(InputError, match="--first-stage centroids .* float16"):
        Retriever(index, first_stage="centroids")
    with pytest.raises(InputError, match="--first-stage must be one of"):
        Retriever(index, first_stage="plaid")


def test_cli_search_with_the_centroid_first_stage(tmp_path, capsys) -> None:
    """Through ``latemm search`` (the collection searcher): a res4 index searched with
    ``--first-stage centroids --refine-depth D`` gives the kernel's (``Retriever``'s) ids and
    scores; a float16 index refuses the option in one line, exit code 2."""
    docs = _docs(60, 150)
    corpus = tmp_path / "c.parquet"
    vectors = pa.array([v.tolist() for v in docs], pa.list_(pa.list_(pa.float32(), DIM)))
    pq.write_table(
        pa.table({"doc_id": [f"p{i}" for i in range(150)], "embedding": vectors}), corpus
    )
    queries = tmp_path / "q.parquet"
    qs = _docs(61, 3, 2, 6)
    q_vectors = pa.array([v.tolist() for v in qs], pa.list_(pa.list_(pa.float32(), DIM)))
    pq.write_table(pa.table({"query_id": ["a", "b", "c"], "embedding": q_vectors}), queries)
    for dtype in ("res4", "float16"):
        index = tmp_path / dtype
        assert main(["index", str(corpus), "--index", str(index), "--dtype", dtype, "--quiet"]) == 0
    capsys.readouterr()
    run = tmp_path / "run.parquet"
    argv = ["search", str(tmp_path / "res4"), str(queries), "--out", str(run), "--k", "5"]
    assert main([*argv, "--first-stage", "centroids", "--refine-depth", "150", "--quiet"]) == 0
    got = pq.read_table(run)
    kernel = Retriever(tmp_path / "res4", first_stage="centroids", refine_depth=150)
    want = kernel.search_embeddings(qs, k=5, query_ids=["a", "b", "c"]).to_arrow()
    assert got.column("doc_id").to_pylist() == want.column("doc_id").to_pylist()
    assert got.column("score").to_pylist() == want.column("score").to_pylist()
    argv[1] = str(tmp_path / "float16")
    assert main([*argv, "--first-stage", "centroids"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--first-stage centroids" in err and "Traceback" not in err


def _corpus(tmp_path, n: int = 150):
    docs = _docs(60, n)
    corpus = tmp_path / "c.parquet"
    vectors = pa.array([v.tolist() for v in docs], pa.list_(pa.list_(pa.float32(), DIM)))
    pq.write_table(pa.table({"doc_id": [f"p{i}" for i in range(n)], "embedding": vectors}), corpus)
    return corpus


def test_a_residual_index_records_its_search_defaults(tmp_path) -> None:
    """``latemm index --dtype res4`` records the centroid first stage and a depth of 128 in
    the manifest; a search that names neither takes them, through the kernel, the collection
    searcher and the CLI. Naming ``--first-stage fde`` still takes the FDE."""
    from latemm.retrieval.field_search import OneFieldRetriever

    index = tmp_path / "res4"
    assert main(["index", str(_corpus(tmp_path)), "--index", str(index), "--dtype", "res4",
                 "--quiet"]) == 0  # fmt: skip
    config = Index.open(index).config
    assert (config.first_stage, config.default_depth) == ("centroids", 128)
    recorded = IndexConfig.from_dict(config.to_dict())
    assert (recorded.first_stage, recorded.refine_depth) == ("centroids", 128)
    queries = _docs(62, 4, 2, 6)
    named = Retriever(index, first_stage="centroids", refine_depth=128)
    assert (Retriever(index).first_stage, Retriever(index).refine_depth) == ("centroids", 128)
    want = named.search_embeddings(queries, k=5)
    for got in (
        Retriever(index).search_embeddings(queries, k=5),
        OneFieldRetriever(index).search_embeddings(queries, k=5),
    ):
        assert (got.doc_ids == want.doc_ids).all()
        np.testing.assert_array_equal(got.scores, want.scores)
    fde = Retriever(index, first_stage="fde").search_embeddings(queries, k=5)
    assert Retriever(index, first_stage="fde").first_stage == "fde"
    assert fde.doc_ids.shape == want.doc_ids.shape


def test_a_residual_index_written_before_the_defaults_keeps_its_search(tmp_path) -> None:
    """A residual manifest without ``first_stage`` (every one written before it was recorded)
    searches as it did: the FDE, every candidate decoded."""
    old = IndexConfig.from_dict(
        {
            k: v
            for k, v in IndexConfig(dim=DIM, dtype="res4", first_stage="centroids")
            .to_dict()
            .items()
            if k not in ("first_stage", "refine_depth")
        }  # fmt: skip
    )
    assert (old.first_stage, old.default_depth) == ("fde", None)
    index = _index(tmp_path / "idx")
    assert index.config.first_stage == "fde"
    retriever = Retriever(index)
    assert (retriever.first_stage, retriever.refine_depth) == ("fde", None)


def test_the_centroid_first_stage_is_recorded_only_for_residual_multi_vectors() -> None:
    with pytest.raises(InputError, match="first_stage='centroids' .* float16"):
        IndexConfig(dim=DIM, first_stage="centroids")
    with pytest.raises(InputError, match="single vectors"):
        IndexConfig(dim=DIM, dtype="res4", single_vector=True, first_stage="centroids")
    with pytest.raises(InputError, match="first_stage must be one of"):
        IndexConfig(dim=DIM, dtype="res4", first_stage="plaid")
    assert "first_stage" not in IndexConfig(dim=DIM, dtype="res4").to_dict()


def test_a_search_over_k_pages_returns_k(tmp_path) -> None:
    """Two-token queries probe 4 centroids, whose pages are fewer than k = 100 of 244: the
    probes widen until they name k (every page here), so the search returns k results, the
    exact top k when the depth decodes them all."""
    index = _index(tmp_path / "idx")
    queries = _docs(54, 5, 2, 3)
    got = Retriever(index, first_stage="centroids", refine_depth=300).search_embeddings(
        queries, k=100
    )
    exact = Retriever(index).search_embeddings(queries, k=100, candidates=300)
    assert all(sum(d is not None for d in row) == 100 for row in got.doc_ids)
    assert (got.doc_ids == exact.doc_ids).all()
    narrow = centroid_first_stage(
        index,
        first_stage_queries(index, np.concatenate(queries[:1]), np.array([0, 2]), centroids=True),
        1,
        [None] * 3,
    )
    assert narrow.valid.sum() == 1
