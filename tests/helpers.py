"""Builders the tests share (``tests/conftest.py`` holds the fixtures): the vector dimensions
most tests use and Parquet corpora and query files of random embeddings.

Plain functions, not fixtures, because tests call them with their own sizes and seeds.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

DIM = 16  # the CLI tests' embeddings
SMALL_DIM = 8  # the unit tests' hand-checkable vectors
VECTORS = pa.list_(pa.list_(pa.float32()))  # an ``embedding`` column: one (T, d) list per row
WORDS = "revenue profit growth market climate carbon energy solar policy budget tax".split()


def write_corpus(path: Path, n: int, seed: int = 0, *, dim: int = DIM) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    docs = [rng.standard_normal((int(t), dim)).astype(np.float32) for t in rng.integers(2, 20, n)]
    table = pa.table(
        {
            "doc_id": [f"doc-{i}" for i in range(n)],
            "embedding": [d.tolist() for d in docs],
            "source": ["esg" if i % 3 == 0 else "news" for i in range(n)],
            "year": [2010 + i % 15 for i in range(n)],
        }
    )
    pq.write_table(table, path, row_group_size=256)
    return docs


def write_queries(path: Path, n: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    queries = [rng.standard_normal((4, DIM)).astype(np.float32) for _ in range(n)]
    pq.write_table(
        pa.table(
            {"query_id": [f"q{i}" for i in range(n)], "embedding": [q.tolist() for q in queries]}
        ),
        path,
    )


def write_embedding_table(path: Path, ids: list[str], vectors: list[Any], **columns: Any) -> Path:
    """A corpus file of ``doc_id``, then ``columns`` (e.g. ``text``), then ``embedding`` (one
    (T, d) array or nested list per page, stored as float32)."""
    pq.write_table(
        pa.table({"doc_id": ids, **columns, "embedding": pa.array(vectors, VECTORS)}), path
    )
    return path


def write_pages(path: Path, n: int, seed: int = 0, start: int = 0) -> None:
    """n pages with text, (T, DIM) embeddings and a year: doc ids d00000, d00001, ..."""
    rng = np.random.default_rng(seed)
    pq.write_table(
        pa.table(
            {
                "doc_id": [f"d{i:05d}" for i in range(start, start + n)],
                "text": [" ".join(rng.choice(WORDS, 8)) for _ in range(n)],
                "embedding": [
                    rng.standard_normal((int(t), DIM)).astype(np.float32).tolist()
                    for t in rng.integers(2, 9, n)
                ],
                "year": [2000 + i % 25 for i in range(n)],
            }
        ),
        path,
    )


def write_questions(path: Path, n: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    pq.write_table(
        pa.table(
            {
                "query_id": [f"q{i}" for i in range(n)],
                "text": ["revenue growth"] * n,
                "embedding": [
                    rng.standard_normal((4, DIM)).astype(np.float32).tolist() for _ in range(n)
                ],
            }
        ),
        path,
    )


def read_run(path: Path) -> list[tuple[str, str, int, float]]:
    table = pq.read_table(path)
    columns = [table.column(c).to_pylist() for c in ("query_id", "doc_id", "rank", "score")]
    rows = zip(*columns, strict=True)
    return sorted(rows)


@contextmanager
def mounted_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``3m``) mounted at ``path`` for the block, for full-disk tests;
    the test is skipped where mounting is not permitted."""
    path.mkdir(exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc})")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def fill_disk(disk: Path, free: int) -> Path:
    """A file taking all of ``disk``'s space but ``free`` bytes."""
    filler = disk / "filler"
    st = os.statvfs(disk)
    size = st.f_bavail * st.f_frsize - free
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        if size > 0:
            os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
    return filler
