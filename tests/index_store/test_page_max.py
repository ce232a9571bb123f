"""float16 segments store each document's largest magnitude (``page-max.npy``), which the
rescoring pass's error bound needs: written with the segment, checked by ``verify`` against the
vectors, and optional, so that segments written before it open and search as before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from index_store import Index, IndexConfig, codecs, create, verify
from index_store.errors import IndexCorruptError
from index_store.fsio import sha256_file
from latemm.ranking.scoring import _max_abs, maxsim, maxsim_half
from latemm.retrieval.retriever import Retriever
from tests.helpers import DIM


def _docs(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    return [rng.standard_normal((int(t), DIM)).astype(np.float32) for t in rng.integers(1, 30, n)]


def _build(path: Path, docs: list[np.ndarray], dtype: str = "float16") -> Index:
    with create(path, IndexConfig(dim=DIM, dtype=dtype, faiss_factory="Flat")) as writer:
        half = len(docs) // 2
        writer.add([f"d{i}" for i in range(half)], docs[:half])
        writer.commit()
        writer.add([f"d{i}" for i in range(half, len(docs))], docs[half:])
        writer.commit()
    return Index.open(path, verify="full")


def test_page_magnitudes_equal_the_largest_magnitude_of_each_document() -> None:
    rng = np.random.default_rng(0)
    docs = [d.astype(np.float16) for d in _docs(rng, 40)]
    docs[3][2, 5] = -np.float16(60000)  # the largest by far, negative
    docs[7][:] = -0.0
    flat = np.concatenate(docs)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    got = codecs.page_magnitudes(flat, offsets)
    assert got.dtype == np.float16
    want = np.array([np.abs(d.astype(np.float32)).max() for d in docs], dtype=np.float16)
    np.testing.assert_array_equal(got, want)
    one_length = np.concatenate(docs[:4]).astype(np.float16)[: 4 * 3].reshape(4, 3, DIM)
    np.testing.assert_array_equal(
        codecs.page_magnitudes(one_length.reshape(-1, DIM), np.arange(5) * 3),
        _max_abs(one_length).astype(np.float16),
    )


def test_float16_segments_store_them_and_other_codecs_do_not(tmp_path) -> None:
    rng = np.random.default_rng(1)
    docs = _docs(rng, 30)
    index = _build(tmp_path / "f16", docs)
    for seg in index.segments:
        assert seg.page_max is not None and (seg.path / "page-max.npy").is_file()
        np.testing.assert_array_equal(
            seg.page_max, codecs.page_magnitudes(seg.vectors, seg.offsets)
        )
    assert index.manifest.written_version == 3
    int8 = _build(tmp_path / "int8", docs, "int8")
    assert all(seg.page_max is None for seg in int8.segments)
    assert not list((tmp_path / "int8").rglob("page-max.npy"))


def test_rescoring_with_stored_magnitudes_equals_reading_them(tmp_path) -> None:
    rng = np.random.default_rng(2)
    docs = _docs(rng, 30)
    index = _build(tmp_path / "idx", docs)
    seg = index.segments[0]
    query = rng.standard_normal((5, DIM)).astype(np.float32)
    rows = np.array([4, 0, 9, 2])
    args = (query, np.array([0, 5]), seg.vectors, seg.offsets)
    stored = maxsim_half(*args, rows=rows, page_max=seg.page_max)
    read = maxsim_half(*args, rows=rows)
    np.testing.assert_array_equal(stored[0], read[0])
    np.testing.assert_array_equal(stored[1], read[1])


def _drop_page_max(path: Path, version: int) -> None:
    """The index as a latemm before page magnitudes would have written it."""
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = version
    for entry in manifest["segments"]:
        entry["files"].pop("page-max.npy")
        (path / "segments" / entry["name"] / "page-max.npy").unlink()
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_segments_written_before_them_open_and_search_as_before(tmp_path) -> None:
    rng = np.random.default_rng(3)
    docs = _docs(rng, 40)
    new = _build(tmp_path / "new", docs)
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    _drop_page_max(tmp_path / "old", 1)
    old = Index.open(tmp_path / "old", verify="full")
    assert verify(tmp_path / "old") == []
    assert all(seg.page_max is None for seg in old.segments)
    queries = [rng.standard_normal((4, DIM)).astype(np.float32) for _ in range(3)]
    got = [Retriever(ix).search_embeddings(queries, k=5, candidates=40) for ix in (old, new)]
    assert [list(r) for r in got[0].doc_ids] == [list(r) for r in got[1].doc_ids]
    np.testing.assert_array_equal(np.asarray(got[0].scores), np.asarray(got[1].scores))
    # ...and equal brute force over the stored vectors.
    flat = np.concatenate([d.astype(np.float16).astype(np.float32) for d in docs])
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    for q, row in zip(queries, got[0].doc_ids, strict=True):
        scores = maxsim(q, np.array([0, len(q)]), flat, offsets)[0]
        want = [f"d{i}" for i in np.argsort(-scores, kind="stable")[:5]]
        assert list(row) == want


def test_a_version_2_manifest_listing_them_is_refused(tmp_path) -> None:
    _build(tmp_path / "idx", _docs(np.random.default_rng(4), 10))
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["format_version"] == 3
    manifest["format_version"] = 2
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="page-max.npy, which format version 2"):
        Index.open(tmp_path / "idx")


def test_verify_finds_magnitudes_that_do_not_match_the_vectors(tmp_path) -> None:
    # A file rewritten with its checksum updated passes the checksum: verify recomputes it.
    index = _build(tmp_path / "idx", _docs(np.random.default_rng(5), 10))
    seg = index.segments[1]
    wrong = seg.page_max.copy()
    wrong[0] = np.float16(wrong[0] / 2)
    target = seg.path / "page-max.npy"
    np.save(target, wrong)
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    info = manifest["segments"][1]["files"]["page-max.npy"]
    info.update(size=target.stat().st_size, sha256=sha256_file(target))
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(manifest))
    problems = verify(tmp_path / "idx")
    assert len(problems) == 1 and "page-max.npy does not hold the largest magnitude" in problems[0]
