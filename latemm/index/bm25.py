"""A BM25 field: bm25s over the page text, saved in bm25s's own files (``.npy`` arrays loaded
with ``allow_pickle=False`` and JSON) beside a ``docs.parquet`` of doc ids and texts.

A BM25 field is rebuilt whole when documents are added (bm25s indexes are not incremental;
indexing 10,000 pages takes about a second). Each build is a new directory; the caller commits
it by pointing ``fields.json`` at it. How texts are tokenised (``Tokenizer``: stop words and a
Snowball stemmer) is recorded with the field, so queries are tokenised as the pages were.
Each build also saves the term frequencies and document lengths behind bm25s's precomputed
scores, so a sharded collection scores every shard with the collection's statistics without
re-indexing (``BM25Index.merged``).
Imports numpy, pyarrow and, lazily, bm25s and PyStemmer.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from index_store.errors import IndexCorruptError, InputError, require
from index_store.fsio import fsync_dir, full_disk_error, index_path, is_full, sha256_file
from index_store.segment import check_files

DOCS = "docs.parquet"
# Saved since build format 2 beside bm25s's files (``_save_statistics``): the counts behind its
# precomputed scores, so shards score with collection-wide statistics without re-indexing.
TERM_FREQUENCIES = "latemm.tf.npy"
DOC_LENGTHS = "latemm.doc_lengths.npy"
# A bm25 field's build format (its ``format`` option in fields.json; absent: 1). 2 adds the
# two files above; a reader of 1 verifies and ignores them, so a version-1 reader still scores
# a version-2 build correctly (re-indexing shards at open, as it always did).
BUILD_FORMAT = 2
STOPWORD_LISTS = ("en", "en_plus")  # bm25s's English lists (NLTK's, and a longer one)


@dataclass(frozen=True)
class Tokenizer:
    """How a BM25 field turns text into terms: bm25s's tokenizer (lower case, words of two or
    more letters or digits), a stop-word list and a Snowball stemmer (PyStemmer).

    The default is English BM25 as Terrier and Anserini run it: stop words removed and words
    stemmed (they use Porter's stemmer; Snowball's ``english`` is its revision). Stemming matters: on Vaswani it lifts
    nDCG@10 from 0.353 to 0.428 (``experiments/RESULTS.md``, section 4b).

    Parameters
    ----------
    stopwords
        ``en``, ``en_plus`` or None (keep every word).
    stemmer
        A Snowball algorithm name (``english``, ``porter``, ``german``, ...; ``Stemmer.algorithms()``)
        or None (no stemming).
    """

    stopwords: str | None = "en"
    stemmer: str | None = "english"

    def __post_init__(self) -> None:
        if self.stopwords is not None and self.stopwords not in STOPWORD_LISTS:
            raise InputError(
                f"bm25 stopwords must be one of {', '.join(STOPWORD_LISTS)} or none, got "
                f"{self.stopwords!r}"
            )
        if self.stemmer is not None:
            algorithms = require("Stemmer", "bm25", "PyStemmer").algorithms()
            if self.stemmer not in algorithms:
                raise InputError(
                    f"bm25 stemmer {self.stemmer!r} is not a Snowball algorithm; choose one of "
                    f"{', '.join(algorithms)} (or none)"
                )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any] | None) -> Tokenizer:
        """A recorded tokenizer; None (a field built before tokenizers were recorded) is what
        those fields used: English stop words, no stemmer."""
        if payload is None:
            return LEGACY
        try:
            return cls(**payload)
        except TypeError as exc:
            raise IndexCorruptError(
                f"bm25 tokenizer record {payload!r} is not stopwords/stemmer ({exc}); rebuild "
                "the field"
            ) from exc

    def make_stemmer(self) -> Any:
        """PyStemmer's ``Stemmer`` for ``stemmer`` (None without one), as bm25s takes it."""
        if self.stemmer is None:
            return None
        stemmer_module = require("Stemmer", "bm25", "PyStemmer")
        return stemmer_module.Stemmer(self.stemmer)

    def tokenize(self, texts: Sequence[str], *, return_ids: bool = False) -> Any:
        """bm25s's tokenisation of ``texts`` with these settings: lists of terms, or with
        ``return_ids`` bm25s's ``Tokenized`` (ids and vocabulary) for indexing."""
        return _bm25s().tokenize(
            list(texts),
            stopwords=self.stopwords,
            stemmer=self.make_stemmer(),
            return_ids=return_ids,
            show_progress=False,
        )


# What BM25 fields built before the tokenizer was recorded used (bm25s's default tokenizer
# with English stop words): they keep it, so their queries are tokenised as their pages were.
LEGACY = Tokenizer(stopwords="en", stemmer=None)


def parse_tokenizer(text: str) -> Tokenizer:
    """``"stemmer=english,stopwords=en"`` (either may be ``none``; either may be left out for
    its default) -> ``Tokenizer``."""
    values: dict[str, str | None] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = (x.strip() for x in part.partition("="))
        if not sep or key not in ("stemmer", "stopwords") or not value:
            raise InputError(
                f"bm25 options {text!r}: expected stemmer=NAME|none and/or stopwords=en|none, "
                f"got {part!r} (e.g. --field bm25=bm25:stemmer=porter)"
            )
        values[key] = None if value.lower() == "none" else value
    return Tokenizer(**values)


def _bm25s() -> Any:
    return require("bm25s", "bm25", "bm25s")


def build(
    directory: Path,
    doc_ids: Sequence[str],
    texts: Sequence[str],
    *,
    tokenizer: Tokenizer | None = None,
) -> dict[str, Any]:
    """Index ``texts`` (tokenised by ``tokenizer``, default ``Tokenizer()``) into a new
    ``directory`` (written in a temporary one, fsynced, renamed) and return its file records
    (size and sha256 per file)."""
    bm25s = _bm25s()
    tokenizer = tokenizer or Tokenizer()
    tokens = tokenizer.tokenize(texts, return_ids=True)
    if len(texts) and not tokens.vocab:
        raise InputError(
            f"none of its {len(texts)} text(s) has a word BM25 can index (a run of 2+ letters "
            f"or digits that is not a stop word; tokenizer {tokenizer.to_dict()}); index "
            "pages with real text, or use stopwords=none"
        )
    tmp = directory.with_name(f".tmp-{directory.name}-{os.getpid()}")
    _remove_tree(tmp)
    try:
        tmp.mkdir(parents=True)
        if len(texts):  # bm25s cannot index nothing; an empty field is its docs file alone
            retriever = bm25s.BM25()
            retriever.index(tokens, show_progress=False)
            retriever.save(str(tmp), allow_pickle=False)
            _save_statistics(tmp, tokens.ids, retriever.scores)
        table = pa.table(
            {"doc_id": pa.array(doc_ids, pa.string()), "text": pa.array(texts, pa.string())}
        )
        pq.write_table(table, tmp / DOCS)
        for path in tmp.iterdir():
            with open(path, "rb+") as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
    except OSError as exc:
        _remove_tree(tmp)
        if is_full(exc):  # the committed build is untouched: fields.json still names it
            raise full_disk_error(tmp, exc) from exc
        raise
    os.replace(tmp, directory)
    fsync_dir(directory.parent)
    return {
        p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(directory.iterdir())
    }


def _save_statistics(directory: Path, token_ids: Sequence[Sequence[int]], matrix: Any) -> None:
    """Beside bm25s's score matrix, what its scores are made of (``TERM_FREQUENCIES``: each
    (term, document) entry's count, aligned with the matrix's entries; ``DOC_LENGTHS``: each
    document's number of terms), so that the shards of a collection can be scored with the
    collection's statistics without re-indexing (``merged``). Nothing is written when the
    matrix is not laid out as expected (readers then re-index, as before)."""
    docs, terms, counts = [], [], []
    for d, ids in enumerate(token_ids):
        unique, count = np.unique(np.asarray(ids, np.int64), return_counts=True)
        docs.append(np.full(unique.size, d, np.int64))
        terms.append(unique)
        counts.append(count)
    doc = np.concatenate(docs) if docs else np.zeros(0, np.int64)
    term = np.concatenate(terms) if terms else np.zeros(0, np.int64)
    count = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    order = np.lexsort((doc, term))  # by term, then document: bm25s's CSC layout
    indptr = np.asarray(matrix["indptr"])
    starts = np.searchsorted(term[order], np.arange(indptr.size - 1), side="left")
    if not (
        np.array_equal(np.asarray(matrix["indices"]), doc[order])
        and np.array_equal(indptr[:-1], starts)
        and int(indptr[-1]) == order.size
    ):
        return
    lengths = np.array([len(ids) for ids in token_ids], dtype=np.int64)
    np.save(directory / TERM_FREQUENCIES, count[order].astype(np.int32), allow_pickle=False)
    np.save(directory / DOC_LENGTHS, lengths.astype(np.int32), allow_pickle=False)


def _remove_tree(path: Path) -> None:
    """Remove a build folder the index wrote (a link there is removed, never followed)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


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

    problems = []
    for name in files:  # a name from fields.json: never a path out of the build
        try:
            index_path(directory, name, what="a bm25 build file named in fields.json")
        except IndexCorruptError as exc:
            problems.append(str(exc))
    if problems:
        return problems
    entries = tuple(FileEntry(name, int(f["size"]), str(f["sha256"])) for name, f in files.items())
    return check_files(Path(directory), entries, full=full)


class BM25Index:
    """A saved BM25 field opened for scoring: ``doc_ids`` (n,) and ``scores(queries)``, the
    queries tokenised by the field's recorded ``tokenizer``."""

    def __init__(
        self,
        directory: Path,
        files: dict[str, Any],
        *,
        tokenizer: Tokenizer = LEGACY,
        verify: str = "fast",
    ) -> None:
        self.path = Path(directory)
        self.tokenizer = tokenizer
        if verify != "none":
            problems = check_build(self.path, files, full=verify == "full")
            if problems:
                raise IndexCorruptError(
                    "BM25 field files are damaged: " + "; ".join(problems) + "; rebuild the field"
                )
        table = pq.read_table(self.path / DOCS)
        self.retriever = (
            _bm25s().BM25.load(str(self.path), allow_pickle=False) if table.num_rows else None
        )
        self.doc_ids = np.array(table.column("doc_id").to_pylist(), dtype=object)
        self._texts = table.column("text")
        self.position = {d: i for i, d in enumerate(self.doc_ids)}
        self.has_statistics = self.retriever is not None and {
            TERM_FREQUENCIES,
            DOC_LENGTHS,
        } <= set(files)

    @property
    def statistics(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(term frequencies, document lengths) the build saved (None: a build from before
        they were), read on first use: only a sharded collection's merge needs them."""
        if not self.has_statistics:
            return None
        if not hasattr(self, "_statistics"):
            self._statistics = (
                np.load(self.path / TERM_FREQUENCIES, allow_pickle=False),
                np.load(self.path / DOC_LENGTHS, allow_pickle=False),
            )
        return self._statistics

    def texts(self) -> list[str]:
        return list(self._texts.to_pylist())

    def without(self, ids: frozenset[str]) -> BM25Index:
        """This field as a build without ``ids`` scores, re-indexed in memory (document
        frequencies and average length leave them out too); its files are not touched. For a
        reader that honours an unfinished delete."""
        keep = np.fromiter(
            (d not in ids for d in self.doc_ids), dtype=bool, count=self.doc_ids.size
        )
        if keep.all():
            return self
        return BM25Index._in_memory(
            self.path, self.tokenizer, self.doc_ids[keep], self._texts.filter(pa.array(keep))
        )

    @classmethod
    def union(cls, parts: Sequence[BM25Index], hidden: frozenset[str] = frozenset()) -> BM25Index:
        """One BM25 field over every document of ``parts`` (the shards of a collection, each
        a build over its own pages) but those in ``hidden``, re-indexed in memory: document
        frequencies, the number of documents and the average length are the collection's, so
        each page scores exactly as in one build over all of them. Every part must share one
        tokenizer. Its files are not touched."""
        tokenizers = {p.tokenizer for p in parts}
        if len(tokenizers) > 1:
            raise IndexCorruptError(
                f"the shards' builds of one bm25 field use different tokenizers "
                f"({', '.join(str(t.to_dict()) for t in tokenizers)}); rebuild the field"
            )
        if len(parts) == 1:
            return parts[0].without(hidden)
        ids = np.concatenate([p.doc_ids for p in parts]) if parts else np.zeros(0, object)
        texts = pa.chunked_array([c for p in parts for c in p._texts.chunks], type=pa.string())
        keep = np.fromiter((d not in hidden for d in ids), dtype=bool, count=ids.size)
        return cls._in_memory(
            parts[0].path if parts else Path(),
            parts[0].tokenizer if parts else LEGACY,
            ids[keep].astype(object),
            texts.filter(pa.array(keep)) if ids.size else texts,
        )

    @classmethod
    def merged(cls, parts: Sequence[BM25Index], hidden: frozenset[str] = frozenset()) -> Any:
        """``union``'s scores without re-indexing: each part (a shard's build) keeps its own
        score matrix layout, and its entries are rescored from its saved term frequencies and
        document lengths with the collection's statistics (document frequencies, number of
        documents and average length, summed over the parts, ``hidden`` ids left out), in the
        very arithmetic bm25s uses, so each page scores bit for bit as in one build over all
        of them (one part with ``hidden`` ids: as its build without them). Parts built before the statistics were saved (or with other BM25 settings)
        are re-indexed in memory (``union``)."""
        if (len(parts) == 1 and not hidden) or not _mergeable(parts):
            return cls.union(parts, hidden)
        return MergedBM25(parts, hidden)

    @classmethod
    def _in_memory(
        cls, path: Path, tokenizer: Tokenizer, doc_ids: np.ndarray, texts: Any
    ) -> BM25Index:
        """A build of ``texts`` (one per doc id) indexed in memory, no files written: what a
        reader scores with when the saved build's statistics would not be the right ones."""
        out = object.__new__(cls)
        out.path, out.tokenizer, out.doc_ids, out._texts = path, tokenizer, doc_ids, texts
        out.has_statistics = False
        out.position = {d: i for i, d in enumerate(doc_ids)}
        tokens = tokenizer.tokenize(out.texts(), return_ids=True)
        out.retriever = None
        if doc_ids.size and tokens.vocab:
            out.retriever = _bm25s().BM25()
            out.retriever.index(tokens, show_progress=False)
        return out

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """(Q, n) float32 BM25 scores of every document for every query text."""
        out = np.zeros((len(queries), self.doc_ids.size), dtype=np.float32)
        if self.retriever is None:  # a field whose pages were all deleted
            return out
        for q, tokens in enumerate(self.tokenizer.tokenize(queries)):
            if tokens:
                out[q] = self.retriever.get_scores(tokens)
        return out


_SETTINGS = ("k1", "b", "method", "idf_method", "dtype")


def _mergeable(parts: Sequence[BM25Index]) -> bool:
    """Whether every part has saved statistics and bm25s's Lucene BM25 with one set of
    settings (the only variant ``merged`` recomputes); empty parts do not count."""
    built = [p for p in parts if p.retriever is not None]
    if not built or not all(p.has_statistics for p in built):
        return False
    settings = {tuple(getattr(p.retriever, k, None) for k in _SETTINGS) for p in built}
    if len(settings) != 1 or len({p.tokenizer for p in parts}) != 1:
        return False
    _, _, method, idf_method, dtype = next(iter(settings))
    return method == "lucene" and idf_method in ("lucene", None) and dtype == "float32"


class MergedBM25:
    """One BM25 field over the shards of a collection, scored with its collection-wide
    statistics (``BM25Index.merged``): ``doc_ids`` (the parts' in order, ``hidden`` ones
    left out), ``position``, ``texts()`` and ``scores(queries)`` as ``BM25Index`` has them."""

    def __init__(self, parts: Sequence[BM25Index], hidden: frozenset[str]) -> None:
        import copy
        import math

        self.path = parts[0].path
        self.tokenizer = parts[0].tokenizer
        self.has_statistics = False
        self._keeps = [
            np.fromiter((d not in hidden for d in p.doc_ids), dtype=bool, count=p.doc_ids.size)
            for p in parts
        ]
        built: list[tuple[BM25Index, np.ndarray, Any]] = [
            (p, keep, p.retriever)
            for p, keep in zip(parts, self._keeps, strict=True)
            if p.retriever is not None
        ]
        columns: list[np.ndarray] = []  # per built part: each matrix entry's term column
        frequencies: dict[str, int] = {}
        lengths = []
        for part, keep, source in built:
            indptr = np.asarray(source.scores["indptr"], np.int64)
            indices = np.asarray(source.scores["indices"], np.int64)
            column = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
            columns.append(column)
            counts = np.bincount(column[keep[indices]], minlength=indptr.size - 1)
            for term, col in source.vocab_dict.items():
                if col < counts.size and counts[col]:
                    frequencies[term] = frequencies.get(term, 0) + int(counts[col])
            tf, doc_lengths = part.statistics  # type: ignore[misc]
            if tf.shape != (indices.size,) or doc_lengths.shape != (part.doc_ids.size,):
                raise IndexCorruptError(
                    f"{part.path}: {TERM_FREQUENCIES} or {DOC_LENGTHS} does not match the "
                    "build's score matrix; the build is damaged: rebuild the field"
                )
            lengths.append(doc_lengths.astype(np.int64)[keep])
        n_docs = int(sum(keep.sum() for _, keep, _ in built))
        # bm25s: np.array([len(doc) for doc in corpus]).mean(); a sum of integers, exact in
        # any order, so the shards' average is the whole's to the last bit.
        average = np.concatenate(lengths).mean() if n_docs else np.float64(1.0)
        settings = built[0][2]
        k1, b = settings.k1, settings.b
        # bm25s stores idf * tfc in float32, with tfc = tf / (k1 * (1 - b + b * l_d / l_avg)
        # + tf) computed from a float32 tf and a float64 scalar: float64 under NumPy 2's
        # promotion, float32 under NumPy 1's. The same arithmetic, for every entry at once:
        work = np.result_type(np.float64(1.0), np.zeros(1, np.float32))
        self._retrievers = []
        for (part, _, source), column in zip(built, columns, strict=True):
            tf, doc_lengths = part.statistics  # type: ignore[misc]
            n_columns = np.asarray(source.scores["indptr"]).size - 1
            idf = np.zeros(n_columns, dtype=np.float32)
            for term, col in source.vocab_dict.items():
                df = frequencies.get(term, 0)
                if col < n_columns and df:
                    idf[col] = math.log(1 + (n_docs - df + 0.5) / (df + 0.5))
            indices = np.asarray(source.scores["indices"], np.int64)
            l_d = doc_lengths.astype(np.int64)[indices]
            scale = k1 * ((1 - b) + b * l_d / average)  # float64, as bm25s's scalar
            tf_work = tf.astype(np.float32).astype(work)
            tfc = tf_work / (scale.astype(work) + tf_work)
            data = (idf[column].astype(work) * tfc).astype(np.float32)
            retriever = copy.copy(source)
            retriever.scores = {**source.scores, "data": data}
            self._retrievers.append(retriever)
        self._parts = list(parts)
        self.doc_ids = (
            np.concatenate([p.doc_ids[k] for p, k in zip(parts, self._keeps, strict=True)])
            if parts
            else np.zeros(0, object)
        ).astype(object)
        self.position = {d: i for i, d in enumerate(self.doc_ids)}

    def texts(self) -> list[str]:
        out: list[str] = []
        for part, keep in zip(self._parts, self._keeps, strict=True):
            texts = part.texts()
            out.extend(t for t, k in zip(texts, keep, strict=True) if k)
        return out

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """(Q, n) float32 BM25 scores of every document for every query text."""
        tokens = self.tokenizer.tokenize(queries)
        pieces = []
        retrievers: Any = iter(self._retrievers)
        for part, keep in zip(self._parts, self._keeps, strict=True):
            out = np.zeros((len(queries), part.doc_ids.size), dtype=np.float32)
            if part.retriever is not None:
                retriever = next(retrievers)
                for q, terms in enumerate(tokens):
                    if terms:
                        out[q] = retriever.get_scores(terms)
            pieces.append(out[:, keep])
        if not pieces:
            return np.zeros((len(queries), 0), dtype=np.float32)
        return np.concatenate(pieces, axis=1)
