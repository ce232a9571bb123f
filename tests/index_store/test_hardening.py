"""Index directories are data (issue 16): manifest paths stay inside the index, malformed
manifests and crafted files are clear errors, the writer never takes over or cleans a folder
that is not its own, readers see whole commits, metadata types and faiss factories are checked
before anything is written, and a full disk names the file."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from index_store import (
    Index,
    IndexConfig,
    IndexCorruptError,
    IndexFormatError,
    IndexWriter,
    InputError,
    create,
    verify,
)
from index_store.errors import StorageError
from latemm.retrieval.retriever import Retriever
from tests.helpers import SMALL_DIM as DIM

REPO = Path(__file__).resolve().parents[2]


def _docs(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(t), DIM)).astype(np.float32) for t in rng.integers(1, 6, n)]


@pytest.fixture
def index_path(tmp_path) -> Path:
    path = tmp_path / "idx"
    with create(path, IndexConfig(dim=DIM)) as writer:
        writer.add([f"d{i}" for i in range(6)], _docs(6), metadata=pa.table({"year": range(6)}))
        writer.commit()
        writer.delete(["d0"])
        writer.commit()
    return path


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _write_manifest(path: Path, payload: object) -> None:
    (path / "manifest.json").write_text(json.dumps(payload))


def _segment(path: Path) -> Path:
    (name,) = [s["name"] for s in _manifest(path)["segments"]]
    return path / "segments" / name


def _replace_file(path: Path, fname: str, data: bytes) -> None:
    """Replace a segment file and update the manifest's size and checksum to match (a crafted
    file, not a damaged one)."""
    (_segment(path) / fname).write_bytes(data)
    manifest = _manifest(path)
    manifest["segments"][0]["files"][fname] = {
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    _write_manifest(path, manifest)


def _npy(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def _every_entry_point(path: Path) -> list[Exception]:
    """Open, verify, search, delete: the error each raises."""
    errors: list[Exception] = []
    for action in (
        lambda: Index.open(path),
        lambda: verify(path),
        lambda: Retriever(path).search_embeddings([np.ones((2, DIM), np.float32)], k=2),
        lambda: IndexWriter(path).delete(["d1"]),
    ):
        with pytest.raises(IndexCorruptError) as err:
            action()
        errors.append(err.value)
    return errors


# ------------------------------------------------------------------ paths in the manifest
@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda m: m["segments"][0].update(name="../../other/segments/seg-g000001"), "name"),
        (
            lambda m: m["segments"][0]["deleted"].update(file="../../../../etc/passwd"),
            "deleted.file",
        ),
        (
            lambda m: m["segments"][0]["files"].update(
                {"../../x.npy": m["segments"][0]["files"].pop("vectors.npy")}
            ),
            "files",
        ),
        (
            lambda m: m.update(
                rejects={
                    "file": "../rejects-g000001.parquet",
                    "size": 1,
                    "sha256": "0" * 64,
                    "count": 1,
                }
            ),
            "rejects.file",
        ),
    ],
)
def test_manifest_paths_outside_the_index_are_refused(index_path, edit, field) -> None:
    manifest = _manifest(index_path)
    edit(manifest)
    _write_manifest(index_path, manifest)
    for error in _every_entry_point(index_path):
        assert "manifest.json" in str(error) and field in str(error)
        assert "outside the index directory are refused" in str(error)


# ------------------------------------------------------------------ malformed manifests
@pytest.mark.parametrize(
    ("edit", "kind", "message"),
    [
        (lambda m: [m], IndexCorruptError, "expected a JSON object, got list"),
        (
            lambda m: {k: v for k, v in m.items() if k != "segments"},
            IndexCorruptError,
            "field 'segments': missing",
        ),
        (
            lambda m: {**m, "generation": "two"},
            IndexCorruptError,
            "field 'generation': expected int",
        ),
        (lambda m: {**m, "format_version": 99}, IndexFormatError, "format_version 99"),
        (
            lambda m: {
                **m,
                "config": {**m["config"], "fde": {**m["config"]["fde"], "num_repetitions": 0}},
            },
            IndexCorruptError,
            "field 'config': fde: FDEConfig.num_repetitions",
        ),
        (
            lambda m: {**m, "config": {**m["config"], "faiss_factory": "HNSW0"}},
            IndexCorruptError,
            "field 'config': IndexConfig.faiss_factory 'HNSW0'",
        ),
        (
            lambda m: {**m, "segments": [{**m["segments"][0], "num_docs": "6"}]},
            IndexCorruptError,
            "field 'segments[0].num_docs': expected int",
        ),
        (
            lambda m: {**m, "segments": [{**m["segments"][0], "files": {}}]},
            IndexCorruptError,
            "field 'segments[0].files'",
        ),
    ],
)
def test_malformed_manifests_name_the_file_and_field(index_path, edit, kind, message) -> None:
    _write_manifest(index_path, edit(_manifest(index_path)))
    for action in (lambda: Index.open(index_path), lambda: verify(index_path)):
        with pytest.raises(kind) as err:
            action()
        assert message in str(err.value) and "manifest.json" in str(err.value)


def test_index_naming_a_regular_file(tmp_path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("hello")
    for action in (lambda: Index.open(target), lambda: create(target, IndexConfig(dim=DIM))):
        with pytest.raises(InputError, match="is a file, not an index directory"):
            action()
    assert target.read_text() == "hello"


# ------------------------------------------------------------------ the folder is the user's
def test_writer_refuses_a_non_index_folder(tmp_path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"jpeg")
    with pytest.raises(InputError) as err:
        create(folder, IndexConfig(dim=DIM))
    assert f"{folder} is not empty and is not a latemm index" in str(err.value)
    assert "holiday.jpg" in str(err.value) and "Choose a new or empty directory" in str(err.value)
    assert sorted(p.name for p in folder.iterdir()) == ["holiday.jpg"]


def test_garbage_collection_keeps_user_files(index_path) -> None:
    user_files = [
        index_path / "notes.txt",
        index_path / ".notes.tmp-12",
        index_path / "segments" / "notes.txt",
        index_path / "segments" / "backup",
        _segment(index_path) / "README",
    ]
    for f in user_files:
        f.write_text("mine")
    with create(index_path, IndexConfig(dim=DIM)) as writer:
        writer.add(["n1"], _docs(1, seed=3))
        writer.commit()
        writer.compact()
    assert all(f.read_text() == "mine" for f in user_files[:4])
    assert len(Index.open(index_path)) == 6


# ------------------------------------------------------------------ settings
def test_faiss_factory_is_validated_before_faiss_sees_it() -> None:
    for factory in ("HNSW0", "HNSW1", "IVF0,Flat", "IVF4", "PQ7", "IVF4,PQ8x0", "OPQ16,IVF4"):
        with pytest.raises(InputError) as err:
            IndexConfig(dim=DIM, faiss_factory=factory)
        assert f"faiss_factory {factory!r}" in str(err.value)
        assert "Accepted forms: Flat; HNSW<M>" in str(err.value)


def test_failed_training_leaves_no_index(tmp_path) -> None:
    path = tmp_path / "i"
    with create(path, IndexConfig(dim=DIM, faiss_factory="IVF64,Flat")) as writer:
        writer.add(["a", "b"], _docs(2))
        with pytest.raises(InputError, match="training the faiss index 'IVF64,Flat' on 2"):
            writer.commit()
    assert not (path / "manifest.json").exists()
    with create(
        path, IndexConfig(dim=DIM, faiss_factory="Flat")
    ) as writer:  # not locked to the failed settings
        writer.add(["a"], _docs(1))
        writer.commit()
    assert Index.open(path).config.faiss_factory == "Flat"


def test_reopening_with_other_settings_names_both(index_path) -> None:
    with pytest.raises(IndexFormatError) as err:
        create(index_path, IndexConfig(dim=DIM, dtype="int8", faiss_factory="HNSW16"))
    message = str(err.value)
    assert "dtype: recorded 'float16', requested 'int8'" in message
    # The default first stage (auto) is recorded as PQ1280x4fs for the 10,240-d default FDE.
    assert "faiss_factory: recorded 'PQ1280x4fs', requested 'HNSW16'" in message
    assert "Leave the options out to use the recorded ones" in message


@pytest.mark.parametrize("pending", [False, True])
def test_metadata_types_are_kept_across_commits(index_path, pending) -> None:
    with create(index_path, IndexConfig(dim=DIM)) as writer:
        if pending:
            writer.add(["p"], _docs(1), metadata=pa.table({"tag": [1]}))
            column, known = "tag", "int64"
        else:
            column, known = "year", "int64"
        with pytest.raises(InputError) as err:
            writer.add(
                ["x"], _docs(1, seed=2), metadata=pa.table({column: ["2020"]}), source="b.parquet"
            )
        assert (
            f"b.parquet: metadata column {column!r} has type string here but {known} in the index"
            in str(err.value)
        )
        assert f"cast it to {known}" in str(err.value)
        # A null-typed column (no values) fits any type.
        writer.add(["y"], _docs(1, seed=4), metadata=pa.table({column: pa.nulls(1)}))
        writer.commit()
    result = Retriever(index_path).search_embeddings(
        [np.ones((2, DIM), np.float32)], k=3, where=f"{column} IS NOT NULL"
    )
    assert result.doc_ids.shape == (1, 3)


# ------------------------------------------------------------------ crafted files
def _flat_faiss_of_other_type() -> bytes:
    import faiss

    index = faiss.IndexHNSWFlat(16, 4, faiss.METRIC_INNER_PRODUCT)
    index.add(np.ones((5, 16), np.float32))
    return faiss.serialize_index(index).tobytes()


@pytest.mark.parametrize(
    ("fname", "make", "message"),
    [
        ("fde.faiss", lambda seg: _flat_faiss_of_other_type(), "starts with b'IHNf'"),
        (
            "fde.faiss",
            lambda seg: (seg / "fde.faiss").read_bytes()[:40] + b"\0" * 64,
            "flat codes do not hold",
        ),
        ("fde.faiss", lambda seg: b"IxFI" + b"\xff" * 60, "holds"),
        (
            "offsets.npy",
            lambda seg: _npy(np.load(seg / "offsets.npy").astype(np.float64)),
            "expected 1-D int64",
        ),
        ("offsets.npy", lambda seg: _npy(np.load(seg / "offsets.npy")[None]), "expected 1-D int64"),
        (
            "offsets.npy",
            lambda seg: _npy(np.load(seg / "offsets.npy")[::-1].copy()),
            "offsets.npy is not increasing",
        ),
        ("offsets.npy", lambda seg: _npy(np.load(seg / "offsets.npy") * 2), "not increasing"),
        (
            "vectors.npy",
            lambda seg: _npy(np.load(seg / "vectors.npy")[:, :4].copy()),
            "vectors.npy has shape",
        ),
        (
            "vectors.npy",
            lambda seg: _npy(np.load(seg / "vectors.npy").astype(np.float32)),
            "expected 2-D float16",
        ),
        (
            "vectors.npy",
            lambda seg: _npy(np.array([{"a": 1}], dtype=object), allow_pickle=True),
            "needs pickle, which is never loaded",
        ),
    ],
)
def test_crafted_files_with_matching_checksums(index_path, fname, make, message) -> None:
    _replace_file(index_path, fname, make(_segment(index_path)))
    (problem,) = verify(index_path)
    assert fname in problem and message in problem

    def search() -> None:
        Retriever(index_path).search_embeddings([np.ones((2, DIM), np.float32)], k=2)

    with pytest.raises(IndexCorruptError) as err:
        search()
    assert fname in str(err.value) and message in str(err.value)


def test_verify_catches_a_dim_edit(index_path) -> None:
    manifest = _manifest(index_path)
    manifest["config"]["dim"] = manifest["config"]["fde"]["dimension"] = DIM * 2
    _write_manifest(index_path, manifest)
    (problem,) = verify(index_path)
    assert "vectors.npy has shape" in problem and "config.dim" in problem


# ------------------------------------------------------------------ disk full
def test_disk_full_names_the_file_and_keeps_the_last_commit(index_path, monkeypatch) -> None:
    before = Retriever(index_path).search_embeddings([np.ones((2, DIM), np.float32)], k=4)
    real_fsync = os.fsync

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with create(index_path, IndexConfig(dim=DIM)) as writer:
        writer.add(["big"], _docs(1, seed=5))
        monkeypatch.setattr(os, "fsync", full)
        with pytest.raises(StorageError) as err:
            writer.commit()
        monkeypatch.setattr(os, "fsync", real_fsync)
    assert "no space left on device" in str(err.value)
    assert f"writing {index_path / 'segments'}" in str(err.value)
    assert "the last commit is intact" in str(err.value)
    assert verify(index_path) == []
    after = Retriever(index_path).search_embeddings([np.ones((2, DIM), np.float32)], k=4)
    assert (after.doc_ids == before.doc_ids).all()
    assert not [p for p in (index_path / "segments").iterdir() if p.name.startswith(".tmp")]


# ------------------------------------------------------------------ readers see whole commits
WRITER_LOOP = """
import sys, time, numpy as np
from index_store import IndexWriter
path, seconds = sys.argv[1], float(sys.argv[2])
rng = np.random.default_rng(1)
end, n, rounds = time.time() + seconds, 1000, 0
with IndexWriter(path) as writer:
    while time.time() < end:
        ids = [f"w{n + i}" for i in range(5)]
        n += 5
        writer.add(ids, [rng.standard_normal((3, 8)).astype(np.float32) for _ in ids])
        writer.commit()
        writer.delete([ids[0]])
        writer.commit()
        if rounds % 3 == 2:
            writer.compact()
        rounds += 1
print(rounds)
"""


def test_readers_see_whole_commits_while_a_writer_compacts(index_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER_LOOP, str(index_path), "4"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    rng = np.random.default_rng(0)
    long_lived = Retriever(Index.open(index_path))
    searches, failures = 0, []
    deadline = time.time() + 15
    while writer.poll() is None and time.time() < deadline:
        queries = [rng.standard_normal((3, DIM)).astype(np.float32) for _ in range(2)]
        for retriever in (long_lived, None):
            try:
                r = retriever or Retriever(Index.open(index_path))
                result = r.search_embeddings(queries, k=3, where="doc_id IS NOT NULL")
                assert result.doc_ids.shape == (2, 3)
                searches += 1
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                failures.append(repr(exc))
    out, err = writer.communicate(timeout=30)
    assert writer.returncode == 0, err
    assert int(out) >= 3, "the writer made too few rounds to test anything"
    assert searches > 10 and failures == []
    assert verify(index_path) == []


def test_a_file_removed_while_it_is_checked_reads_as_missing(tmp_path, monkeypatch) -> None:
    """A writer's commit can remove a file between a reader's checks of it; the reader must
    see it as missing (and retry on the new manifest), not fail with FileNotFoundError."""
    from index_store import segment
    from index_store.manifest import FileEntry

    (tmp_path / "a.npy").write_bytes(b"x" * 10)
    entry = FileEntry("a.npy", 10, hashlib.sha256(b"x" * 10).hexdigest())
    assert segment.check_files(tmp_path, (entry,), full=True) == []

    def vanished(path: Path) -> str:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")

    monkeypatch.setattr(segment, "sha256_file", vanished)
    assert segment.check_files(tmp_path, (entry,), full=True) == [f"{tmp_path / 'a.npy'}: missing"]
