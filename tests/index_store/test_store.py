"""The index against brute force, across adds, deletes, upserts and compactions; durability,
corruption and bad-input behaviour."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from index_store import (
    Index,
    IndexConfig,
    IndexCorruptError,
    IndexLockedError,
    InputError,
    create,
    verify,
)
from latemm.ranking.scoring import maxsim
from latemm.retrieval.retriever import Retriever
from tests.helpers import SMALL_DIM as DIM


def _docs(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    return [rng.standard_normal((int(t), DIM)).astype(np.float32) for t in rng.integers(1, 12, n)]


def _brute_force(
    live: dict[str, np.ndarray], queries: list[np.ndarray], k: int, dtype: str
) -> list[list[str]]:
    from index_store import codecs

    ids = sorted(live)
    decoded = [codecs.decode(*codecs.encode(live[i], dtype), dtype, DIM) for i in ids]
    flat = np.concatenate(decoded)
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in decoded])])
    q_flat = np.concatenate(queries)
    q_off = np.concatenate([[0], np.cumsum([len(q) for q in queries])])
    scores = maxsim(q_flat, q_off, flat, offsets)
    out = []
    for row in scores:
        order = np.lexsort((np.array(ids), -row))[:k]
        out.append([ids[j] for j in order])
    return out


operations = st.lists(
    st.tuples(
        st.sampled_from(["add", "delete", "upsert", "commit", "compact"]), st.integers(0, 10**6)
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=operations, dtype=st.sampled_from(["float32", "float16", "int8", "binary"]))
def test_search_equals_brute_force_after_any_history(tmp_path_factory, ops, dtype) -> None:
    path = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(len(ops))
    live: dict[str, np.ndarray] = {}  # committed or pending, as the writer sees it
    next_id = 0
    with create(path, IndexConfig(dim=DIM, dtype=dtype)) as writer:
        for op, seed in ops:
            r = np.random.default_rng(seed)
            if op == "add":
                docs = _docs(r, int(r.integers(1, 8)))
                ids = [f"doc-{next_id + i}" for i in range(len(docs))]
                next_id += len(docs)
                writer.add(ids, docs)
                live.update(zip(ids, docs, strict=True))
            elif op == "delete" and live:
                victims = list(r.choice(sorted(live), size=min(len(live), 2), replace=False))
                writer.delete(victims)
                for v in victims:
                    live.pop(v)
            elif op == "upsert" and live:
                target = str(r.choice(sorted(live)))
                doc = _docs(r, 1)[0]
                writer.upsert([target], [doc])
                live[target] = doc
            elif op == "commit":
                writer.commit()
            elif op == "compact":
                writer.compact()
        writer.commit()
    index = Index.open(path)
    assert sorted(index.doc_ids()) == sorted(live)
    if not live:
        return
    queries = [rng.standard_normal((3, DIM)).astype(np.float32) for _ in range(4)]
    k = min(5, len(live))
    result = Retriever(index).search_embeddings(queries, k=k, candidates=len(live))
    assert [list(row[:k]) for row in result.doc_ids] == _brute_force(live, queries, k, dtype)
    for doc_id, vectors in list(live.items())[:3]:
        from index_store import codecs

        expected = codecs.decode(*codecs.encode(vectors, dtype), dtype, DIM)
        np.testing.assert_allclose(index.get(doc_id).vectors, expected, rtol=1e-6)


@pytest.fixture
def small_index(tmp_path):
    rng = np.random.default_rng(0)
    docs = _docs(rng, 20)
    with create(tmp_path / "idx", IndexConfig(dim=DIM)) as writer:
        writer.add(
            [f"d{i}" for i in range(20)],
            docs,
            metadata=pa.table(
                {"year": list(range(2000, 2020)), "text": [f"page {i}" for i in range(20)]}
            ),
        )
        writer.commit()
    return tmp_path / "idx", docs


def test_metadata_content_and_filters(small_index) -> None:
    path, docs = small_index
    index = Index.open(path)
    doc = index.get("d4")
    assert doc.metadata == {"year": 2004, "text": "page 4"}
    np.testing.assert_allclose(doc.vectors, docs[4].astype(np.float16).astype(np.float32))
    query = [np.ones((2, DIM), np.float32)]
    result = Retriever(index).search_embeddings(query, k=5, where="year >= 2017")
    assert sorted(result.doc_ids[0][:3]) == ["d17", "d18", "d19"]
    assert result.doc_ids[0][3] is None  # fewer than k match: padded
    with pytest.raises(InputError, match="Metadata columns: year"):
        Retriever(index).search_embeddings(query, k=5, where="colour = 'red'")


def test_second_writer_is_refused(small_index) -> None:
    path, _ = small_index
    with create(path, IndexConfig(dim=DIM)):
        with pytest.raises(IndexLockedError, match="one writer at a time"):
            create(path, IndexConfig(dim=DIM))
    # Readers are never blocked.
    assert len(Index.open(path)) == 20


@pytest.mark.parametrize(
    ("ids", "docs", "message"),
    [
        (["a", "a"], [np.ones((2, DIM))] * 2, "rows 0 and 1: duplicate doc_id 'a'"),
        (["d3"], [np.ones((2, DIM))], "row 0: doc_id 'd3' is already in the index"),
        (
            ["x", "y"],
            [np.ones((2, DIM)), np.ones((2, DIM + 1))],
            "row 1, doc_id 'y' has vectors of dimension 9",
        ),
        (
            ["x", "y"],
            [np.ones((2, DIM)), np.full((2, DIM), np.nan)],
            "row 1, doc_id 'y' contains NaN or inf",
        ),
        (
            ["x", "y"],
            [np.ones((2, DIM)), np.zeros((3, DIM))],
            "row 1: document 'y' has only zero (padding) vectors",
        ),
        (["x", "y"], [np.ones((2, DIM)), np.zeros((0, DIM))], "row 1, doc_id 'y' has no vectors"),
        ([None], [np.ones((2, DIM))], "row 0: doc_id must be a non-empty string"),
    ],
)
def test_bad_input_is_rejected_and_writes_nothing(small_index, ids, docs, message) -> None:
    path, _ = small_index
    before = (path / "manifest.json").read_bytes()
    with create(path, IndexConfig(dim=DIM)) as writer:
        with pytest.raises(InputError) as err:
            writer.add(ids, [np.asarray(d, np.float32) for d in docs], source="corpus.parquet")
        assert message in str(err.value)
        assert "corpus.parquet" in str(err.value)
        assert writer.pending_documents == 0
        writer.commit()
    assert (path / "manifest.json").read_bytes() == before


def test_padding_vectors_are_not_stored(tmp_path) -> None:
    doc = np.ones((5, DIM), np.float32)
    doc[3:] = 0
    with create(tmp_path / "i", IndexConfig(dim=DIM)) as writer:
        writer.add(["p"], [doc])
        writer.commit()
    assert Index.open(tmp_path / "i").get("p").vectors.shape == (3, DIM)


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "missing"])
@pytest.mark.parametrize("fname", ["vectors.npy", "offsets.npy", "fde.faiss", "meta.parquet"])
def test_damaged_files_are_reported_by_name(small_index, damage, fname) -> None:
    path, _ = small_index
    (seg,) = [p for p in (path / "segments").iterdir()]
    target = seg / fname
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "bitflip":
        data[len(data) // 2] ^= 0x10
        target.write_bytes(bytes(data))
    else:
        target.unlink()
    problems = verify(path)
    assert len(problems) == 1 and fname in problems[0]
    # Opening with the default checks refuses everything but a bit flip in a large file, which
    # only the full check (latemm verify) can see; small files are checksummed on every open.
    with pytest.raises(IndexCorruptError) as err:
        Index.open(path, verify="full")
    assert fname in str(err.value)
    with pytest.raises(IndexCorruptError, match=fname):
        Index.open(path)


def test_crash_leftovers_are_ignored_and_cleaned(small_index) -> None:
    path, _ = small_index
    junk = path / "segments" / ".tmp-seg-g000009-123"
    junk.mkdir()
    (junk / "vectors.npy").write_bytes(b"partial")
    assert len(Index.open(path)) == 20
    with create(path, IndexConfig(dim=DIM)):
        pass
    assert not junk.exists()


def test_compaction_keeps_ids_and_results(small_index) -> None:
    path, _ = small_index
    with create(path, IndexConfig(dim=DIM)) as writer:
        writer.delete(["d1", "d2"])
        writer.add(["n1"], [np.ones((3, DIM), np.float32)])
        writer.commit()
        before = Retriever(Index.open(path)).search_embeddings(
            [np.ones((2, DIM), np.float32)], k=19
        )
        writer.compact()
    index = Index.open(path)
    assert len(index.segments) == 1
    after = Retriever(index).search_embeddings([np.ones((2, DIM), np.float32)], k=19)
    assert list(after.doc_ids[0]) == list(before.doc_ids[0])
    np.testing.assert_allclose(after.scores, before.scores, rtol=1e-6)


@pytest.mark.parametrize("factory", ["HNSW16", "IVF4,PQ16x4"])
def test_hnsw_and_ivfpq_first_stages(tmp_path, factory) -> None:
    rng = np.random.default_rng(5)
    docs = _docs(rng, 300)
    ids = [f"d{i}" for i in range(300)]
    with create(
        tmp_path / "i", IndexConfig(dim=DIM, dtype="float32", faiss_factory=factory)
    ) as writer:
        writer.add(ids, docs)
        writer.commit()
        writer.delete(["d7"])
        writer.commit()
    index = Index.open(tmp_path / "i")
    queries = [rng.standard_normal((3, DIM)).astype(np.float32) for _ in range(3)]
    live = {i: d for i, d in zip(ids, docs, strict=True) if i != "d7"}
    # Probing everything (nprobe >= nlist, efSearch >= n) the exact rescoring equals brute force.
    result = Retriever(index, nprobe=4, ef_search=400).search_embeddings(
        queries, k=10, candidates=299
    )
    assert [list(r) for r in result.doc_ids] == _brute_force(live, queries, 10, "float32")
    # With a small candidate budget the approximate first stage still finds most of the top 10.
    approx = Retriever(index, nprobe=1, ef_search=16).search_embeddings(
        queries, k=10, candidates=50
    )
    assert "d7" not in approx.doc_ids
