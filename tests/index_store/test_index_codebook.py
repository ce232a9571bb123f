"""One residual codebook per index (``IndexConfig.residual_codebook="index"``, issue 29): many
small commits write one ``vectors-codebook-g<gen>.npy`` and segments without ``codebook.npy``;
search equals brute force over the decoded vectors and each decoding is within its recorded
error; compaction, ``verify``, a crash before the manifest swap, and an index written with
per-segment codebooks (main at 8e663b7) opening and searching unchanged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from index_store import Index, IndexConfig, IndexCorruptError, InputError, codecs, create, verify
from index_store import store as store_module
from index_store.fsio import sha256_file
from index_store.manifest import Manifest
from index_store.store import IndexWriter
from latemm.retrieval.retriever import Retriever
from tests.helpers import write_corpus
from tests.index_store.test_codecs import _brute_force_over_decoded
from tests.index_store.test_residual_codec import DIM, _docs

# Small enough to reach in a test: the index codebook is trained on the first commit holding it.
THRESHOLD = 2500
MAIN_INDEX = Path(__file__).parent / "data" / "res4-segments"


@pytest.fixture
def low_threshold(monkeypatch) -> None:
    monkeypatch.setattr(store_module, "INDEX_CODEBOOK_VECTORS", THRESHOLD)


def _config(dtype: str = "res4") -> IndexConfig:
    return IndexConfig(dim=DIM, dtype=dtype, residual_codebook="index")


def _codebook_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob("vectors-codebook-g*.npy"))


def _own_codebooks(path: Path) -> list[Path]:
    return sorted((path / "segments").glob("*/codebook.npy"))


def _small_commits(path: Path, dtype: str, commits: int, per: int = 20) -> dict[str, np.ndarray]:
    """``commits`` commits of ``per`` documents (~260 vectors each), then a deletion."""
    live: dict[str, np.ndarray] = {}
    with create(path, _config(dtype)) as writer:
        for c in range(commits):
            docs = _docs(100 + c, per)
            ids = [f"c{c}-{i}" for i in range(per)]
            writer.add(ids, docs)
            writer.commit()
            live |= dict(zip(ids, docs, strict=True))
        writer.delete(["c0-3", f"c{commits - 1}-0"])
        writer.commit()
    del live["c0-3"], live[f"c{commits - 1}-0"]
    return live


def _check_decoding_within_recorded_errors(index: Index, live: dict[str, np.ndarray]) -> None:
    """Every live document of a residual segment decodes within each token's recorded error."""
    for s, seg in enumerate(index.segments):
        if not codecs.is_residual(seg.dtype):
            continue
        assert seg.scales is not None
        rows = np.flatnonzero(seg.live)
        decoded, offsets = index.vectors(s, rows)
        for j, row in enumerate(rows):
            original = live[seg.doc_ids[row]]
            got = decoded[offsets[j] : offsets[j + 1]]
            errors = seg.scales[seg.offsets[row] : seg.offsets[row + 1]]
            # Encoded from the float32 vectors added, or, for documents of a float16 segment
            # rewritten under the codebook, from their float16 rounding.
            real = np.linalg.norm(got.astype(np.float64) - original, axis=1)
            half = original.astype(np.float16).astype(np.float64)
            real16 = np.linalg.norm(got.astype(np.float64) - half, axis=1)
            assert (real <= errors).all() or (real16 <= errors).all()


@pytest.mark.parametrize("dtype", ["res1", "res2", "res4"])
def test_many_small_commits_write_one_codebook(tmp_path, low_threshold, dtype) -> None:
    path = tmp_path / "idx"
    live = _small_commits(path, dtype, commits=14)
    manifest = json.loads((path / "manifest.json").read_text())
    # One codebook at the index root, none in any segment, every segment coded under it.
    assert _codebook_files(path) == [manifest["vectors_codebook"]["file"]]
    assert _own_codebooks(path) == []
    assert manifest["format_version"] == 5
    assert manifest["config"]["residual_codebook"] == "index"
    assert all("dtype" not in s and "codec" not in s for s in manifest["segments"])
    index = Index.open(path)
    assert [s.dtype for s in index.segments] == [dtype] * len(index.segments)
    assert all(s.codebook is index.vectors_codebook for s in index.segments)
    # Trained on the first commit reaching the threshold: the float16 segments before it were
    # rewritten into that commit's segment, so fewer segments than commits.
    assert 1 < len(index.segments) < 14
    codebook = index.vectors_codebook
    assert codebook is not None
    trained_on = manifest["vectors_codebook"]["codec"]["trained_on"]
    assert THRESHOLD <= trained_on < THRESHOLD + 300
    assert manifest["vectors_codebook"]["codec"] == codecs.residual_training(
        codebook, dtype, trained_on
    )
    assert codecs.residual_centroids(codebook, dtype) == codecs.num_centroids(
        trained_on, trained_on
    )
    assert sorted(index.doc_ids()) == sorted(live)
    assert verify(path) == []
    _check_decoding_within_recorded_errors(index, live)
    queries = _docs(7, 4, 2, 5)
    result = Retriever(index).search_embeddings(queries, k=10, candidates=len(live))
    assert [list(r) for r in result.doc_ids] == _brute_force_over_decoded(index, queries, 10)


def test_segments_before_the_threshold_are_float16_then_rewritten(tmp_path, low_threshold) -> None:
    path = tmp_path / "idx"
    with create(path, _config()) as writer:
        for c in range(4):  # ~1,040 vectors: below the threshold
            writer.add([f"a{c}-{i}" for i in range(20)], _docs(c, 20))
            writer.commit()
        assert [s.dtype for s in writer.index.segments] == ["float16"] * 4
        assert _codebook_files(path) == [] and writer.index.manifest.vectors_codebook is None
        writer.add([f"b{i}" for i in range(120)], _docs(50, 120))  # over it, with those four
        writer.commit()
        assert [s.dtype for s in writer.index.segments] == ["res4"]
        assert writer.index.segments[0].num_docs == 200
        assert writer.index.manifest.vectors_codebook is not None
        codec = writer.index.manifest.vectors_codebook.codec
        assert codec["trained_on"] == writer.index.segments[0].offsets[-1]
        writer.add(["tiny"], [_docs(60, 1)[0]])  # one document: coded too, no float16 now
        writer.commit()
        assert [s.dtype for s in writer.index.segments] == ["res4", "res4"]
    assert len(_codebook_files(path)) == 1 and _own_codebooks(path) == []


def test_last_commit_of_a_small_build_trains_the_codebook(tmp_path) -> None:
    path = tmp_path / "idx"
    with create(path, _config()) as writer:
        for c in range(3):
            writer.add([f"c{c}-{i}" for i in range(40)], _docs(c, 40))
            writer.commit()
        assert writer.index.manifest.vectors_codebook is None
        writer.commit(final=True)  # nothing pending: the float16 segments are rewritten
        assert [s.dtype for s in writer.index.segments] == ["res4"]
    assert len(_codebook_files(path)) == 1 and _own_codebooks(path) == []
    assert verify(path) == []


def test_cli_build_writes_one_codebook(tmp_path) -> None:
    """``latemm index --dtype res4``: commits of 40 documents, one codebook at the end."""
    from latemm.cli import main

    corpus, idx = tmp_path / "corpus.parquet", tmp_path / "idx"
    write_corpus(corpus, 300, dim=DIM)
    args = ["index", str(corpus), "--index", str(idx), "--quiet", "--dtype", "res4"]
    assert main([*args, "--commit-every", "40"]) == 0
    assert len(_codebook_files(idx)) == 1 and _own_codebooks(idx) == []
    index = Index.open(idx)
    assert index.config.residual_codebook == "index" and len(index) == 300
    assert {s.dtype for s in index.segments} == {"res4"}
    assert main(["verify", str(idx)]) == 0


def test_compaction_codes_everything_under_the_index_codebook(tmp_path, low_threshold) -> None:
    path = tmp_path / "idx"
    live = {f"c{c}-{i}": d for c in range(3) for i, d in enumerate(_docs(c, 30))}
    with create(path, _config()) as writer:
        for c in range(3):  # float16 segments: below the threshold
            writer.add([f"c{c}-{i}" for i in range(30)], _docs(c, 30))
            writer.commit()
        writer.delete(["c1-4"])
        del live["c1-4"]
        writer.compact()  # enough vectors to train: one segment under the index codebook
        assert [s.dtype for s in writer.index.segments] == ["res4"]
        first = _codebook_files(path)
        assert len(first) == 1 and _own_codebooks(path) == []
        _check_decoding_within_recorded_errors(writer.index, live)
        more = _docs(9, 40)
        writer.add([f"m{i}" for i in range(40)], more)
        live |= {f"m{i}": d for i, d in enumerate(more)}
        writer.commit()
        writer.compact()  # under the same codebook, not a new one
        assert len(writer.index.segments) == 1
        assert _codebook_files(path) == first
    index = Index.open(path)
    assert sorted(index.doc_ids()) == sorted(live) and verify(path) == []
    queries = _docs(8, 3, 2, 5)
    result = Retriever(index).search_embeddings(queries, k=10, candidates=len(live))
    assert [list(r) for r in result.doc_ids] == _brute_force_over_decoded(index, queries, 10)


def _rewrite_codebook(path: Path, array: np.ndarray) -> str:
    """Replace the index codebook and make the manifest vouch for it (size and checksum)."""
    manifest = json.loads((path / "manifest.json").read_text())
    entry = manifest["vectors_codebook"]
    np.save(path / entry["file"], array)
    entry["size"] = (path / entry["file"]).stat().st_size
    entry["sha256"] = sha256_file(path / entry["file"])
    (path / "manifest.json").write_text(json.dumps(manifest))
    return str(entry["file"])


def test_verify_and_open_report_a_damaged_codebook(tmp_path, low_threshold) -> None:
    path = tmp_path / "idx"
    _small_commits(path, "res2", commits=12)
    name = _codebook_files(path)[0]
    pristine = (path / name).read_bytes()
    # Flipped bytes: the checksum.
    damaged = bytearray(pristine)
    damaged[-5] ^= 0xFF
    (path / name).write_bytes(bytes(damaged))
    problems = verify(path)
    assert len(problems) == 1 and name in problems[0] and "checksum mismatch" in problems[0]
    with pytest.raises(IndexCorruptError, match=name):
        Index.open(path, verify="full")
    # Missing.
    (path / name).unlink()
    problems = verify(path)
    assert len(problems) == 1 and name in problems[0] and "missing" in problems[0]
    with pytest.raises(IndexCorruptError, match=name):
        Index.open(path)
    # Another dimension than config.dim, vouched for by the manifest: the shape check.
    (path / name).write_bytes(pristine)
    wrong = np.zeros((40, DIM // 2), np.float16)
    _rewrite_codebook(path, wrong)
    problems = verify(path)
    assert len(problems) == 1 and f"{name} is inconsistent with the manifest" in problems[0]
    assert "expected (K + 7, 32)" in problems[0]
    with pytest.raises(IndexCorruptError, match=r"expected \(K \+ 7, 32\)"):
        Index.open(path)
    # Fewer centroids than the manifest records (a codebook of another training).
    (path / name).write_bytes(pristine)
    original = np.load(path / name)
    _rewrite_codebook(path, original[1:])
    problems = verify(path)
    assert len(problems) == 1 and "centroids, the manifest records" in problems[0]


def test_manifest_refuses_an_inconsistent_codebook_entry(tmp_path, low_threshold) -> None:
    path = tmp_path / "idx"
    _small_commits(path, "res4", commits=12)
    manifest = json.loads((path / "manifest.json").read_text())
    # A version 4 reader's view: the entry cannot be there.
    old = json.loads(json.dumps(manifest))
    old["format_version"] = 4
    (path / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(IndexCorruptError, match="format version 4 does not have"):
        Index.open(path)
    # Segments without codebook.npy need the entry.
    lost = json.loads(json.dumps(manifest))
    del lost["vectors_codebook"]
    (path / "manifest.json").write_text(json.dumps(lost))
    with pytest.raises(IndexCorruptError, match="without codebook.npy but there is no index"):
        Index.open(path)
    # A name the index does not write.
    outside = json.loads(json.dumps(manifest))
    outside["vectors_codebook"]["file"] = "../codebook.npy"
    (path / "manifest.json").write_text(json.dumps(outside))
    with pytest.raises(IndexCorruptError, match="paths outside the index directory are refused"):
        Index.open(path)
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert verify(path) == []


def test_config_refuses_an_index_codebook_for_another_dtype() -> None:
    with pytest.raises(InputError, match="use it with dtype res1, res2 or res4"):
        IndexConfig(dim=DIM, dtype="pq1", residual_codebook="index")
    with pytest.raises(InputError, match="must be one of"):
        IndexConfig(dim=DIM, dtype="res4", residual_codebook="global")
    config = _config()
    assert IndexConfig.from_dict(config.to_dict()) == config
    assert "residual_codebook" not in IndexConfig(dim=DIM, dtype="res4").to_dict()


def test_crash_after_writing_the_codebook_changes_nothing(
    tmp_path, low_threshold, monkeypatch
) -> None:
    """A failure after the codebook file is written, before the manifest swap: the committed
    index is intact, and the orphan codebook is collected by the next writer."""
    path = tmp_path / "idx"
    with create(path, _config()) as writer:
        for c in range(3):
            writer.add([f"c{c}-{i}" for i in range(20)], _docs(c, 20))
            writer.commit()
    before = (path / "manifest.json").read_bytes()

    def crash(self, root):
        raise OSError(28, "No space left on device")

    real_write = Manifest.write
    monkeypatch.setattr(Manifest, "write", crash)
    with IndexWriter(path) as writer:
        writer.add([f"n{i}" for i in range(150)], _docs(40, 150))
        with pytest.raises(OSError, match="No space left"):
            writer.commit()
    monkeypatch.setattr(Manifest, "write", real_write)
    assert (path / "manifest.json").read_bytes() == before
    assert len(_codebook_files(path)) == 1  # the orphan
    index = Index.open(path)
    assert len(index) == 60 and index.manifest.vectors_codebook is None
    assert verify(path) == []
    with IndexWriter(path) as writer:  # opening collects it
        assert _codebook_files(path) == []
        writer.add([f"n{i}" for i in range(150)], _docs(40, 150))
        writer.commit()
    assert len(_codebook_files(path)) == 1 and _own_codebooks(path) == []
    assert len(Index.open(path)) == 210 and verify(path) == []


def test_index_written_with_per_segment_codebooks_opens_and_searches_unchanged(tmp_path) -> None:
    """A res4 index written by main at 8e663b7 (per-segment codebooks: a float16 segment, two
    residual ones, deletions; dim 16, ``faiss_factory="Flat"``, a small FDE) and the ids and
    scores main's exact search gave for ``queries.npy``: identical here, and appending to it
    keeps its per-segment codebooks. Regenerating it is never the fix for this test failing."""
    path = tmp_path / "old"
    shutil.copytree(MAIN_INDEX / "index", path)
    expected = json.loads((MAIN_INDEX / "expected.json").read_text())
    queries = list(np.load(MAIN_INDEX / "queries.npy"))
    assert verify(path) == []
    index = Index.open(path, verify="full")
    assert index.config.residual_codebook == "segment" and index.vectors_codebook is None
    assert [s.dtype for s in index.segments] == ["float16", "res4", "res4"]
    result = Retriever(index).search_embeddings(queries, k=5, candidates=len(index))
    assert [list(r) for r in result.doc_ids] == expected["doc_ids"]
    np.testing.assert_array_equal(np.asarray(result.scores), np.asarray(expected["scores"]))
    with IndexWriter(path) as writer:
        rng = np.random.default_rng(5)
        writer.add(
            [f"new{i}" for i in range(100)], [rng.standard_normal((12, 16)) for _ in range(100)]
        )
        writer.commit()
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == 3 and "vectors_codebook" not in manifest
    assert len(_own_codebooks(path)) == 3 and _codebook_files(path) == []
    assert verify(path) == []


def test_documents_deleted_in_the_training_commit_are_not_rewritten(
    tmp_path, low_threshold
) -> None:
    path = tmp_path / "idx"
    with create(path, _config()) as writer:
        for c in range(3):
            writer.add([f"a{c}-{i}" for i in range(20)], _docs(c, 20))
            writer.commit()
        writer.delete(["a0-1", "a2-19"])
        writer.add([f"b{i}" for i in range(150)], _docs(30, 150))
        writer.commit()
        assert [s.dtype for s in writer.index.segments] == ["res4"]
        assert writer.index.manifest.vectors_codebook is not None
    index = Index.open(path)
    assert len(index) == 208 and "a0-1" not in index and "a2-19" not in index
    assert not index.segments[0].deleted.any() and verify(path) == []
