"""The refine copy (``IndexConfig.refine``): compact codes rank the candidates, each query's
``refine_depth`` best are rescored exactly from a finer copy of the vectors. Checked against
brute force over the copy, through compaction, with the copy damaged or missing, and for the
settings it refuses."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from index_store import (
    Index,
    IndexConfig,
    IndexCorruptError,
    InputError,
    codecs,
    create,
    verify,
)
from index_store.errors import IndexFormatError
from index_store.store import IndexWriter
from latemm.cli import main
from latemm.ranking.scoring import maxsim
from latemm.retrieval.retriever import (
    Retriever,
    doc_ids_of,
    first_stage,
    first_stage_queries,
    rescore,
)
from tests.helpers import write_corpus, write_queries
from tests.index_store.test_codecs import DIM, _docs
from tests.index_store.test_codecs import _build as build

PAIRS = [("pq1", "int8"), ("pq2", "float16"), ("binary", "int8")]


def _build(path, dtype: str, refine: str, depth: int = 64) -> dict[str, np.ndarray]:
    """test_codecs' index (a segment too small to train a codec: float16, no copy; a large
    one; deletions) with a refine copy."""
    return build(path, dtype, refine=refine, refine_depth=depth)


def _exact(index: Index, queries: list[np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Every live document's id (sorted) and float32 MaxSim over ``Index.get``'s vectors."""
    ids = sorted(index.doc_ids())
    docs = [index.get(i).vectors for i in ids]
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in docs])])
    q_off = np.concatenate([[0], np.cumsum([len(q) for q in queries])])
    return ids, maxsim(np.concatenate(queries), q_off, np.concatenate(docs), offsets)


def _top(ids: list[str], row: np.ndarray, k: int) -> list[str]:
    return [ids[j] for j in np.lexsort((np.array(ids), -row))[:k]]


@pytest.mark.parametrize(("dtype", "refine"), PAIRS)
def test_exhaustive_search_equals_brute_force_over_the_copy(tmp_path, dtype, refine) -> None:
    path = tmp_path / "idx"
    live = _build(path, dtype, refine, depth=1000)
    queries = _docs(3, 4, 2, 5)
    index = Index.open(path)
    # Index.get reads the copy: the vectors as the refine dtype stores them, not the codes.
    codes, scales = codecs.encode(live["l0"], refine)
    np.testing.assert_array_equal(
        index.get("l0").vectors, codecs.decode(codes, scales, refine, DIM)
    )
    before = {d: index.get(d).vectors for d in live}
    for _ in ("segments", "compacted"):
        index = Index.open(path)
        result = Retriever(index).search_embeddings(queries, k=10, candidates=len(live))
        ids, exact = _exact(index, queries)
        assert [list(r) for r in result.doc_ids] == [_top(ids, row, 10) for row in exact]
        for q, row in enumerate(result.doc_ids):
            np.testing.assert_allclose(
                result.scores[q], exact[q, [ids.index(d) for d in row]], rtol=1e-5, atol=1e-5
            )
        with IndexWriter(path) as writer:
            writer.compact()
    # Without k (field fusion needs every candidate's score) every candidate is scored from
    # the copy.
    flat = np.concatenate(queries)
    q_off = np.concatenate([[0], np.cumsum([len(q) for q in queries])])
    matrix = first_stage_queries(index, flat, q_off)
    cands = first_stage(index, matrix, len(live), [None] * len(index.segments))
    scores = rescore(index, flat, q_off, cands)
    docs = doc_ids_of(index, cands)
    for q in range(len(queries)):
        got = {d: s for d, s in zip(docs[q], scores[q], strict=True) if d is not None}
        want = {d: exact[q, ids.index(d)] for d in got}
        assert len(got) == len(live)
        np.testing.assert_allclose(list(got.values()), list(want.values()), rtol=1e-5, atol=1e-5)
    # Compaction re-encodes the compact codes from the copy; the copy itself is unchanged.
    index = Index.open(path)
    assert len(index.segments) == 1 and index.segments[0].refine_vectors is not None
    for d, vectors in before.items():
        if d.startswith("l"):
            np.testing.assert_array_equal(index.get(d).vectors, vectors)
    assert verify(path) == []


def test_the_exact_pass_reads_only_each_querys_best_on_the_codes(tmp_path) -> None:
    path = tmp_path / "idx"
    live = _build(path, "pq1", "int8", depth=5)
    queries = _docs(4, 6, 2, 5)
    index = Index.open(path)
    result = Retriever(index).search_embeddings(queries, k=3, candidates=len(live))
    ids, exact = _exact(index, queries)
    # The codes' own ranking: float32 MaxSim over what Index.vectors decodes (pq1 codes; the
    # small segment's float16 as stored).
    where = [index.locations()[d] for d in ids]
    docs = [index.vectors(s, np.array([r]))[0] for s, r in where]
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in docs])])
    q_off = np.concatenate([[0], np.cumsum([len(q) for q in queries])])
    approx = maxsim(np.concatenate(queries), q_off, np.concatenate(docs), offsets)
    for q, row in enumerate(result.doc_ids):
        # The 5 rescored are the codes' best (+2: the fast pass is float16, so a near tie at
        # the 5th may swap); the results are scored from the copy, best first.
        assert set(row) <= set(_top(ids, approx[q], 7))
        picked = [ids.index(d) for d in row]
        np.testing.assert_allclose(result.scores[q], exact[q, picked], rtol=1e-5, atol=1e-5)
        assert list(result.scores[q]) == sorted(result.scores[q], reverse=True)
    # The depth is a search setting too: every candidate rescored gives the exact top 3.
    everything = Retriever(index, refine_depth=len(live))
    result = everything.search_embeddings(queries, k=3, candidates=len(live))
    assert [list(r) for r in result.doc_ids] == [_top(ids, row, 3) for row in exact]
    with pytest.raises(InputError, match="refine_depth must be >= 1, got 0"):
        Retriever(index, refine_depth=0)


def test_manifest_files_and_format_version(tmp_path) -> None:
    path = tmp_path / "idx"
    _build(path, "pq1", "int8")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == 4
    assert manifest["config"]["refine"] == "int8" and manifest["config"]["refine_depth"] == 64
    small, large = manifest["segments"]
    assert "refine-vectors.npy" not in small["files"]  # float16 already: no copy
    assert {"refine-vectors.npy", "refine-scales.npy"} <= set(large["files"])
    stats = Index.open(path).stats()
    assert (stats["refine"], stats["refine_depth"]) == ("int8", 64)
    assert stats["refine_bytes"] == sum(
        large["files"][f]["size"] for f in ("refine-vectors.npy", "refine-scales.npy")
    )
    # A reader of version 3 would not know the files: the version says so.
    manifest["format_version"] = 3
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="sets refine, which format version 3"):
        Index.open(path)


@pytest.mark.parametrize("name", ["refine-vectors.npy", "refine-scales.npy"])
def test_damaged_or_missing_copy_is_named(tmp_path, name) -> None:
    path = tmp_path / "idx"
    _build(path, "pq1", "int8")
    (target,) = (path / "segments").glob(f"*/{name}")
    data = bytearray(target.read_bytes())
    data[-3] ^= 0x10
    target.write_bytes(bytes(data))
    problems = verify(path)
    assert len(problems) == 1 and f"{name}: checksum mismatch" in problems[0]
    with pytest.raises(IndexCorruptError, match=f"{name}: checksum mismatch"):
        Index.open(path)
    target.unlink()
    assert f"{name}: missing" in verify(path)[0]
    with pytest.raises(IndexCorruptError, match=f"{name}: missing"):
        Index.open(path)


def test_a_copy_of_the_wrong_shape_is_refused(tmp_path) -> None:
    path = tmp_path / "idx"
    _build(path, "pq1", "int8")
    manifest = json.loads((path / "manifest.json").read_text())
    seg = manifest["segments"][1]
    target = path / "segments" / seg["name"] / "refine-vectors.npy"
    np.save(target, np.zeros((3, DIM), np.int8))
    with pytest.raises(IndexCorruptError, match=r"refine-vectors.npy has shape \(3, 16\)"):
        Index.open(path, verify="none")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "float16", "refine": "int8"}, "keeps a copy beside compact codes, but this "),
        ({"dtype": "pq1", "refine": "pq2"}, "refine must be None or one of"),
        ({"dtype": "pq1", "refine": "int8", "refine_depth": 0}, "refine_depth must be a posi"),
    ],
)
def test_settings_it_refuses(kwargs, message) -> None:
    with pytest.raises(InputError, match=message):
        IndexConfig(dim=DIM, **kwargs)


def test_single_vector_index_with_a_copy_equals_brute_force(tmp_path) -> None:
    """One vector per document (a field of a pooled embedder): faiss searches the copy's
    vectors, the codes rank the candidates, the copy rescores them."""
    rng = np.random.default_rng(5)
    docs = rng.standard_normal((1100, DIM)).astype(np.float32)  # enough to train pq1
    ids = [f"d{i}" for i in range(len(docs))]
    config = IndexConfig(dim=DIM, dtype="pq1", single_vector=True, refine="int8")
    with create(tmp_path / "sv", config) as writer:
        writer.add(ids, list(docs[:, None, :]))
        writer.commit()
    index = Index.open(tmp_path / "sv")
    assert index.segments[0].refine_vectors is not None
    queries = [rng.standard_normal((3, DIM)).astype(np.float32) for _ in range(4)]
    result = Retriever(index, refine_depth=len(ids)).search_embeddings(
        queries, k=10, candidates=len(ids)
    )
    got_ids, exact = _exact(index, queries)
    assert [list(r) for r in result.doc_ids] == [_top(got_ids, row, 10) for row in exact]


def test_reopening_with_another_refine_is_refused(tmp_path) -> None:
    path = tmp_path / "idx"
    _build(path, "pq1", "int8")
    with pytest.raises(IndexFormatError, match="refine: recorded 'int8', requested None"):
        IndexWriter(path, config=IndexConfig(dim=DIM, dtype="pq1"))


def test_cli_builds_and_searches_an_index_with_a_copy(tmp_path, capsys) -> None:
    corpus, queries = tmp_path / "corpus.parquet", tmp_path / "queries.parquet"
    write_corpus(corpus, 200)
    write_queries(queries, 3)
    idx, run = str(tmp_path / "idx"), tmp_path / "run.parquet"
    flags = ["--dtype", "pq1", "--refine", "int8", "--refine-depth", "200", "--quiet"]
    assert main(["index", str(corpus), "--index", idx, *flags]) == 0
    index = Index.open(idx)
    assert (index.config.refine, index.config.refine_depth) == ("int8", 200)
    args = ["search", idx, str(queries), "--out", str(run), "--k", "5", "--candidates", "200"]
    assert main([*args, "--quiet"]) == 0
    table = pq.read_table(run).to_pandas()
    ids, exact = _exact(index, [np.asarray(list(v), np.float32) for v in _queries(queries)])
    for q, (_, rows) in enumerate(table.groupby("query_id", sort=True)):
        assert list(rows.sort_values("rank")["doc_id"]) == _top(ids, exact[q], 5)
    # The depth per search, from the CLI: what the API gives with that depth.
    shallow = tmp_path / "shallow.parquet"
    assert main([*args, "--refine-depth", "5", "--out", str(shallow), "--quiet"]) == 0
    vectors = [np.asarray(list(v), np.float32) for v in _queries(queries)]
    api = Retriever(index, refine_depth=5).search_embeddings(vectors, k=5, candidates=200)
    got = pq.read_table(shallow).to_pandas().groupby("query_id", sort=True)
    assert [list(rows.sort_values("rank")["doc_id"]) for _, rows in got] == [
        list(r) for r in api.doc_ids
    ]
    # Without compact codes a copy has nothing to refine: a clear error, exit 2.
    capsys.readouterr()
    bad = ["index", str(corpus), "--index", str(tmp_path / "b"), "--refine", "int8", "--quiet"]
    assert main(bad) == 2
    assert "use it with dtype one of ('binary', 'pq1', 'pq2')" in capsys.readouterr().err
    plain = str(tmp_path / "plain")
    assert main(["index", str(corpus), "--index", plain, "--dtype", "float16", "--quiet"]) == 0
    capsys.readouterr()
    search = ["search", plain, str(queries), "--out", str(tmp_path / "r.parquet")]
    assert main([*search, "--refine-depth", "8", "--quiet"]) == 2
    assert "has no refine copy (it was built without --refine)" in capsys.readouterr().err


def _queries(path) -> list[list[list[float]]]:
    return pq.read_table(path).sort_by("query_id").column("embedding").to_pylist()


class _Recording(np.ndarray):
    """An array that records the row slices read from it (the pages a pass touches)."""

    reads: list[tuple[int, int]]

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, slice):
            self.reads.append((key.start, key.stop))
        return np.asarray(super().__getitem__(key))


def test_the_copy_is_read_only_for_each_querys_depth_pages(tmp_path, monkeypatch) -> None:
    from index_store.segment import Segment

    live = _build(tmp_path / "idx", "pq1", "int8", depth=6)
    index = Index.open(tmp_path / "idx")
    copies: list[_Recording] = []
    original = Segment.refined

    def recorded(seg: Segment) -> Segment:
        view = original(seg)
        if view is not seg:
            rows = view.vectors.view(_Recording)
            rows.reads = []
            copies.append(rows)
            view.vectors = rows
        return view

    monkeypatch.setattr(Segment, "refined", recorded)
    queries = _docs(7, 1, 2, 5)
    offsets = index.segments[1].offsets  # the large segment: the only one with a copy

    def pages_read(depth: int | None) -> int:
        copies.clear()
        index._refined = None  # a fresh view, recording from empty
        retriever = Retriever(index, refine_depth=depth)
        retriever.search_embeddings(queries, k=3, candidates=len(live))
        return len({int(np.searchsorted(offsets, a, side="right")) - 1 for a, _ in copies[0].reads})

    # One query, 123 candidates: the copy's pages read are its best 6 on the codes (at most:
    # the small segment's float16 pages hold no copy and are read as stored); asked for 50,
    # more of them.
    assert 0 < pages_read(None) <= 6 < pages_read(50) <= 50
