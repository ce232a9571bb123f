"""A full disk anywhere in a build is one `StorageError` naming the file, and the last commit
stays intact (issue 30, P14, P15): plain and multi-field builds, the fields path's page store
(which replaced its corpus copy), the BM25 build and the BM25 step of `delete`.

Each case builds a first commit in a small tmpfs, fills the disk until only ``free`` bytes are
left and runs the next step, for several values of ``free``: it either succeeds or fails with
exit 2 and `no space left on device` naming a file inside the index, never a traceback; once
the space is back, `verify` passes and the index holds the documents of one of the two
commits. Skipped where mounting a tmpfs is not permitted. Over the 24 runs the failures name
the segment files, the page store's part ``pages/part-*.parquet`` (test_page_store.py), the
BM25 build folder (in
`index` and in `delete`), a deleted bitmap and the journal.
"""

from __future__ import annotations

import gc
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from latemm.cli import main
from tests.helpers import DIM, WORDS, fill_disk, mounted_tmpfs, write_embedding_table

FREE = [0, 4096, 16384, 65536, 131072, 262144]


@pytest.fixture
def disk(tmp_path):
    """A 3 MB tmpfs at ``tmp_path/disk`` (skipped where mount is not permitted)."""
    with mounted_tmpfs(tmp_path / "disk", "3m") as path:
        yield path


def _corpus(path: Path, n: int, start: int = 0) -> Path:
    rng = np.random.default_rng(start)
    ids = [f"d{i:05d}" for i in range(start, start + n)]
    texts = [
        " ".join(WORDS[(i * 7 + j) % len(WORDS)] + str(i) for j in range(30))
        for i in range(start, start + n)
    ]
    vectors = [rng.standard_normal((8, DIM)).astype(np.float32).tolist() for _ in ids]
    return write_embedding_table(path, ids, vectors, text=texts)


def _documents(idx: Path, capsys) -> int:
    capsys.readouterr()
    assert main(["info", str(idx)]) == 0
    out = capsys.readouterr().out
    counts = {int(n) for n in re.findall(r'"documents": (\d+)', out)}
    assert len(counts) == 1, out  # (fields: every field agrees on which pages exist)
    return counts.pop()


def _mapped(idx: Path) -> list[str]:
    """Files under ``idx`` this process still maps (a deleted one keeps its disk space)."""
    with open("/proc/self/maps") as maps:
        return [line.split(maxsplit=5)[-1].strip() for line in maps if str(idx) in line]


KINDS = {
    "plain": [],
    "fields": ["--field", "emb=embedding:embedding", "--field", "bm25=bm25"],
    "bm25": ["--field", "bm25=bm25"],
}


def _run(kind: str, step: str, disk: Path, tmp_path: Path, free: int, capsys) -> str:
    idx = disk / f"idx-{free}"
    first = _corpus(tmp_path / "first.parquet", 40)
    assert main(["index", str(first), "--index", str(idx), "--quiet", *KINDS[kind]]) == 0
    before = _documents(idx, capsys)
    if step == "append":
        argv = ["index", str(_corpus(tmp_path / "more.parquet", 300, 1000)), "--index", str(idx)]
        argv += ["--quiet", *KINDS[kind]]
    else:
        argv = ["delete", str(idx), "--ids", "d00001", "d00002"]
    filler = fill_disk(disk, free)
    capsys.readouterr()
    try:
        code = main(argv)
    finally:
        filler.unlink()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert _mapped(idx) == [], "a failed step still holds files of the index open"
    if code != 0:
        assert code == 2, err
        named = re.search(r"writing (\S+) failed: no space left on device", err)
        assert named, err
        assert Path(named[1]).resolve().is_relative_to(idx.resolve()), err
        assert "the last commit is intact" in err
    capsys.readouterr()
    journal = (idx / "journal.json").is_file()
    if journal:  # the delete was recorded before the disk filled: the next writer finishes it
        assert code == 2 and step == "delete"
        assert main(["delete", str(idx), "--ids", "d00001", "--missing-ok"]) == 0
        assert not (idx / "journal.json").exists()
    assert main(["verify", str(idx)]) == 0, capsys.readouterr().err
    after = _documents(idx, capsys)
    done = {"append": before + 300, "delete": before - 2}[step]
    assert after == (before if code and not journal else done), (code, err)
    shutil.rmtree(idx)  # the next case gets the whole disk
    return err


@pytest.mark.parametrize(
    ("kind", "step"),
    [("plain", "append"), ("fields", "append"), ("bm25", "append"), ("fields", "delete")],
)
def test_a_full_disk_is_a_storage_error_naming_the_file(disk, tmp_path, kind, step, capsys):
    errors = [_run(kind, step, disk, tmp_path, free, capsys) for free in FREE]
    assert any("no space left on device" in e for e in errors), errors  # the disk did fill


def test_a_failed_delete_maps_no_index_file_at_any_fill_level(disk, tmp_path, capsys):
    """A full disk hit at every point of a fields delete (1 KiB apart): when ``main`` returns,
    no file of the index is mapped any more, without waiting for the garbage collector (it is
    off) or for arrow's threads (a threaded read of a segment's meta.parquet kept it mapped
    for a moment after returning in ~1 run of 2)."""
    first = _corpus(tmp_path / "first.parquet", 40)
    held, failed = [], 0
    for free in range(0, 40 * 1024, 1024):
        idx = disk / f"idx-{free}"
        assert main(["index", str(first), "--index", str(idx), "--quiet", *KINDS["fields"]]) == 0
        gc.collect()
        gc.disable()
        try:
            filler = fill_disk(disk, free)
            try:
                code = main(["delete", str(idx), "--ids", "d00001", "d00002"])
            finally:
                filler.unlink()
            failed += code == 2
            if _mapped(idx):
                held.append((free, capsys.readouterr().err, _mapped(idx)))
        finally:
            gc.enable()
        capsys.readouterr()
        shutil.rmtree(idx)
    assert failed >= 5, "the disk never filled: the test tested nothing"
    assert held == []
