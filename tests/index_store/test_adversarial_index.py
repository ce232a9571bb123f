"""An index directory under attack, through the CLI: every file truncated, bit-flipped or
missing, malformed manifests, crafted files with matching checksums, a stale lock, two writers,
a reader during a write, and kill -9 during compaction. Each case ends in a clear
``latemm CMD: error: ...`` (exit 2, no traceback), a ``verify`` report naming the file
(exit 1), or the right answer."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latemm.cli import main
from tests.helpers import DIM

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """One index (3 segments, doc-3 deleted by a bitmap) and a queries file, built once."""
    root = tmp_path_factory.mktemp("adversarial")
    rng = np.random.default_rng(0)
    docs = [rng.standard_normal((int(t), DIM)).astype(np.float32) for t in rng.integers(2, 9, 60)]
    pq.write_table(
        pa.table(
            {
                "doc_id": [f"doc-{i}" for i in range(60)],
                "embedding": [d.tolist() for d in docs],
                "year": [2000 + i for i in range(60)],
            }
        ),
        root / "corpus.parquet",
    )
    queries = [rng.standard_normal((3, DIM)).astype(np.float32) for _ in range(4)]
    pq.write_table(
        pa.table(
            {"query_id": ["q0", "q1", "q2", "q3"], "embedding": [q.tolist() for q in queries]}
        ),
        root / "queries.parquet",
    )
    idx = root / "idx"
    # float16: its searches read fde.faiss (a residual index's default centroid stage does not)
    args = ["index", str(root / "corpus.parquet"), "--index", str(idx), "--dtype", "float16"]
    args.append("--quiet")
    assert main([*args, "--commit-every", "20", "--batch-size", "20"]) == 0
    assert main(["delete", str(idx), "--ids", "doc-3"]) == 0
    (idx / "LOCK").unlink()
    return idx, root / "queries.parquet"


@pytest.fixture
def index(built, tmp_path) -> Path:
    shutil.copytree(built[0], tmp_path / "idx")
    return tmp_path / "idx"


@pytest.fixture
def queries(built) -> Path:
    return built[1]


def _search(index: Path, queries: Path, out: Path) -> int:
    return main(["search", str(index), str(queries), "--out", str(out), "--k", "5", "--quiet"])


def _clean_error(capsys, command: str, *names: str) -> str:
    err = capsys.readouterr().err
    assert f"latemm {command}: error: " in err and "Traceback" not in err
    assert all(name in err for name in names), err
    return err


def _manifest(index: Path) -> dict:
    return json.loads((index / "manifest.json").read_text())


def _target(index: Path, fname: str) -> Path:
    """The file of the first segment (the one with the deletion bitmap), or the manifest."""
    if fname == "manifest.json":
        return index / fname
    entry = _manifest(index)["segments"][0]
    name = entry["deleted"]["file"] if fname == "deleted" else fname
    return index / "segments" / entry["name"] / name


FILES = ["vectors.npy", "offsets.npy", "fde.faiss", "meta.parquet", "deleted", "manifest.json"]


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "missing"])
@pytest.mark.parametrize("fname", FILES)
def test_damaged_file(index, queries, tmp_path, capsys, fname, damage) -> None:
    target = _target(index, fname)
    data = bytearray(target.read_bytes())
    if damage == "missing":
        target.unlink()
    elif damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    else:
        # In the manifest, the first checksum's first digit (every flip of bit 4 of a hex digit
        # is not hex); elsewhere, the middle byte.
        at = data.index(b'"sha256": "') + 11 if fname == "manifest.json" else len(data) // 2
        data[at] ^= 0x10
        target.write_bytes(bytes(data))
    shown = target.name
    if fname == "manifest.json":
        assert main(["verify", str(index)]) == 2
        _clean_error(capsys, "verify", "manifest.json")
    else:
        assert main(["verify", str(index)]) == 1
        err = capsys.readouterr().err
        assert shown in err and "1 problem(s)" in err and "Traceback" not in err
    assert _search(index, queries, tmp_path / "run.parquet") == 2
    _clean_error(capsys, "search", shown)
    assert main(["info", str(index)]) == 2
    _clean_error(capsys, "info", shown)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format_version=7), "format_version 7; this latemm reads version(s) 1"),
        (lambda m: m.pop("segments"), "field 'segments': missing"),
        (
            lambda m: m["segments"][0].update(name="../../../elsewhere/segments/seg-g000001"),
            "field 'segments[0].name'",
        ),
        (
            lambda m: m["segments"][0]["deleted"].update(file="../../../../etc/passwd"),
            "field 'segments[0].deleted.file'",
        ),
    ],
    ids=["unknown-version", "missing-key", "segment-outside", "bitmap-outside"],
)
def test_malformed_manifest(index, queries, tmp_path, capsys, edit, message) -> None:
    manifest = _manifest(index)
    edit(manifest)
    (index / "manifest.json").write_text(json.dumps(manifest))
    for command in (
        ["verify", str(index)],
        ["info", str(index)],
        ["delete", str(index), "--ids", "doc-1"],
        ["compact", str(index)],
    ):
        assert main(command) == 2
        _clean_error(capsys, command[0], "manifest.json", message)
    assert _search(index, queries, tmp_path / "run.parquet") == 2
    _clean_error(capsys, "search", message)


def _craft(index: Path, fname: str, data: bytes) -> None:
    """Replace a file of the first segment and record its new size and checksum."""
    _target(index, fname).write_bytes(data)
    manifest = _manifest(index)
    manifest["segments"][0]["files"][fname] = {
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    (index / "manifest.json").write_text(json.dumps(manifest))


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _swap_first(offsets: np.ndarray) -> np.ndarray:
    offsets[[1, 2]] = offsets[[2, 1]]
    return offsets


@pytest.mark.parametrize(
    ("fname", "make", "message"),
    [
        ("fde.faiss", lambda d: b"IxFI" + b"\x7f" * (len(d) - 4), "fde.faiss: holds"),
        ("fde.faiss", lambda d: d[:-100], "flat codes do not hold"),
        ("vectors.npy", lambda d: _npy(np.array([[{"x": 1}]], dtype=object)), "needs pickle"),
        ("offsets.npy", lambda d: _npy(_swap_first(np.load(io.BytesIO(d)))), "not increasing"),
    ],
    ids=["faiss-header", "faiss-short-codes", "npy-pickle", "offsets-decreasing"],
)
def test_crafted_file_with_matching_checksum(
    index, queries, tmp_path, capsys, fname, make, message
) -> None:
    _craft(index, fname, make(_target(index, fname).read_bytes()))
    assert main(["verify", str(index)]) == 1
    err = capsys.readouterr().err
    assert fname in err and message in err and "Traceback" not in err
    assert _search(index, queries, tmp_path / "run.parquet") == 2
    _clean_error(capsys, "search", fname, message)


HOLD_WRITER = """
import sys, time, numpy as np
from index_store import IndexWriter
writer = IndexWriter(sys.argv[1])
writer.add(["held"], [np.ones((2, 16), np.float32)])  # buffered, never committed
print("ready", flush=True)
time.sleep(600)
"""


def test_second_writer_reader_during_write_and_stale_lock(index, queries, tmp_path, capsys) -> None:
    assert _search(index, queries, tmp_path / "before.parquet") == 0
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITER, str(index)], env=ENV, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        # Two writers: the second gets a clear error naming the holder.
        assert main(["delete", str(index), "--ids", "doc-1"]) == 2
        _clean_error(capsys, "delete", "is being written by pid", "one writer at a time")
        # A reader during the write sees the last commit.
        assert _search(index, queries, tmp_path / "during.parquet") == 0
        assert pq.read_table(tmp_path / "during.parquet").equals(
            pq.read_table(tmp_path / "before.parquet")
        )
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The killed writer left its LOCK file behind; it does not block the next writer.
    assert "pid" in (index / "LOCK").read_text()
    assert main(["delete", str(index), "--ids", "doc-1"]) == 0
    assert main(["verify", str(index)]) == 0
    capsys.readouterr()


def test_kill_9_during_compact(index, queries, tmp_path, capsys) -> None:
    assert _search(index, queries, tmp_path / "before.parquet") == 0
    before = pq.read_table(tmp_path / "before.parquet")
    generation = _manifest(index)["generation"]
    killed = 0
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-m", "latemm.cli", "compact", str(index)],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Kill it while it writes the compacted segment.
        while proc.poll() is None and not list((index / "segments").glob(".tmp-seg-*")):
            time.sleep(0.001)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        if _manifest(index)["generation"] != generation:
            break  # it finished first: nothing more to interrupt
        assert main(["verify", str(index)]) == 0
        assert _search(index, queries, tmp_path / "after.parquet") == 0
        assert pq.read_table(tmp_path / "after.parquet").equals(before)
    assert killed >= 1
    assert main(["compact", str(index)]) == 0
    assert main(["verify", str(index)]) == 0
    assert _search(index, queries, tmp_path / "compacted.parquet") == 0
    compacted = pq.read_table(tmp_path / "compacted.parquet")
    assert compacted.column("doc_id").equals(before.column("doc_id"))
    np.testing.assert_allclose(
        compacted.column("score").to_numpy(), before.column("score").to_numpy(), rtol=1e-6
    )
    assert len(_manifest(index)["segments"]) == 1
    capsys.readouterr()
