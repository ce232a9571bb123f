"""Storage codecs, the trained ones (product quantisation, codebook per segment) above all:
round trips against faiss, the float16 fallback of small segments, damaged codebooks, and the
brute-force oracle over the decoded vectors for every dtype."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from index_store import Index, IndexConfig, IndexCorruptError, InputError, codecs, create, verify
from index_store.store import IndexWriter
from latemm.ranking.scoring import maxsim
from latemm.retrieval.retriever import Retriever
from tests.helpers import DIM


def _docs(seed: int, n: int, low: int = 8, high: int = 20) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal((int(t), DIM)).astype(np.float32) for t in rng.integers(low, high, n)
    ]


@pytest.mark.parametrize("dtype", ["pq1", "pq2"])
def test_round_trip_matches_faiss(dtype) -> None:
    x = np.concatenate(_docs(0, 150))
    codebook = codecs.train(x, dtype)
    assert codebook.shape == codecs.codebook_shape(dtype, DIM)
    codes, scales = codecs.encode(x, dtype, codebook)
    assert scales is None and codes.shape == (len(x), codecs.bytes_per_vector(dtype, DIM))
    pq = faiss.ProductQuantizer(DIM, codebook.shape[0], 4)
    faiss.copy_array_to_vector(codebook.ravel(), pq.centroids)
    # faiss's own encoder (ties aside) and decoder, bit for bit
    assert np.mean(pq.compute_codes(x) == codes) > 0.9999
    decoded = codecs.decode(codes, None, dtype, DIM, codebook)
    np.testing.assert_array_equal(decoded, pq.decode(codes))
    half = codecs.decode(codes, None, dtype, DIM, codebook, out=np.float16)
    np.testing.assert_array_equal(half, decoded.astype(np.float16))
    # lossy, and how lossy is measured by experiments/storage_quality.py; here: it is a
    # quantiser (each decoded vector is at least as near its own code as the mean is)
    assert np.mean(np.sum((decoded - x) ** 2, 1)) < np.mean(np.sum(x**2, 1))


def test_dimension_a_codec_cannot_split_is_refused() -> None:
    with pytest.raises(InputError, match="dim must be a multiple of 8; got dim=12"):
        IndexConfig(dim=12, dtype="pq1")
    assert IndexConfig(dim=12, dtype="pq2").dtype == "pq2"


def _build(path, dtype: str, **config: object) -> dict[str, np.ndarray]:
    """A small segment (float16 fallback for trained codecs), a large one, deletions;
    ``config``: other ``IndexConfig`` settings."""
    small, large = _docs(1, 5), _docs(2, 120)
    live = {f"s{i}": v for i, v in enumerate(small)} | {f"l{i}": v for i, v in enumerate(large)}
    with create(path, IndexConfig(dim=DIM, dtype=dtype, **config)) as writer:
        writer.add([f"s{i}" for i in range(5)], small)
        writer.commit()
        writer.add([f"l{i}" for i in range(120)], large)
        writer.commit()
        writer.delete(["s1", "l7"])
        writer.commit()
    del live["s1"], live["l7"]
    return live


def _brute_force_over_decoded(index: Index, queries: list[np.ndarray], k: int) -> list[list[str]]:
    ids = sorted(index.doc_ids())
    decoded = [index.get(i).vectors for i in ids]
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in decoded])])
    q_off = np.concatenate([[0], np.cumsum([len(q) for q in queries])])
    scores = maxsim(np.concatenate(queries), q_off, np.concatenate(decoded), offsets)
    return [[ids[j] for j in np.lexsort((np.array(ids), -row))[:k]] for row in scores]


@pytest.mark.parametrize("dtype", codecs.DTYPES)
def test_exact_search_equals_brute_force_over_decoded_vectors(tmp_path, dtype) -> None:
    path = tmp_path / "idx"
    live = _build(path, dtype)
    queries = [q for q in _docs(3, 4, 2, 5)]
    for _ in ("segments", "compacted"):
        index = Index.open(path)
        assert sorted(index.doc_ids()) == sorted(live)
        result = Retriever(index).search_embeddings(queries, k=10, candidates=len(live))
        assert [list(r) for r in result.doc_ids] == _brute_force_over_decoded(index, queries, 10)
        with IndexWriter(path) as writer:
            writer.compact()  # one segment: trained codecs retrain on the decoded vectors
    assert len(Index.open(path).segments) == 1


def test_small_segments_fall_back_to_float16(tmp_path) -> None:
    path = tmp_path / "idx"
    live = _build(path, "pq1")
    manifest = json.loads((path / "manifest.json").read_text())
    small, large = manifest["segments"]
    assert small["dtype"] == "float16" and "codebook.npy" not in small["files"]
    assert "dtype" not in large and "codebook.npy" in large["files"]
    index = Index.open(path)
    assert [s.dtype for s in index.segments] == ["float16", "pq1"]
    np.testing.assert_array_equal(index.get("s0").vectors, live["s0"].astype(np.float16))
    assert index.get("l0").vectors.shape == live["l0"].shape
    vectors, offsets = index.vectors(1, np.array([0, 3]), dtype=np.float16)
    assert vectors.dtype == np.float16 and offsets[-1] == len(vectors)
    np.testing.assert_array_equal(vectors, index.vectors(1, np.array([0, 3]))[0].astype(np.float16))
    with pytest.raises(InputError, match="float32 or float16"):
        index.vectors(1, np.array([0]), dtype=np.int8)
    assert verify(path) == []


def _codebook(path):
    (seg,) = [s for s in (path / "segments").iterdir() if (s / "codebook.npy").is_file()]
    return seg / "codebook.npy"


def test_damaged_codebook_is_refused_by_name(tmp_path) -> None:
    path = tmp_path / "idx"
    _build(path, "pq1")
    target = _codebook(path)
    data = bytearray(target.read_bytes())
    data[-3] ^= 0x10
    target.write_bytes(bytes(data))
    problems = verify(path)
    assert len(problems) == 1 and "codebook.npy: checksum mismatch" in problems[0]
    with pytest.raises(IndexCorruptError, match="codebook.npy: checksum mismatch"):
        Index.open(path)
    target.unlink()
    assert "codebook.npy: missing" in verify(path)[0]
    with pytest.raises(IndexCorruptError, match="codebook.npy: missing"):
        Index.open(path)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 16, 4), np.float32), r"codebook.npy has shape \(2, 16, 4\), expected"),
        (np.full((4, 16, 4), np.nan, np.float32), "codebook.npy holds NaN"),
        (np.zeros((4, 16, 4), np.float64), "codebook.npy: 3-D float64 array, expected 3-D float32"),
    ],
)
def test_codebook_is_validated_before_use(tmp_path, array, message) -> None:
    # A codebook replaced with one whose checksum is not checked (verify="none") is still
    # refused on its header, dtype, shape and values.
    path = tmp_path / "idx"
    _build(path, "pq1")
    np.save(_codebook(path), array)
    with pytest.raises(IndexCorruptError, match=message):
        Index.open(path, verify="none")


def test_manifest_must_list_the_codebook(tmp_path) -> None:
    path = tmp_path / "idx"
    _build(path, "pq1")
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["segments"][1]["files"]["codebook.npy"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="a pq1 segment has exactly"):
        Index.open(path)
    manifest["segments"][1]["dtype"] = "int8"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="only float16 is"):
        Index.open(path)


@pytest.mark.parametrize("out", [np.float32, np.float16])
def test_int8_decode_in_blocks_equals_one_numpy_pass(out, monkeypatch) -> None:
    monkeypatch.setattr(codecs, "_SCALE_BLOCK_ROWS", 7)  # several blocks and a short last one
    rng = np.random.default_rng(3)
    codes = rng.integers(-127, 128, (50, 16)).astype(np.int8)
    scales = rng.random(50).astype(np.float32) / 100
    expected = (codes.astype(np.float32) * scales[:, None]).astype(out)
    got = codecs.decode(codes, scales, "int8", 16, out=out)
    assert got.dtype == out
    np.testing.assert_array_equal(got, expected)
