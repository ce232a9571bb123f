"""index_store.fsio's path checks for untrusted index folders (issue 30): names read from an
index's files stay inside it, links and special files are found, and files are created
without following a link. The verbs over every kind of index: tests/latemm/test_untrusted_paths.py.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from index_store import Index, IndexConfig, create, verify
from index_store.errors import IndexCorruptError
from index_store.fsio import (
    find_links,
    index_path,
    open_lock_file,
    refuse_links,
    write_bytes_atomic,
    write_file,
)


@pytest.mark.parametrize("name", ["/etc/passwd", "..", ".", "", "a/b", "..\\x", "a\0b", None, 3])
def test_index_path_refuses_names_that_leave_the_index(tmp_path, name) -> None:
    with pytest.raises(IndexCorruptError, match="not a plain file name inside the index"):
        index_path(tmp_path, "fields", name, what="bm25 dir")


def test_index_path_refuses_a_link_on_the_way(tmp_path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "fields").symlink_to(tmp_path / "elsewhere")
    assert index_path(tmp_path / "idx", "other", "x") == tmp_path / "idx" / "other" / "x"
    with pytest.raises(
        IndexCorruptError, match=r"idx/fields is a symbolic link \(to '.*elsewhere'"
    ):
        index_path(tmp_path / "idx", "fields", "bm25")


def test_find_links_reports_links_and_special_files_anywhere(tmp_path) -> None:
    root = tmp_path / "idx"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "file").write_text("x")
    assert find_links(root) == []
    refuse_links(root)
    (root / "a" / "b" / "link").symlink_to("/etc/passwd")
    os.mkfifo(root / "a" / "fifo")
    problems = find_links(root)
    assert len(problems) == 2
    assert any("a/b/link is a symbolic link (to '/etc/passwd')" in p for p in problems)
    assert any("a/fifo is not a regular file or folder" in p for p in problems)
    with pytest.raises(IndexCorruptError, match=r"\(and 1 more such entries\)"):
        refuse_links(root)
    # The root itself may be a link: that is the user's choice of path.
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "file").write_text("x")
    (tmp_path / "alias").symlink_to(tmp_path / "clean")
    assert find_links(tmp_path / "alias") == []


def test_files_are_created_without_following_a_link(tmp_path) -> None:
    victim = tmp_path / "thesis.tex"
    victim.write_text("precious\n")
    (tmp_path / "out.npy").symlink_to(victim)
    with pytest.raises(IndexCorruptError, match="out.npy is a symbolic link"):
        write_file(tmp_path / "out.npy", lambda fh: fh.write(b"x"))
    (tmp_path / "LOCK").symlink_to(victim)
    with pytest.raises(IndexCorruptError, match="LOCK is a symbolic link"):
        open_lock_file(tmp_path / "LOCK")
    # An atomic write replaces a link by a file (the rename never writes through it).
    write_bytes_atomic(tmp_path / "out.npy", b"data")
    assert (tmp_path / "out.npy").read_bytes() == b"data" and not (
        tmp_path / "out.npy"
    ).is_symlink()
    assert victim.read_text() == "precious\n"


def test_a_linked_segment_file_is_refused_on_open_and_reported_by_verify(tmp_path) -> None:
    path = tmp_path / "idx"
    config = IndexConfig(dim=4)
    with create(path, config) as writer:
        writer.add(["a", "b"], np.ones((4, 4), np.float32), offsets=np.array([0, 2, 4]))
        writer.commit()
    segment = next((path / "segments").iterdir())
    copy = tmp_path / "vectors-copy.npy"
    (segment / "vectors.npy").rename(copy)
    (segment / "vectors.npy").symlink_to(copy)
    with pytest.raises(IndexCorruptError, match="vectors.npy is a symbolic link"):
        Index.open(path)
    problems = verify(path)
    assert len(problems) == 1 and "vectors.npy is a symbolic link" in problems[0]
    with pytest.raises(IndexCorruptError, match="vectors.npy is a symbolic link"):
        create(path, config)
