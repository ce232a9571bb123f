"""The global first stage: one codebook per index, one fast-scan search over all segments.

A tiny FDE (32 dimensions, codes of 2 bytes) keeps the real training threshold
(``MIN_TRAIN_DOCUMENTS``) cheap: every index here trains its codebook as a real one does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from fde import FDEConfig
from index_store import Index, IndexConfig, IndexCorruptError, create, verify
from index_store import first_stage as fs
from index_store.manifest import Manifest
from latemm.ranking.scoring import maxsim
from latemm.retrieval.retriever import Retriever, first_stage, first_stage_queries
from tests.helpers import SMALL_DIM as DIM

FDE = FDEConfig(
    dimension=DIM,
    num_repetitions=2,
    num_simhash_projections=2,
    projection_type="ams_sketch",
    projection_dimension=4,
    fill_empty_partitions=True,
)
N = fs.MIN_TRAIN_DOCUMENTS + 400


def _corpus(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal((int(rng.integers(2, 7)), DIM)).astype(np.float32) for _ in range(N)
    ]


def _queries() -> list[np.ndarray]:
    rng = np.random.default_rng(99)
    return [rng.standard_normal((3, DIM)).astype(np.float32) for _ in range(6)]


def _build(path: Path, docs: list[np.ndarray], cuts: list[int], factory: str = "auto") -> Path:
    """Commit ``docs`` in batches ending at ``cuts``, with a ``year`` column."""
    with create(path, IndexConfig(dim=DIM, fde=FDE, faiss_factory=factory)) as writer:
        start = 0
        for stop in [*cuts, len(docs)]:
            import pyarrow as pa

            ids = list(range(start, stop))
            writer.add(
                [f"d{i:05d}" for i in ids],
                docs[start:stop],
                metadata=pa.table({"year": pa.array([2000 + i % 10 for i in ids], pa.int64())}),
            )
            writer.commit()
            start = stop
    return path


def _brute_force(index: Index, queries: list[np.ndarray], k: int, keep=None) -> list[list[str]]:
    """Exact MaxSim top-k over the stored vectors of the live (and kept) documents."""
    ids, sets = [], []
    for s, seg in enumerate(index.segments):
        rows = np.flatnonzero(seg.live)
        vectors, offsets = index.vectors(s, rows)
        for j, row in enumerate(rows):
            if keep is None or keep(seg.doc_ids[row]):
                ids.append(seg.doc_ids[row])
                sets.append(vectors[offsets[j] : offsets[j + 1]])
    flat = np.concatenate(sets)
    offsets = np.zeros(len(sets) + 1, dtype=np.int64)
    np.cumsum([len(v) for v in sets], out=offsets[1:])
    q_offsets = np.zeros(len(queries) + 1, dtype=np.int64)
    np.cumsum([len(q) for q in queries], out=q_offsets[1:])
    scores = maxsim(np.concatenate(queries), q_offsets, flat, offsets)
    names = np.array(ids)
    return [list(names[np.lexsort((names, -row))][:k]) for row in scores]


def _candidate_scores(index: Index, queries: list[np.ndarray], n: int) -> np.ndarray:
    """(Q, n) first-stage scores of each query's top n candidates, best first."""
    flat = np.concatenate(queries)
    offsets = np.arange(len(queries) + 1, dtype=np.int64) * len(queries[0])
    matrix = first_stage_queries(index, flat, offsets)
    return first_stage(index, matrix, n, Retriever(index)._allowed(None)).scores


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """300 documents before the codebook (a Flat segment), then enough to train it (the 300 are
    rewritten into that commit's segment), then 100 more."""
    path = tmp_path_factory.mktemp("fs") / "index"
    return _build(path, _corpus(), [300, N - 100])


def _copy(built: Path, tmp_path: Path) -> Path:
    path = tmp_path / "copy"
    shutil.copytree(built, path)
    return path


def test_layout_codebook_codes_and_folded_segments(built) -> None:
    index = Index.open(built, verify="full")
    assert index.config.faiss_factory == "PQ4x4fs"  # auto: D / 8 sub-quantizers, 4 bits
    assert index.manifest.format_version == 3  # a codebook (2) and page magnitudes (3)
    assert [e.name for e in index.manifest.segments] == ["seg-g000002", "seg-g000003"]
    assert [e.coded for e in index.manifest.segments] == [True, True]
    assert index.manifest.codebook is not None
    assert index.manifest.codebook.file == "fde-pq-g000002.faiss"
    assert (built / index.manifest.codebook.file).stat().st_size == fs.expected_codebook_size(32)
    assert index.coded_segments() == [0, 1]
    assert index.segments[0].fde_codes is not None
    assert index.segments[0].fde_codes.shape == (N - 100, 2)
    assert list(index.segments[0].doc_ids[:2]) == ["d00000", "d00001"]  # the folded 300 first
    assert not (built / "segments" / index.segments[0].name / "fde.faiss").exists()
    assert not (built / "segments" / "seg-g000001").exists()
    assert len(index) == N and verify(built) == []


def test_exhaustive_candidates_equal_brute_force(built) -> None:
    index = Index.open(built)
    queries = _queries()
    result = Retriever(index).search_embeddings(queries, k=10, candidates=N)
    assert [list(r) for r in result.doc_ids] == _brute_force(index, queries, 10)


def test_one_or_many_segments_give_identical_results(tmp_path) -> None:
    """Same first commit (so the same codebook), the rest as one or as eight segments: the same
    first-stage scores and the same results, even with few candidates."""
    docs = _corpus(1)
    first = fs.MIN_TRAIN_DOCUMENTS + 8
    one = _build(tmp_path / "one", docs, [first])
    many = _build(tmp_path / "many", docs, [first, *range(first + 49, N, 49)])
    a, b = Index.open(one), Index.open(many)
    assert len(a.segments) == 2 and len(b.segments) == 9
    assert a.manifest.codebook.sha256 == b.manifest.codebook.sha256  # type: ignore[union-attr]
    queries = _queries()
    for candidates in (20, N):
        got_a = Retriever(a).search_embeddings(queries, k=10, candidates=candidates)
        got_b = Retriever(b).search_embeddings(queries, k=10, candidates=candidates)
        np.testing.assert_array_equal(got_a.doc_ids, got_b.doc_ids)
        np.testing.assert_array_equal(got_a.fde_scores, got_b.fde_scores)
        # Exact MaxSim of the same documents; rescoring batches differ, hence 1e-6.
        np.testing.assert_allclose(got_a.scores, got_b.scores, rtol=1e-6)
    exact = Retriever(b).search_embeddings(queries, k=10, candidates=N)
    assert [list(r) for r in exact.doc_ids] == _brute_force(b, queries, 10)


def test_deletes_upserts_and_where_are_respected(built, tmp_path) -> None:
    path = _copy(built, tmp_path)
    rng = np.random.default_rng(5)
    deleted = [f"d{i:05d}" for i in (1, 500, 700, N - 3)]
    with create(path, IndexConfig(dim=DIM, fde=FDE)) as writer:
        writer.delete(deleted)
        writer.upsert(["d00600"], [rng.standard_normal((4, DIM)).astype(np.float32)])
        writer.commit()
    index = Index.open(path)
    queries = _queries()
    retriever = Retriever(index)
    got = retriever.search_embeddings(queries, k=10, candidates=N)
    assert [list(r) for r in got.doc_ids] == _brute_force(index, queries, 10)
    few = retriever.search_embeddings(queries, k=10, candidates=30)
    assert not set(few.doc_ids.ravel()) & set(deleted)
    # A filter keeping 10% (searched over the allowed codes) and one keeping 90% (over-fetch).
    for where, keep in (
        ("year = 2003", lambda d: int(d[1:]) % 10 == 3),
        ("year <> 2003", lambda d: int(d[1:]) % 10 != 3),
    ):
        got = retriever.search_embeddings(queries, k=10, candidates=N, where=where)
        assert [list(r) for r in got.doc_ids] == _brute_force(index, queries, 10, keep)
        few = retriever.search_embeddings(queries, k=10, candidates=25, where=where)
        assert all(keep(d) for d in few.doc_ids.ravel() if d is not None)
        assert not set(few.doc_ids.ravel()) & set(deleted)


@pytest.mark.parametrize(
    ("target", "damage", "opened_says"),
    [
        ("codebook", lambda d: d[:-50], "truncated or replaced"),
        ("codebook", lambda d: b"IxFI" + d[4:], "starts with b'IxFI'"),
        ("codebook", lambda d: d[:40] + b"\x07" + d[41:], "holds a PQ"),
        ("codes", lambda d: d[:-7], "fde-codes.npy"),
    ],
)
def test_damaged_codebook_or_codes_is_index_corrupt(
    built, tmp_path, target, damage, opened_says
) -> None:
    path = _copy(built, tmp_path)
    manifest = Manifest.read(path)
    assert manifest.codebook is not None
    if target == "codebook":
        fpath = path / manifest.codebook.file
    else:
        fpath = path / "segments" / manifest.segments[0].name / "fde-codes.npy"
    fpath.write_bytes(damage(fpath.read_bytes()))
    problems = verify(path)
    assert problems and str(fpath) in problems[0]
    with pytest.raises(IndexCorruptError, match=fpath.name):
        Index.open(path)  # sizes and checksums
    with pytest.raises(IndexCorruptError) as err:  # trusting them: the header and shape checks
        index = Index.open(path, verify="none")
        Retriever(index).search_embeddings(_queries(), k=3)
    assert str(fpath) in str(err.value) and opened_says in str(err.value)


def test_crash_before_the_manifest_swap_keeps_the_last_commit(tmp_path, monkeypatch) -> None:
    """The commit that trains the codebook writes it, then its segment, then the manifest: an
    exception before the swap leaves the previous state, and the orphan codebook is removed."""
    docs = _corpus(2)
    path = _build(tmp_path / "index", docs[:300], [])
    before = Index.open(path)
    queries = _queries()
    expected = Retriever(before).search_embeddings(queries, k=5).doc_ids

    def crash(self, root):
        raise RuntimeError("killed before the manifest swap")

    with create(path, IndexConfig(dim=DIM, fde=FDE)) as writer:
        writer.add([f"n{i}" for i in range(N - 300)], docs[300:])
        monkeypatch.setattr(Manifest, "write", crash)
        with pytest.raises(RuntimeError, match="killed"):
            writer.commit()
        monkeypatch.undo()
    orphans = sorted(p.name for p in path.glob("fde-pq-g*.faiss"))
    assert orphans == ["fde-pq-g000002.faiss"]  # written before the swap, listed by no manifest
    after = Index.open(path, verify="full")
    assert after.generation == before.generation and after.manifest.codebook is None
    assert len(after) == 300 and verify(path) == []
    np.testing.assert_array_equal(
        Retriever(after).search_embeddings(queries, k=5).doc_ids, expected
    )
    with create(path, IndexConfig(dim=DIM, fde=FDE)) as writer:  # a writer collects the leftovers
        assert not list(path.glob("fde-pq-g*.faiss"))
        writer.add([f"n{i}" for i in range(N - 300)], docs[300:])
        writer.commit()
    index = Index.open(path)
    assert index.manifest.codebook is not None and index.coded_segments() == [0]
    assert [
        list(r) for r in Retriever(index).search_embeddings(queries, k=5, candidates=N).doc_ids
    ] == (_brute_force(index, queries, 5))


def test_compaction_reencodes_under_the_same_codebook(built, tmp_path) -> None:
    path = _copy(built, tmp_path)
    queries = _queries()
    with create(path, IndexConfig(dim=DIM, fde=FDE)) as writer:
        writer.delete(["d00007"])
        writer.commit()
        before = _candidate_scores(writer.index, queries, 40)
        codebook = writer.index.manifest.codebook
        writer.compact()
    index = Index.open(path)
    assert [e.coded for e in index.manifest.segments] == [True] and "d00007" not in index
    assert index.manifest.codebook == codebook  # one codebook per index, never retrained
    # The same codes: the same first-stage scores (which of tied documents come first may
    # change with their positions; these 2-byte codes tie often).
    np.testing.assert_array_equal(_candidate_scores(index, queries, 40), before)
    exact = Retriever(index).search_embeddings(queries, k=10, candidates=N)
    assert [list(r) for r in exact.doc_ids] == _brute_force(index, queries, 10)


def test_flat_keeps_the_per_segment_layout(tmp_path) -> None:
    docs = _corpus(3)
    path = _build(tmp_path / "flat", docs, [N - 50], factory="Flat")
    index = Index.open(path)
    assert index.manifest.codebook is None
    assert index.manifest.format_version == 3  # float16 segments store page magnitudes
    assert index.coded_segments() == [] and not list(path.glob("fde-pq-*"))
    assert all((path / "segments" / s.name / "fde.faiss").is_file() for s in index.segments)
    queries = _queries()
    got = Retriever(index).search_embeddings(queries, k=10, candidates=N)
    assert [list(r) for r in got.doc_ids] == _brute_force(index, queries, 10)


def test_codebook_trained_on_threads_is_faiss_own_training_bit_for_bit() -> None:
    import faiss

    rng = np.random.default_rng(5)
    fde = rng.standard_normal((fs.MIN_TRAIN_DOCUMENTS + 76, 48)).astype(np.float32)
    reference = faiss.IndexPQ(48, 6, 4, faiss.METRIC_INNER_PRODUCT)
    reference.pq.cp.seed = 1234
    reference.pq.cp.verbose = False
    reference.train(fde)
    expected = fs.serialize_codebook(reference)
    for threads in (1, 4):
        codebook = fs.train_codebook("PQ6x4fs", fde, threads=threads)
        assert fs.serialize_codebook(codebook) == expected
        codes = fs.encode_codes(codebook, fde, threads=threads)
        np.testing.assert_array_equal(codes, reference.sa_encode(fde))
