"""The fast write path keeps what the slower one guaranteed: buffered vectors are the index's
own, checksums taken while writing are the files' checksums, and a writer that reuses its open
segments after a commit sees what a fresh reader sees."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest

from fde import encode_documents
from index_store import Index, IndexConfig, InputError, create, verify
from index_store.fsio import save_bytes, save_npy
from tests.helpers import SMALL_DIM as DIM


@pytest.mark.parametrize(
    "array",
    [
        np.arange(11, dtype=np.int64),
        np.linspace(-3, 3, 96, dtype=np.float32).reshape(12, DIM).astype(np.float16),
        np.zeros((0, 16), np.uint8),
        np.array([True, False, True]),
        np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2],  # not contiguous
    ],
)
def test_save_npy_writes_np_save_bytes_and_returns_their_sha256(tmp_path, array) -> None:
    digest = save_npy(tmp_path / "a.npy", array)
    written = (tmp_path / "a.npy").read_bytes()
    expected = io.BytesIO()
    np.save(expected, array, allow_pickle=False)
    assert written == expected.getvalue()
    assert digest == hashlib.sha256(written).hexdigest()
    assert save_bytes(tmp_path / "b", written) == digest
    assert (tmp_path / "b").read_bytes() == written


def test_save_npy_refuses_object_arrays(tmp_path) -> None:
    with pytest.raises(ValueError, match="object array"):
        save_npy(tmp_path / "a.npy", np.array(["x", None], dtype=object))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_caller_reusing_its_buffer_after_add_changes_nothing(tmp_path, dtype) -> None:
    rng = np.random.default_rng(0)
    flat = rng.standard_normal((9, DIM)).astype(np.float32)
    expected = flat.astype(dtype).astype(np.float32)
    offsets = np.array([0, 4, 9])
    with create(tmp_path / "idx", IndexConfig(dim=DIM, dtype=dtype)) as writer:
        writer.add(["a", "b"], flat, offsets=offsets)
        flat[:] = 7.0  # the caller fills its buffer with the next batch before the commit
        writer.commit()
    index = Index.open(tmp_path / "idx")
    np.testing.assert_array_equal(index.get("a").vectors, expected[:4])
    np.testing.assert_array_equal(index.get("b").vectors, expected[4:])
    assert verify(tmp_path / "idx") == []
    # The FDEs faiss holds are those of the stored (rounded) vectors, as compaction recomputes.
    segment = index.segments[0]
    stored = segment.faiss_index().reconstruct_n(0, segment.num_docs)
    np.testing.assert_array_equal(
        stored, encode_documents(expected, index.config.fde_config, offsets=offsets)
    )


def test_writer_after_commits_sees_what_a_fresh_reader_sees(tmp_path) -> None:
    rng = np.random.default_rng(1)
    with create(tmp_path / "idx", IndexConfig(dim=DIM)) as writer:
        for batch in range(3):
            ids = [f"{batch}-{i}" for i in range(4)]
            writer.add(ids, [rng.standard_normal((3, DIM)).astype(np.float32) for _ in ids])
            writer.commit()
        writer.delete(["1-2"])
        writer.commit()
        fresh = Index.open(tmp_path / "idx")
        assert [s.entry for s in writer.index.segments] == [s.entry for s in fresh.segments]
        assert list(writer.index.doc_ids()) == list(fresh.doc_ids())
        assert "1-2" not in writer.index and len(writer.index) == 11
        writer.compact()
        assert len(writer.index.segments) == 1
        assert list(writer.index.doc_ids()) == list(Index.open(tmp_path / "idx").doc_ids())


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_float16_input_is_stored_as_given_and_the_callers_buffer_stays_its_own(
    tmp_path, dtype
) -> None:
    rng = np.random.default_rng(2)
    half = rng.standard_normal((9, DIM)).astype(np.float16)
    half[6] = -0.0  # a padding vector (negative zero is zero) of document "b"
    expected = half.astype(np.float32)
    with create(tmp_path / "idx", IndexConfig(dim=DIM, dtype=dtype)) as writer:
        writer.add(["a", "b"], half, offsets=np.array([0, 4, 9]))
        half[:] = 3.0
        writer.commit()
    index = Index.open(tmp_path / "idx")
    assert index.get("b").vectors.shape == (4, DIM)
    if dtype != "int8":  # exact codecs: the float16 values themselves
        np.testing.assert_array_equal(index.get("a").vectors, expected[:4])
        np.testing.assert_array_equal(index.get("b").vectors, np.delete(expected, 6, 0)[4:])
    assert verify(tmp_path / "idx") == []


def test_values_beyond_float16_range_are_refused_before_anything_changes(tmp_path) -> None:
    rng = np.random.default_rng(3)
    with create(tmp_path / "idx", IndexConfig(dim=DIM, dtype="float16")) as writer:
        writer.add(["a"], [rng.standard_normal((2, DIM)).astype(np.float32)])
        writer.commit()
        big = rng.standard_normal((5, DIM)).astype(np.float32)
        big[3, 1] = 70000.0  # finite in float32, inf in float16
        with pytest.raises(
            InputError,
            match=r"batch, row 1: document 'a' has values beyond "
            r"float16's range \(\+-65504\) in vector 1; this index stores float16",
        ):
            writer.add(["b", "a"], big, offsets=np.array([0, 2, 5]), upsert=True)
        assert writer.pending_documents == 0
        writer.commit()
        assert sorted(writer.index.doc_ids()) == ["a"]
    with create(tmp_path / "f32", IndexConfig(dim=DIM, dtype="float32")) as writer:
        assert writer.add(["b", "a"], big, offsets=np.array([0, 2, 5])) == 2
