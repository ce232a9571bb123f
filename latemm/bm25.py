"""A BM25 field: bm25s over the page text, saved in bm25s's own files (``.npy`` arrays loaded
with ``allow_pickle=False`` and JSON) beside a ``docs.parquet`` of doc ids and texts.

A BM25 field is rebuilt whole when documents are added (bm25s indexes are not incremental;
indexing 10,000 pages takes about a second). Each build is a new directory; the caller commits
it by pointing ``fields.json`` at it. Imports numpy, pyarrow and, lazily, bm25s.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from index_store.errors import IndexCorruptError, require
from index_store.fsio import fsync_dir, sha256_file
from index_store.segment import check_files

DOCS = "docs.parquet"
# bm25s's English stop words, no stemmer: the BM25 baseline of experiments/eval_text.py.
STOPWORDS = "en"


def _bm25s() -> Any:
    return require("bm25s", "bm25", "bm25s")


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """bm25s's tokenizer (lower case, English stop words removed), as lists of strings."""
    bm25s = _bm25s()
    return list(
        bm25s.tokenize(list(texts), stopwords=STOPWORDS, return_ids=False, show_progress=False)
    )


def build(directory: Path, doc_ids: Sequence[str], texts: Sequence[str]) -> dict[str, Any]:
    """Index ``texts`` into a new ``directory`` (written in a temporary one, fsynced, renamed)
    and return its file records (size and sha256 per file)."""
    bm25s = _bm25s()
    tmp = directory.with_name(f".tmp-{directory.name}-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    retriever = bm25s.BM25()
    tokens = bm25s.tokenize(list(texts), stopwords=STOPWORDS, show_progress=False)
    retriever.index(tokens, show_progress=False)
    retriever.save(str(tmp), allow_pickle=False)
    pq.write_table(
        pa.table({"doc_id": pa.array(doc_ids, pa.string()), "text": pa.array(texts, pa.string())}),
        tmp / DOCS,
    )
    for path in tmp.iterdir():
        with open(path, "rb+") as fh:
            os.fsync(fh.fileno())
    fsync_dir(tmp)
    os.replace(tmp, directory)
    fsync_dir(directory.parent)
    return {
        p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(directory.iterdir())
    }


def read_docs(directory: Path) -> dict[str, str]:
    """doc_id -> text of a build (from ``docs.parquet`` alone, so a build whose bm25s files
    are damaged can still be rebuilt)."""
    try:
        table = pq.read_table(Path(directory) / DOCS)
    except (OSError, pa.ArrowException) as exc:
        raise IndexCorruptError(f"cannot read {Path(directory) / DOCS}: {exc}") from exc
    ids, texts = table.column("doc_id").to_pylist(), table.column("text").to_pylist()
    return dict(zip(ids, texts, strict=True))


def check_build(directory: Path, files: dict[str, Any], *, full: bool) -> list[str]:
    """Problems with a build's files against their recorded sizes and sha256."""
    from index_store.manifest import FileEntry

    entries = tuple(FileEntry(name, int(f["size"]), str(f["sha256"])) for name, f in files.items())
    return check_files(Path(directory), entries, full=full)


class BM25Index:
    """A saved BM25 field opened for scoring: ``doc_ids`` (n,) and ``scores(queries)``."""

    def __init__(self, directory: Path, files: dict[str, Any], *, verify: str = "fast") -> None:
        self.path = Path(directory)
        if verify != "none":
            problems = check_build(self.path, files, full=verify == "full")
            if problems:
                raise IndexCorruptError(
                    "BM25 field files are damaged: " + "; ".join(problems) + "; rebuild the field"
                )
        bm25s = _bm25s()
        self.retriever = bm25s.BM25.load(str(self.path), allow_pickle=False)
        table = pq.read_table(self.path / DOCS)
        self.doc_ids = np.array(table.column("doc_id").to_pylist(), dtype=object)
        self._texts = table.column("text")
        self.position = {d: i for i, d in enumerate(self.doc_ids)}

    def texts(self) -> list[str]:
        return list(self._texts.to_pylist())

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """(Q, n) float32 BM25 scores of every document for every query text."""
        out = np.zeros((len(queries), self.doc_ids.size), dtype=np.float32)
        for q, tokens in enumerate(tokenize(queries)):
            if tokens:
                out[q] = self.retriever.get_scores(tokens)
        return out
