"""The index: open it read-only (``Index.open``) or write to it (``IndexWriter``).

Layout of an index directory::

    manifest.json            the commit point: format, config, segments, checksums, counts
    segments/<name>/         immutable segments (see ``index_store.segment``)
    fde-pq-g<gen>.faiss      the FDE codebook of the global first stage, if any (written once,
                             see ``index_store.first_stage``)
    vectors-codebook-g<gen>.npy  a residual index's codebook (``--dtype res1|res2|res4``), if
                             any: written once, by the first commit holding
                             ``INDEX_CODEBOOK_VECTORS`` (2^18) vectors, or by the build's last commit
                             or a compaction holding ``codecs.MIN_TRAIN``; every segment after
                             it is coded under it
    rejects-g<gen>.parquet   rows an ingest skipped (see ``index_store.rejects``), if any
    LOCK                     the writer's lock file

A commit writes new files only (a new segment, new deletion bitmaps, a new rejects file), fsyncs
them, then swaps ``manifest.json`` atomically; a process killed at any instant leaves the last
committed state intact. Nothing is written to a new index before its first commit. Files no
manifest references (a crash's leftovers, replaced bitmaps, compacted segments) are removed by
the writer after each commit, and only files matching the names the index itself writes: a
user's file in the folder is never touched. Readers pin what they opened (``segment.Segment``),
so removing files never breaks a search in progress.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from fde import FDEInputError, as_flat
from fde.encode import all_finite, cpu_threads
from index_store import codecs, first_stage, rejects
from index_store.config import IndexConfig
from index_store.errors import (
    IndexCorruptError,
    IndexFormatError,
    InputError,
)
from index_store.fsio import (
    find_links,
    npy_bytes,
    refuse_links,
    sha256_file,
    write_bytes_atomic,
)
from index_store.housekeeping import acquire_lock, collect_garbage, prepare_folder, release_lock
from index_store.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    REFINE_FILE,
    REFINE_SCALES_FILE,
    FileEntry,
    Manifest,
    RejectsEntry,
    SegmentEntry,
    VectorsCodebookEntry,
    now,
    vectors_codebook_name,
)
from index_store.segment import (
    CentroidFile,
    Segment,
    check_files,
    check_segment,
    codebook_problems,
    load_index_codebook,
    open_segment,
    write_segment,
)

__all__ = ["FORMAT_VERSION", "Document", "Index", "IndexWriter", "create", "open_index", "verify"]
CONTENT_COLUMNS = ("image", "text")
# Rows per block of the passes over a batch that run on several threads (32 MB of float32).
_BLOCK_ROWS = 1 << 16


@dataclass(frozen=True)
class Document:
    """One stored document: its id, its vectors (float32, decoded) and its metadata."""

    doc_id: str
    vectors: np.ndarray  # (T, d) float32
    metadata: dict[str, Any]


def _damaged(problems: list[str]) -> IndexCorruptError:
    return IndexCorruptError(
        "index files are damaged: "
        + "; ".join(problems)
        + ". Run `latemm verify` for a full report; restore the files or rebuild the index"
    )


def _open_commit(
    path: Path, verify: str, reuse: Sequence[Segment] = ()
) -> tuple[Manifest, list[Segment], pa.MemoryMappedFile | None, np.ndarray | None]:
    """The manifest, its segments, its rejects file and its residual codebook, opened together.

    A writer may commit (and remove the files of the state we began to open) while we open: we
    retry on the new manifest; when the manifest did not move, the damage is real. Segments in
    ``reuse`` whose manifest entry is unchanged are taken as they are (the writer reopening
    after its own commit; segment files are immutable), so a commit does not reread them all.
    """
    known = {s.name: s for s in reuse}
    for attempt in range(5):
        manifest = Manifest.read(path)
        try:
            shared = _open_vectors_codebook(path, manifest, verify)
            tables: dict[str, np.ndarray] = {}  # its decoding tables, built once per reader
            segments = [
                known[e.name]
                if e.name in known and known[e.name].entry == e
                else open_segment(
                    path / "segments",
                    e,
                    manifest.config,
                    verify=verify,
                    index_codebook=shared,
                    tables=tables,
                )
                for e in manifest.segments
            ]
            return manifest, segments, _open_rejects(path, manifest, verify), shared
        except IndexCorruptError:
            if attempt == 4 or Manifest.read(path).generation == manifest.generation:
                raise
    raise AssertionError("unreachable")


def _open_codebook(path: Path, manifest: Manifest, verify: str) -> pa.MemoryMappedFile | None:
    """The pinned codebook file of the global first stage (parsed on first use), if any; it is
    written once and never removed while a manifest lists it."""
    if manifest.codebook is None:
        return None
    if verify != "none":
        problems = check_files(path, (manifest.codebook,), full=verify == "full")
        if problems:
            raise _damaged(problems)
    try:
        return pa.memory_map(str(path / manifest.codebook.file))
    except OSError as exc:
        raise IndexCorruptError(f"cannot read {path / manifest.codebook.file}: {exc}") from exc


def _check_codebook(path: Path, manifest: Manifest) -> list[str]:
    """``verify``'s problems with the codebook: its file, then its header."""
    if manifest.codebook is None:
        return []
    problems = check_files(path, (manifest.codebook,), full=True)
    if problems:
        return problems
    fpath = path / manifest.codebook.file
    try:
        first_stage.check_codebook_bytes(
            fpath,
            fpath.read_bytes(),
            expected_size=manifest.codebook.size,
            factory=manifest.config.faiss_factory,
            dimension=manifest.config.faiss_dimension,
        )
    except IndexCorruptError as exc:
        return [str(exc)]
    return []


def _open_vectors_codebook(path: Path, manifest: Manifest, verify: str) -> np.ndarray | None:
    """The residual codebook of the index (``vectors-codebook-g<gen>.npy``), checked against
    its manifest entry and the config, or None when it has none."""
    entry = manifest.vectors_codebook
    if entry is None:
        return None
    if verify != "none":
        problems = check_files(path, (entry.file,), full=verify == "full")
        if problems:
            raise _damaged(problems)
    config = manifest.config
    return load_index_codebook(
        path / entry.file.file, config.dtype, config.dim, int(entry.codec["centroids"])
    )


def _check_vectors_codebook(path: Path, manifest: Manifest) -> tuple[list[str], np.ndarray | None]:
    """``verify``'s problems with the residual codebook (its file, then its shape and values),
    and the codebook when it is intact."""
    if manifest.vectors_codebook is None:
        return [], None
    problems = check_files(path, (manifest.vectors_codebook.file,), full=True)
    if problems:
        return problems, None
    try:
        return [], _open_vectors_codebook(path, manifest, "none")
    except IndexCorruptError as exc:
        return [str(exc)], None


def _open_rejects(path: Path, manifest: Manifest, verify: str) -> pa.MemoryMappedFile | None:
    if manifest.rejects is None:
        return None
    if verify != "none":
        problems = check_files(path, (manifest.rejects.file,), full=verify == "full")
        if problems:
            raise _damaged(problems)
    try:
        return pa.memory_map(str(path / manifest.rejects.file.file))
    except OSError as exc:
        raise IndexCorruptError(f"cannot read {path / manifest.rejects.file.file}: {exc}") from exc


class Index:
    """A committed index state, opened read-only. Many readers may open one index at once.

    Parameters
    ----------
    path
        The index directory.
    verify
        ``"fast"`` (default): every file exists with its recorded size, and files under 64 MB
        match their checksums. ``"full"``: every checksum (what ``latemm verify`` runs).
        ``"none"``: trust the sizes and checksums (array shapes and headers are always checked).
    """

    def __init__(self, path: str | Path, *, verify: str = "fast") -> None:
        if verify not in ("fast", "full", "none"):
            raise InputError(f"verify must be 'fast', 'full' or 'none', got {verify!r}")
        self.path = Path(path)
        refuse_links(self.path)  # an index is untrusted data: nothing in it may point outside
        self._load(verify)

    def _load(self, verify: str, reuse: Sequence[Segment] = ()) -> None:
        """Open the current commit (reusing unchanged segments of ``reuse``, see
        ``_open_commit``); lookups and the first stage are built on first use."""
        self.manifest, self.segments, self._rejects_file, self.vectors_codebook = _open_commit(
            self.path, verify, reuse
        )
        self.config = self.manifest.config
        self._locations: dict[str, tuple[int, int]] | None = None
        self._codebook_file = _open_codebook(self.path, self.manifest, verify)
        self._codebook: Any = None
        self._global: first_stage.GlobalFirstStage | None = None
        self._centroid_files: list[CentroidFile] | None = None
        self._refined: Index | None = None

    @classmethod
    def open(cls, path: str | Path, *, verify: str = "fast") -> Index:
        return cls(path, verify=verify)

    @classmethod
    def _reopen(cls, index: Index) -> Index:
        """The index's current commit, reusing the unchanged segments ``index`` has open."""
        reopened = cls.__new__(cls)
        reopened.path = index.path
        reopened._load("none", index.segments)
        return reopened

    @classmethod
    def _empty(cls, path: Path, manifest: Manifest) -> Index:
        """The state of an index not committed yet (held in memory by its writer)."""
        index = cls.__new__(cls)
        index.path, index.manifest, index.segments = path, manifest, []
        index.config, index._rejects_file, index._locations = manifest.config, None, None
        index._codebook_file, index._codebook, index._global = None, None, None
        index._refined, index.vectors_codebook, index._centroid_files = None, None, None
        return index

    def refined(self) -> Index:
        """This index as its refine copy stores the vectors (``IndexConfig.refine``): the same
        documents, first stage and metadata, with each segment's ``vectors`` its refine copy.
        The index itself when it has no refine copy."""
        if self.config.refine is None:
            return self
        if self._refined is None:
            view = copy.copy(self)
            view.segments = [seg.refined() for seg in self.segments]
            view._refined = view
            self._refined = view
        return self._refined

    # ---------------------------------------------------------------------- first stage
    def codebook(self) -> Any:
        """The FDE codebook of the global first stage (a trained, empty faiss ``IndexPQ``), or
        None when the index has none; checked before faiss parses it."""
        if self._codebook is None and self._codebook_file is not None:
            entry = self.manifest.codebook
            assert entry is not None
            self._codebook = first_stage.read_codebook(
                self.path / entry.file,
                self._codebook_file.read_at(self._codebook_file.size(), 0),
                expected_size=entry.size,
                factory=self.config.faiss_factory,
                dimension=self.config.faiss_dimension,
            )
        return self._codebook

    def global_first_stage(self) -> first_stage.GlobalFirstStage | None:
        """One fast-scan structure over every coded segment's FDE codes (built on first use),
        or None when no segment is coded; ``coded_segments`` lists which segments it covers."""
        if self._global is None and (coded := self.coded_segments()):
            blocks = [(s, np.asarray(self.segments[s].fde_codes)) for s in coded]
            self._global = first_stage.GlobalFirstStage.assemble(self.codebook(), blocks)
        return self._global

    def centroid_files(self) -> list[CentroidFile]:
        """PLAID's inverted files of the residual segments, one per codebook (built on first
        use): the segments under the index's codebook share one, a segment with a codebook of
        its own has its own. Segments stored in float16 (too small to train) are in none."""
        if self._centroid_files is None:
            by_codebook: dict[int, list[int]] = {}
            for s, seg in enumerate(self.segments):
                if seg.num_docs and codecs.is_residual(seg.dtype):
                    by_codebook.setdefault(id(seg.codebook), []).append(s)
            self._centroid_files = [
                CentroidFile.build(numbers, [self.segments[s] for s in numbers])
                for numbers in by_codebook.values()
            ]
        return self._centroid_files

    def coded_segments(self) -> list[int]:
        """Numbers of the segments searched by ``global_first_stage`` (the others have a faiss
        index each)."""
        return [s for s, seg in enumerate(self.segments) if seg.fde_codes is not None]

    # ---------------------------------------------------------------------------- lookups
    @property
    def generation(self) -> int:
        return self.manifest.generation

    @property
    def num_documents(self) -> int:
        return sum(int(s.live.sum()) for s in self.segments)

    def __len__(self) -> int:
        return self.num_documents

    def locations(self) -> dict[str, tuple[int, int]]:
        """doc_id -> (segment number, row) of every live document."""
        if self._locations is None:
            out: dict[str, tuple[int, int]] = {}
            for s, seg in enumerate(self.segments):
                for row in np.flatnonzero(seg.live):
                    out[seg.doc_ids[row]] = (s, int(row))
            self._locations = out
        return self._locations

    def __contains__(self, doc_id: object) -> bool:
        return str(doc_id) in self.locations()

    def doc_ids(self) -> Iterator[str]:
        """Live document ids, in storage order."""
        for seg in self.segments:
            yield from seg.doc_ids[seg.live]

    def vectors(
        self, segment: int, rows: np.ndarray, *, dtype: Any = np.float32, into: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Decoded vectors of some rows of a segment: (N, d) ``dtype`` (float32, or float16 for
        half-precision rescoring) and (len(rows) + 1,) offsets. ``into``: an (N, d) C-contiguous
        array of ``dtype`` to decode into (rows of a larger buffer, say) instead of a new one."""
        if np.dtype(dtype) not in (np.float32, np.float16):
            raise InputError(f"Index.vectors decodes to float32 or float16, not {dtype!r}")
        seg = self.segments[segment]
        rows = np.asarray(rows, dtype=np.int64)
        if into is not None:
            n = int((seg.offsets[rows + 1] - seg.offsets[rows]).sum())
            if into.shape != (n, self.config.dim) or into.dtype != dtype:
                raise InputError(
                    f"Index.vectors: into is {into.dtype} {into.shape}, the rows need "
                    f"{np.dtype(dtype)} ({n}, {self.config.dim})"
                )
            if seg.dtype == np.dtype(dtype).name:  # stored as asked: read straight into it
                return into, self.codes(segment, rows, into=into)[2]
        codes, scales, offsets = self.codes(segment, rows)
        if codes.shape[0] == 0:
            return (np.zeros((0, self.config.dim), dtype) if into is None else into), offsets
        return self.segments[segment].decode(codes, scales, dtype, into), offsets

    def codes(
        self, segment: int, rows: np.ndarray, *, into: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Stored codes of some rows of a segment, as stored (undecoded), with the int8 codes'
        scales (None for other dtypes) and (len(rows) + 1,) offsets; the codes are written into
        ``into`` (of their shape and dtype) when given."""
        seg = self.segments[segment]
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = seg.offsets[rows], seg.offsets[rows + 1]
        offsets = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=offsets[1:])
        if rows.size == 0:
            return seg.vectors[:0], None if seg.scales is None else seg.scales[:0], offsets
        # One contiguous slice per document: memory-mapped reads stay sequential.
        pieces = [seg.vectors[a:b] for a, b in zip(starts, ends, strict=True)]
        codes = np.concatenate(pieces, out=into)
        scales = None
        if seg.scales is not None:
            scales = np.concatenate([seg.scales[a:b] for a, b in zip(starts, ends, strict=True)])
        return codes, scales, offsets

    def half_vectors(self, segment: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
        """A float16 segment's stored (N, d) float16 vectors, memory-mapped (read in place, no
        copy), its (n + 1,) offsets and (n,) float16 largest magnitude per document (None for
        a segment written before they were stored); None for any other storage dtype
        (``codes`` reads int8 codes undecoded)."""
        seg = self.segments[segment]
        if seg.dtype != "float16":
            return None
        return seg.vectors, seg.offsets, seg.page_max

    def get(self, doc_id: str) -> Document:
        """A document by id, with its decoded vectors (from the refine copy where there is
        one) and metadata."""
        key = str(doc_id)
        if key not in self.locations():
            raise KeyError(f"doc_id {key!r} is not in the index {self.path}")
        s, row = self.locations()[key]
        vectors, _ = self.refined().vectors(s, np.array([row]))
        table = self.segments[s].metadata().slice(row, 1)
        metadata = {name: table.column(name)[0].as_py() for name in table.column_names}
        metadata.pop("doc_id", None)
        return Document(key, vectors, metadata)

    def metadata(self, columns: Sequence[str] | None = None) -> pa.Table:
        """Metadata of the live documents (all columns but the page content by default), with
        ``_segment`` and ``_row`` locating each document."""
        tables = []
        for s, seg in enumerate(self.segments):
            names = seg.schema.names
            wanted = list(columns) if columns is not None else names
            wanted = [c for c in wanted if c in names and (columns or c not in CONTENT_COLUMNS)]
            if "doc_id" not in wanted:
                wanted = ["doc_id", *wanted]
            live = np.flatnonzero(seg.live)
            table = (
                seg.metadata(wanted)
                .take(pa.array(live))
                .append_column("_segment", pa.array(np.full(live.size, s, np.int32)))
                .append_column("_row", pa.array(live.astype(np.int64)))
            )
            tables.append(table)
        if not tables:
            return pa.table(
                {
                    "doc_id": pa.array([], pa.string()),
                    "_segment": pa.array([], pa.int32()),
                    "_row": pa.array([], pa.int64()),
                }
            )
        return pa.concat_tables(tables, promote_options="default")

    def trained_codebook(self) -> codecs.TrainedCodebook | None:
        """The residual codebook of the whole index and the number of vectors it was trained
        on, as ``IndexWriter.use_vectors_codebook`` takes it; None without one."""
        entry = self.manifest.vectors_codebook
        if entry is None or self.vectors_codebook is None:
            return None
        return codecs.TrainedCodebook(self.vectors_codebook, int(entry.codec["trained_on"]))

    def rejects(self) -> pa.Table:
        """Rows an ingest skipped: ``doc_id``, ``source``, ``row`` (int64), ``reason``; one per
        doc_id, none for a doc_id that is in the index. Empty when there are none."""
        if self._rejects_file is None:
            return rejects.empty()
        return rejects.read(self.path / self.manifest.rejects.file.file, self._rejects_file)  # type: ignore[union-attr]

    def stats(self) -> dict[str, Any]:
        live_vectors = sum(int(np.diff(s.offsets)[s.live].sum()) for s in self.segments)
        disk = sum(f.size for _, f in self.manifest.files())
        return {
            "path": str(self.path),
            "format_version": self.manifest.written_version,
            "generation": self.generation,
            "documents": self.num_documents,
            "rejected": self.manifest.rejects.count if self.manifest.rejects else 0,
            "deleted_not_compacted": sum(int(s.deleted.sum()) for s in self.segments),
            "vectors": live_vectors,
            "segments": len(self.segments),
            "dim": self.config.dim,
            "dtype": self.config.dtype,
            "refine": self.config.refine,
            "refine_depth": self.config.refine_depth if self.config.refine else None,
            "refine_bytes": sum(
                f.size
                for e in self.manifest.segments
                for f in e.files
                if f.file in (REFINE_FILE, REFINE_SCALES_FILE)
            ),
            "fde_dimension": None
            if self.config.single_vector
            else self.config.fde_config.output_dimension,
            "faiss_factory": self.config.faiss_factory,
            "encoder": self.config.encoder,
            "disk_bytes": disk,
            "bytes_per_document": disk / max(1, self.num_documents),
        }

    def verify(self) -> list[str]:
        """Check every file against its size and checksum; returns the problems (empty = ok)."""
        return verify(self.path)


def verify(path: str | Path) -> list[str]:
    """Every problem with an index's files (missing, truncated, checksum mismatch, arrays or
    faiss header inconsistent with the manifest), read from the manifest alone so that it works
    on an index too damaged to open. Empty means intact."""
    root = Path(path)
    links = find_links(root)
    if links:  # reported, and nothing is read through them
        return links
    manifest = Manifest.read(root)
    problems = check_files(root, (manifest.rejects.file,), full=True) if manifest.rejects else []
    problems += _check_codebook(root, manifest)
    codebook_problems, shared = _check_vectors_codebook(root, manifest)
    problems += codebook_problems
    for entry in manifest.segments:
        if (
            shared is None
            and entry.file("codebook.npy") is None
            and codecs.is_residual(entry.storage_dtype(manifest.config.dtype))
        ):
            continue  # its codebook's problem is reported: its codes cannot be checked
        problems += check_segment(root / "segments", entry, manifest.config, shared)
    return problems


@dataclass(frozen=True)
class PendingBatch:
    """Documents buffered for the next commit: ids, (N, d) vectors (float16 for a float16
    index, which stores them as they are, float32 otherwise: ``buffer_dtype``), (n + 1,)
    offsets, an n-row metadata table (possibly without columns)."""

    doc_ids: tuple[str, ...]
    vectors: np.ndarray  # (N, d) float16 or float32
    offsets: np.ndarray  # (n + 1,) int64
    metadata: pa.Table

    def without(self, doc_id: str) -> PendingBatch:
        row = self.doc_ids.index(doc_id)
        keep = [r for r in range(len(self.doc_ids)) if r != row]
        lengths = np.diff(self.offsets)
        offsets = np.zeros(len(keep) + 1, dtype=np.int64)
        np.cumsum(lengths[keep], out=offsets[1:])
        metadata = self.metadata
        if metadata.num_columns:
            metadata = metadata.take(pa.array(keep, pa.int64()))
        return PendingBatch(
            tuple(self.doc_ids[r] for r in keep),
            self.vectors[np.repeat(np.arange(len(self.doc_ids)) != row, lengths)],
            offsets,
            metadata,
        )


class IndexWriter:
    """The single writer of an index: add, delete, upsert, reject, commit, compact.

    Holds an exclusive lock on ``DIR/LOCK`` from construction until ``close()``; a second
    writer gets ``IndexLockedError``. Changes are buffered until ``commit()``; a new index is
    written at its first commit (a failure before leaves no index behind).
    """

    def __init__(self, path: str | Path, *, config: IndexConfig | None = None) -> None:
        self.path = Path(path)
        prepare_folder(self.path)
        self._lock_fh = acquire_lock(self.path)
        try:
            self.index = self._open_or_new(config)
            if self._durable:
                collect_garbage(self.path, self.index.manifest)
        except BaseException:
            self.close()
            raise
        self._pending: list[PendingBatch] = []
        self._pending_ids: set[str] = set()
        self._deletes: set[str] = set()
        self._rejects: list[pa.Table] = []
        self._types = self._committed_types()
        self._buffer_dtype = buffer_dtype(self.config.dtype)
        self._new_codebook: FileEntry | None = None  # written, not yet committed
        self._trained: Any = None  # its parsed codebook
        # The residual codebook written by this commit, not yet committed, and its array.
        self._new_vectors_codebook: VectorsCodebookEntry | None = None
        self._vectors_trained: np.ndarray | None = None
        self._trained_on = 0  # the vectors it was trained on

    def _open_or_new(self, config: IndexConfig | None) -> Index:
        self._durable = (self.path / MANIFEST).is_file()
        if not self._durable:
            if config is None:
                raise InputError(
                    f"{self.path} holds no index yet; pass an IndexConfig to create one"
                )
            return Index._empty(self.path, Manifest(config=config, created=now()))
        index = Index(self.path)
        if config is not None:
            _check_same_config(self.path, index.config, config)
        return index

    # ----------------------------------------------------------------------- lifecycle
    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        release_lock(self._lock_fh)

    @property
    def config(self) -> IndexConfig:
        return self.index.config

    @property
    def pending_documents(self) -> int:
        return sum(len(p.doc_ids) for p in self._pending)

    # ----------------------------------------------------------------------- changes
    def add(
        self,
        doc_ids: Sequence[Any],
        vectors: Any,
        *,
        offsets: Any = None,
        metadata: pa.Table | None = None,
        upsert: bool = False,
        skip_existing: bool = False,
        source: str = "batch",
    ) -> int:
        """Buffer documents for the next commit. Validates everything first; on any error
        nothing is buffered.

        Parameters
        ----------
        doc_ids
            n ids (strings; integers are converted).
        vectors, offsets
            A sequence of (T_i, d) float arrays, or an (N, d) array with (n + 1,) offsets.
        metadata
            An n-row table: content (``image``, ``text``) and any metadata columns; a column
            keeps the type it has in the index.
        upsert
            Replace documents whose ids are already indexed.
        skip_existing
            Silently drop documents whose ids are already committed (resuming an ingest).
        source
            Where the batch came from (a file name), for error messages.

        Returns
        -------
        The number of documents buffered.
        """
        ids = _check_ids(doc_ids, source)
        flat, bounds = self._flatten(vectors, offsets, ids, source)
        table = metadata if metadata is not None else pa.table({})
        if table.num_columns and table.num_rows != len(ids):
            raise InputError(
                f"{source}: metadata has {table.num_rows} rows for {len(ids)} documents"
            )
        self._check_types(table, source)
        keep = self._keep(ids, upsert=upsert, skip_existing=skip_existing, source=source)
        nonzero, lengths = _unpadded(flat, bounds, ids, source)
        if self.config.single_vector and np.any(lengths[keep] > 1):
            row = int(np.flatnonzero(keep & (lengths > 1))[0])
            raise InputError(
                f"{source}, row {row}: document {ids[row]!r} has {int(lengths[row])} vectors; this "
                "index is single-vector (one vector per document): pool them first, or index "
                "into a multi-vector index",
                item=row,
            )
        rows = np.flatnonzero(keep)
        if rows.size == 0:
            return 0
        new_offsets = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(lengths[rows], out=new_offsets[1:])
        kept_ids = tuple(ids[r] for r in rows)
        buffered = _kept_vectors(
            vectors, flat, nonzero & np.repeat(keep, np.diff(bounds)), self._buffer_dtype
        )
        if buffered.dtype == np.float16 or codecs.is_residual(self.config.dtype):
            _check_float16_range(buffered, new_offsets, kept_ids, rows, source)
        if upsert:
            self._replace(ids, keep)
        batch = PendingBatch(
            kept_ids,
            buffered,
            new_offsets,
            table.take(pa.array(rows)) if table.num_columns else pa.table({}),
        )
        self._pending.append(batch)
        self._pending_ids.update(batch.doc_ids)
        self._types.update({f.name: f.type for f in table.schema if not pa.types.is_null(f.type)})
        return int(rows.size)

    def _flatten(
        self, vectors: Any, offsets: Any, ids: list[str], source: str
    ) -> tuple[np.ndarray, np.ndarray]:
        try:
            flat, bounds = as_flat(
                vectors, self.config.dim, offsets=offsets, kind="document", keep_float16=True
            )
        except FDEInputError as exc:
            if exc.item is not None and exc.item < len(ids):
                where = f"row {exc.item}, doc_id {ids[exc.item]!r} {exc.reason}"
                raise InputError(f"{source}: {where}", item=exc.item) from exc
            raise InputError(f"{source}: {exc}") from exc
        if len(ids) != bounds.size - 1:
            raise InputError(f"{source}: {len(ids)} doc_ids but {bounds.size - 1} vector sets")
        return flat, bounds

    def _committed_types(self) -> dict[str, pa.DataType]:
        types: dict[str, pa.DataType] = {}
        for seg in self.index.segments:
            types.update({f.name: f.type for f in seg.schema if not pa.types.is_null(f.type)})
        return types

    def _check_types(self, table: pa.Table, source: str) -> None:
        """A metadata column keeps one type across batches and commits (``--where`` and
        compaction read all segments as one table)."""
        for field in table.schema:
            known = self._types.get(field.name)
            if field.name == "doc_id" or known is None or pa.types.is_null(field.type):
                continue
            if field.type != known:
                raise InputError(
                    f"{source}: metadata column {field.name!r} has type {field.type} here but "
                    f"{known} in the index {self.path} (committed or buffered); a column keeps "
                    f"one type: cast it to {known} (or rename the column)"
                )

    def _keep(
        self, ids: list[str], *, upsert: bool, skip_existing: bool, source: str
    ) -> np.ndarray:
        """Which rows to add: committed ids are skipped (``skip_existing``), replaced
        (``upsert``) or an error."""
        keep = np.ones(len(ids), dtype=bool)
        committed = self.index.locations()
        for row, doc_id in enumerate(ids):
            pending = doc_id in self._pending_ids
            exists = pending or (doc_id in committed and doc_id not in self._deletes)
            if exists and skip_existing and not pending:
                keep[row] = False
            elif exists and not upsert:
                raise InputError(
                    f"{source}, row {row}: doc_id {doc_id!r} is already in the index {self.path}; "
                    "pass upsert=True (--on-existing upsert) to replace it or skip_existing=True "
                    "to resume"
                )
        return keep

    def _replace(self, ids: list[str], keep: np.ndarray) -> None:
        committed = self.index.locations()
        for row, doc_id in enumerate(ids):
            if keep[row] and doc_id in self._pending_ids:
                self._drop_pending(doc_id)
            if keep[row] and doc_id in committed:
                self._deletes.add(doc_id)

    def delete(self, doc_ids: Sequence[Any], *, missing_ok: bool = False) -> int:
        """Mark documents deleted at the next commit. Returns how many were found."""
        committed = self.index.locations()
        found = 0
        for doc_id in (str(i) for i in doc_ids):
            if doc_id in self._pending_ids:
                self._drop_pending(doc_id)
                found += 1
            elif doc_id in committed and doc_id not in self._deletes:
                self._deletes.add(doc_id)
                found += 1
            elif not missing_ok:
                raise InputError(
                    f"doc_id {doc_id!r} is not in the index {self.path}; nothing was deleted"
                )
        return found

    def reject(self, records: pa.Table | Sequence[dict[str, Any]]) -> int:
        """Record rows an ingest skipped (nothing the encoder can read), written at the next
        commit into the index's rejects file (``Index.rejects()``).

        Parameters
        ----------
        records
            A table or a list of dicts with ``doc_id`` (str), ``source`` (str, the input file),
            ``row`` (int >= 0, the row in ``source``) and ``reason`` (str). A later record for a
            doc_id replaces an earlier one (a resumed ingest does not duplicate them); a doc_id
            that is in the index after the commit has no record.

        Returns
        -------
        The number of records buffered.
        """
        table = rejects.as_table(records)
        if table.num_rows:
            self._rejects.append(table)
        return table.num_rows

    def upsert(self, doc_ids: Sequence[Any], vectors: Any, **kwargs: Any) -> int:
        return self.add(doc_ids, vectors, upsert=True, **kwargs)

    def _drop_pending(self, doc_id: str) -> None:
        self._pending = [p.without(doc_id) if doc_id in p.doc_ids else p for p in self._pending]
        self._pending_ids.discard(doc_id)

    # ----------------------------------------------------------------------- commit
    def commit(self, *, final: bool = False) -> int:
        """Write buffered changes and swap the manifest. Returns the new generation.

        ``final``: the last commit of a build (``latemm index``). A residual index without its
        codebook then trains it on what it holds when that is at least ``codecs.MIN_TRAIN``
        vectors, rather than waiting for ``INDEX_CODEBOOK_VECTORS``."""
        manifest = self.index.manifest
        residual_fold = self._residual_fold(final=final)
        if not (self._pending or self._deletes or self._rejects or residual_fold):
            if not self._durable:  # an empty index is still an index
                self._swap_manifest(manifest)
            return manifest.generation
        generation = manifest.generation + 1
        segments = self._write_deletions(generation)
        if self._pending or residual_fold:
            fde_fold = self._to_fold()
            folded = sorted(set(fde_fold) | set(residual_fold))
            batches = [self._live_batch(s) for s in folded] + self._pending
            segments.append(self._write_batches(batches, generation, folded=fde_fold, final=final))
            segments = [e for s, e in enumerate(segments) if s not in folded]
        # Segments whose documents are all deleted are dropped from the manifest.
        segments = [e for e in segments if e.num_deleted < e.num_docs]
        rejects_entry = self._write_rejects(generation)
        self._swap_manifest(
            replace(
                manifest,
                generation=generation,
                segments=tuple(segments),
                rejects=rejects_entry,
                updated=now(),
            )
            .with_codebook(self._new_codebook)
            .with_vectors_codebook(self._new_vectors_codebook)
        )
        return generation

    def _write_deletions(self, generation: int) -> list[SegmentEntry]:
        """The segment entries after this commit's deletions: one new bitmap per touched one."""
        locations = self.index.locations()
        touched: dict[int, np.ndarray] = {}
        for doc_id in self._deletes:
            s, row = locations[doc_id]
            if s not in touched:
                touched[s] = self.index.segments[s].deleted.copy()
            touched[s][row] = True
        entries = list(self.index.manifest.segments)
        seg_root = self.path / "segments"
        for s, bitmap in touched.items():
            fname = f"deleted-g{generation:06d}.npy"
            fpath = seg_root / entries[s].name / fname
            data = npy_bytes(bitmap)
            write_bytes_atomic(fpath, data)
            bitmap_entry = FileEntry(fname, len(data), sha256_file(fpath))
            entries[s] = entries[s].with_deleted(bitmap_entry, int(bitmap.sum()))
        return entries

    def _write_rejects(self, generation: int) -> RejectsEntry | None:
        """The rejects entry after this commit; a new file when the records change."""
        current = self.index.manifest.rejects
        if not self._rejects and not (current and self._pending):
            return current
        committed = self.index.locations()
        old = self.index.rejects()
        new = pa.concat_tables(self._rejects) if self._rejects else rejects.empty()
        merged = rejects.merge(
            old,
            new,
            lambda d: d in self._pending_ids or (d in committed and d not in self._deletes),
        )
        if merged.num_rows == 0:
            return None
        if current and merged.equals(old):
            return current
        fname = rejects.file_name(generation)
        data = rejects.to_bytes(merged)
        write_bytes_atomic(self.path / fname, data)
        entry = FileEntry(fname, len(data), sha256_file(self.path / fname))
        return RejectsEntry(entry, merged.num_rows)

    def _to_fold(self) -> list[int]:
        """The segments committed before the codebook, when this commit trains it: their live
        documents (fewer than ``MIN_TRAIN_DOCUMENTS``) are rewritten into its new segment, so
        that from then on every segment is coded (a per-segment Flat index of a few hundred
        FDEs costs more per query than the whole global structure)."""
        if (
            not first_stage.is_global(self.config.faiss_factory)
            or self.index.codebook() is not None
        ):
            return []
        uncoded = [s for s, seg in enumerate(self.index.segments) if seg.fde_codes is None]
        live = sum(len(self._live_rows(s)) for s in uncoded)
        if self.pending_documents + live < first_stage.MIN_TRAIN_DOCUMENTS:
            return []
        return uncoded

    def _residual_codebook(self) -> np.ndarray | None:
        """A residual index's codebook: committed, or written by the commit under way."""
        if self.index.vectors_codebook is not None:
            return self.index.vectors_codebook
        return self._vectors_trained

    def _residual_fold(self, *, final: bool) -> list[int]:
        """For a residual index without its codebook: its float16 segments (written while it
        had none), when they and the pending batch hold enough vectors to train it
        (``INDEX_CODEBOOK_VECTORS``, or ``codecs.MIN_TRAIN`` at the ``final`` commit). They
        are rewritten into this commit's segment, under the codebook trained on them all, so
        a build committing every few hundred documents ends with every segment coded under one
        codebook. Segments with a codebook of their own (written before it existed) stay."""
        if self.config.residual_codebook != "index" or self._residual_codebook() is not None:
            return []
        waiting = [s for s, seg in enumerate(self.index.segments) if seg.dtype == "float16"]
        held = sum(p.vectors.shape[0] for p in self._pending)
        for s in waiting:
            held += int(np.diff(self.index.segments[s].offsets)[self._live_rows(s)].sum())
        if not waiting or held < (codecs.MIN_TRAIN if final else INDEX_CODEBOOK_VECTORS):
            return []
        return waiting

    def _storage(
        self, flat: np.ndarray, generation: int, *, final: bool
    ) -> tuple[str, np.ndarray | None, np.ndarray | None]:
        """How a new segment of ``flat`` (N, d) stores its vectors: (storage dtype, a codebook
        of its own, the index's residual codebook). A residual index trains its one codebook
        here (written before the manifest swap) once ``flat`` holds enough vectors
        (``_residual_fold``); until then its segments store float16."""
        dtype = self.config.dtype
        if self.config.residual_codebook != "index":
            storage = codecs.storage_dtype(dtype, flat.shape[0])
            return (
                storage,
                codecs.train(flat, storage) if codecs.is_trained(storage) else None,
                None,
            )
        shared = self._residual_codebook()
        if shared is None and flat.shape[0] >= (
            codecs.MIN_TRAIN if final else INDEX_CODEBOOK_VECTORS
        ):
            shared = self._vectors_trained = codecs.train(flat, dtype)
            self._trained_on = flat.shape[0]
        recorded = self.index.vectors_codebook is not None or self._new_vectors_codebook is not None
        if shared is not None and not recorded:  # trained by this commit or before it: record it
            fpath = self.path / vectors_codebook_name(generation)
            data = npy_bytes(shared)
            write_bytes_atomic(fpath, data)
            self._new_vectors_codebook = VectorsCodebookEntry(
                FileEntry(fpath.name, len(data), sha256_file(fpath)),
                codecs.residual_training(shared, dtype, self._trained_on),
            )
        return (dtype, None, shared) if shared is not None else ("float16", None, None)

    def train_vectors_codebook(self, sample: np.ndarray) -> None:
        """Train a residual index's one codebook now, on ``sample`` (N, d) float32, vectors
        drawn from the whole corpus (as PLAID trains its centroids), not on the first
        ``INDEX_CODEBOOK_VECTORS`` vectors added: a corpus added in order (a PDF's pages after
        another's) would code its later documents under centroids of the first ones
        (MMLongBench, 1,728 pages: recall@10 0.902 against 0.953). The next commit records
        it; every segment written from then on is coded with it."""
        self.use_vectors_codebook(codecs.train_codebook(sample, self.config.dtype))

    def use_vectors_codebook(self, trained: codecs.TrainedCodebook) -> None:
        """Code this new residual index with a codebook trained elsewhere
        (``codecs.train_codebook``): the shards of a collection share one, so each page is
        coded as the unsharded index codes it. The next commit records it."""
        if self.config.residual_codebook != "index" or not codecs.is_residual(self.config.dtype):
            raise InputError(
                f"{self.path}: a codebook trained from a sample is the index's residual one; this "
                f"index stores {self.config.dtype} with residual_codebook="
                f"{self.config.residual_codebook!r}"
            )
        if self._residual_codebook() is not None or self.index.segments or self._pending:
            raise InputError(
                f"{self.path} already holds vectors or a codebook: train it from a sample "
                "before the first add"
            )
        problems = codebook_problems(trained.values, self.config.dtype, self.config.dim)
        if problems:
            raise InputError(f"{self.path}: the codebook given does not fit: {'; '.join(problems)}")
        self._vectors_trained = trained.values
        self._trained_on = trained.trained_on

    def _live_rows(self, s: int) -> np.ndarray:
        """Rows of segment ``s`` live after this commit's deletions."""
        seg = self.index.segments[s]
        return np.array(
            [r for r in np.flatnonzero(seg.live) if seg.doc_ids[r] not in self._deletes],
            dtype=np.int64,
        )

    def _live_batch(self, s: int, rows: np.ndarray | None = None) -> PendingBatch:
        """Segment ``s``'s live documents (or ``rows``) as a batch to rewrite."""
        seg = self.index.segments[s]
        rows = self._live_rows(s) if rows is None else rows
        # The refine copy, where there is one, is the finer record of the vectors.
        source = self.index.refined()
        vectors, offsets = source.vectors(s, rows, dtype=buffer_dtype(self.config.dtype))
        table = seg.metadata().take(pa.array(rows)).drop_columns(["doc_id"])
        return PendingBatch(tuple(seg.doc_ids[rows]), vectors, offsets, table)

    def _codebook_for(self, generation: int, *, folded: Sequence[int] | None) -> Any:
        """For a global first stage, ``write_segment``'s ``codebook_for``: the index's codebook,
        trained and written (before the manifest swap) on the first batch that, with the
        segments committed before any codebook, holds ``MIN_TRAIN_DOCUMENTS`` documents.
        ``folded``: the segments rewritten into the batch (None: all, a compaction)."""
        if not first_stage.is_global(self.config.faiss_factory):
            return None

        def provide(fde: np.ndarray) -> Any:
            existing = self.index.codebook()
            if existing is not None or self._new_codebook is not None:
                return existing if existing is not None else self._trained
            earlier = [
                seg
                for s, seg in enumerate(self.index.segments)
                if folded is not None and s not in folded and seg.fde_codes is None
            ]
            if len(fde) + sum(s.num_docs for s in earlier) < first_stage.MIN_TRAIN_DOCUMENTS:
                return None
            sample = [fde] + [s.faiss_index().reconstruct_n(0, s.num_docs) for s in earlier]
            codebook = first_stage.train_codebook(self.config.faiss_factory, np.concatenate(sample))
            data = first_stage.serialize_codebook(codebook)
            fpath = self.path / first_stage.codebook_name(generation)
            write_bytes_atomic(fpath, data)
            self._new_codebook = FileEntry(fpath.name, len(data), sha256_file(fpath))
            self._trained = codebook
            return codebook

        return provide

    def _write_batches(
        self,
        batches: list[PendingBatch],
        generation: int,
        *,
        folded: Sequence[int] | None = (),
        final: bool = False,
    ) -> SegmentEntry:
        """One new segment ``seg-g<generation>`` holding ``batches``, which include the live
        documents of the ``folded`` segments (None: all of them, a compaction, which trains a
        residual codebook as the ``final`` commit does)."""
        ids = [i for p in batches for i in p.doc_ids]
        flat = (
            batches[0].vectors
            if len(batches) == 1
            else np.concatenate([p.vectors for p in batches])
        )
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(np.concatenate([np.diff(p.offsets) for p in batches]), out=offsets[1:])
        table = _merge_tables([p.metadata for p in batches], [len(p.doc_ids) for p in batches])
        id_column = pa.array(ids, pa.string())
        if "doc_id" in table.column_names:
            table = table.set_column(table.column_names.index("doc_id"), "doc_id", id_column)
        else:
            table = table.append_column("doc_id", id_column)
        storage, codebook, shared = self._storage(flat, generation, final=final or folded is None)
        codes, scales = codecs.encode(flat, storage, codebook if shared is None else shared)
        refine = None
        if self.config.refine is not None and storage != "float16":
            refine = codecs.encode(flat, self.config.refine, None)
        seg_root = self.path / "segments"
        seg_root.mkdir(exist_ok=True)
        return write_segment(
            seg_root,
            f"seg-g{generation:06d}",
            codes=codes,
            scales=scales,
            offsets=offsets,
            table=table,
            config=self.config,
            codebook_for=self._codebook_for(generation, folded=folded),
            codebook=codebook,
            storage=storage,
            refine=refine,
            index_codebook=shared,
        )

    def _swap_manifest(self, manifest: Manifest) -> None:
        manifest.write(self.path)  # the commit
        self._durable = True
        self._pending, self._pending_ids, self._deletes, self._rejects = [], set(), set(), []
        self._new_codebook = None
        self._new_vectors_codebook, self._vectors_trained = None, None
        self.index = Index._reopen(self.index)
        collect_garbage(self.path, self.index.manifest)

    def compact(self) -> int:
        """Rewrite all segments as one, without deleted documents; returns the new generation.

        Document ids, vectors, metadata and FDEs are unchanged (FDEs are recomputed from the
        stored vectors, as they were first computed); with a global first stage every document
        is encoded under the index's codebook (trained here when there is none yet and there
        are enough documents)."""
        self.commit()
        index = self.index
        uncoded = first_stage.is_global(self.config.faiss_factory) and any(
            s.fde_codes is None for s in index.segments
        )
        # Residual segments not under the index's codebook (float16, or their own codebook).
        unshared = self.config.residual_codebook == "index" and any(
            s.dtype == "float16" or s.entry.file("codebook.npy") is not None for s in index.segments
        )
        if (
            len(index.segments) <= 1
            and not any(s.deleted.any() for s in index.segments)
            and not (uncoded and index.num_documents >= first_stage.MIN_TRAIN_DOCUMENTS)
            and not (
                unshared
                and sum(int(np.diff(s.offsets)[s.live].sum()) for s in index.segments)
                >= codecs.MIN_TRAIN
            )
        ):
            return index.generation
        batches = [
            self._live_batch(s, np.flatnonzero(seg.live)) for s, seg in enumerate(index.segments)
        ]
        generation = index.generation + 1
        segment = self._write_batches(batches, generation, folded=None)
        self._swap_manifest(
            replace(index.manifest, generation=generation, segments=(segment,), updated=now())
            .with_codebook(self._new_codebook)
            .with_vectors_codebook(self._new_vectors_codebook)
        )
        return generation


# A residual index trains its codebook on the first commit holding this many vectors (those of
# the float16 segments written before it included): 2^18 is where PLAID's centroid count
# (``codecs.num_centroids``: 16 sqrt(2^18) = 2^13) meets the most that k-means' sample of
# ``codecs.RESIDUAL_TRAIN_SAMPLE`` = 2^17 vectors supports (one per 16), so waiting longer would
# give it neither more points nor more centroids. On Vaswani's MiniLM tokens (~5,500 abstracts
# here, 11 commits of 512) recall@10 against exact was 0.960 with it and 0.956 training at
# 2^17 (4,096 centroids), against 0.961 with per-segment codebooks
# (experiments/results/index_codebook.json); smaller builds train it at their last commit
# (``commit(final=True)``) or at compaction, on what they hold.
INDEX_CODEBOOK_VECTORS = 1 << 18


def buffer_dtype(dtype: str) -> np.dtype:
    """What an index of storage ``dtype`` buffers added vectors as: float16 for float16 (what it
    stores: converted once, half the memory), float32 for the codecs that encode at commit."""
    return np.dtype(np.float16 if dtype == "float16" else np.float32)


def _kept_vectors(given: Any, flat: np.ndarray, keep: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The (N', d) vectors to buffer: ``flat[keep]`` as ``dtype``, always an array of our own
    (the caller may reuse its buffer after ``add``), converted or copied once."""
    if not keep.all():
        flat = flat[keep]
        if flat.dtype == dtype:
            return flat
    elif flat.dtype == dtype and isinstance(given, (list, tuple)) and len(given) > 0:
        return flat  # a list of arrays was concatenated into a new array
    out = np.empty(flat.shape, dtype)

    def convert(rows: slice) -> None:
        # torch converts float32 <-> float16 as numpy does (round to nearest even), several
        # times faster.
        torch.from_numpy(out[rows]).copy_(torch.from_numpy(flat[rows]))

    _in_row_blocks(convert, flat.shape[0])
    return out


def _in_row_blocks(work: Callable[[slice], None], rows: int) -> None:
    """Run ``work`` over blocks of ``rows`` rows, one per core (``cpu_threads``) on threads:
    numpy and torch release the GIL in these memory-bound passes. One block when small."""
    blocks = min(cpu_threads(), max(1, rows // _BLOCK_ROWS))
    edges = np.linspace(0, rows, blocks + 1).astype(np.int64)
    spans = [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    if len(spans) == 1:
        work(spans[0])
        return
    with ThreadPoolExecutor(max_workers=len(spans)) as pool:
        list(pool.map(work, spans))  # re-raises the first error


def _check_float16_range(
    vectors: np.ndarray, offsets: np.ndarray, ids: tuple[str, ...], rows: np.ndarray, source: str
) -> None:
    """Refuse float16 vectors that overflowed (finite input beyond +-65504 rounds to inf):
    ``vectors`` (N, d) are the documents ``ids`` (rows ``rows`` of the batch) as buffered, in
    float16, or in float32 for residual codes (their centroids, errors and the segments too
    small to train are float16 too)."""
    if vectors.dtype == np.float16:
        if all_finite(vectors):
            return
        beyond = ~np.isfinite(vectors).all(axis=1)
    else:
        beyond = np.abs(vectors).max(axis=1, initial=0.0) > float(np.finfo(np.float16).max)
        if not beyond.any():
            return
    vector = int(np.flatnonzero(beyond)[0])
    doc = int(np.searchsorted(offsets, vector, side="right") - 1)
    row = int(rows[doc])
    raise InputError(
        f"{source}, row {row}: document {ids[doc]!r} has values beyond float16's range "
        f"(+-65504) in vector {vector - int(offsets[doc])}; this index stores float16 (or "
        "residual codes of float16 parts): scale "
        "the vectors (e.g. normalise them) or index into a float32 index",
        item=row,
    )


def _nonzero_rows(flat: np.ndarray) -> np.ndarray:
    """(N,) bool: which rows hold a non-zero value (-0.0 is zero). float16 rows are OR-ed as
    integers (a value is zero when its bits but the sign are), faster than comparing floats."""
    out = np.empty(flat.shape[0], dtype=bool)

    def check(rows: slice) -> None:
        if flat.dtype == np.float16:
            bits = np.bitwise_or.reduce(flat[rows].view(np.uint16), axis=1)
            np.not_equal(bits & 0x7FFF, 0, out=out[rows])
        else:
            np.any(flat[rows] != 0, axis=1, out=out[rows])

    _in_row_blocks(check, flat.shape[0])
    return out


def _unpadded(
    flat: np.ndarray, bounds: np.ndarray, ids: list[str], source: str
) -> tuple[np.ndarray, np.ndarray]:
    """Encoders pad with zero vectors; they carry no signal and are not stored. Returns which
    vectors to keep, (N,) bool, and the documents' lengths without padding, (n,) int64."""
    nonzero = _nonzero_rows(flat)
    lengths = np.add.reduceat(nonzero.astype(np.int64), bounds[:-1])
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        row = int(empty[0])
        raise InputError(
            f"{source}, row {row}: document {ids[row]!r} has only zero (padding) vectors; "
            "every document needs at least one non-zero vector",
            item=row,
        )
    return nonzero, lengths


def _check_ids(doc_ids: Sequence[Any], source: str) -> list[str]:
    """Ids as strings (integers converted): non-empty and unique within the batch."""
    ids = [str(i) if isinstance(i, (int, np.integer)) else i for i in doc_ids]
    seen: dict[str, int] = {}
    for row, doc_id in enumerate(ids):
        if not isinstance(doc_id, str) or not doc_id:
            raise InputError(
                f"{source}, row {row}: doc_id must be a non-empty string or an integer, "
                f"got {doc_id!r}",
                item=row,
            )
        if doc_id in seen:
            raise InputError(
                f"{source}, rows {seen[doc_id]} and {row}: duplicate doc_id {doc_id!r} in one "
                "batch; ids must be unique",
                item=row,
            )
        seen[doc_id] = row
    return ids


def _check_same_config(path: Path, recorded: IndexConfig, requested: IndexConfig) -> None:
    """One compatibility check: an index keeps the settings it was created with."""
    differences = recorded.differences(requested)
    if differences:
        raise IndexFormatError(
            f"{path} was created with other settings ({'; '.join(differences)}); an index keeps "
            "the settings it was created with. Leave the options out to use the recorded ones, "
            "or write to another directory"
        )
    if requested.encoder and recorded.encoder and requested.encoder != recorded.encoder:
        raise IndexFormatError(
            f"{path} was built with encoder {recorded.encoder.get('name_or_path')!r}; "
            f"refusing vectors from {requested.encoder.get('name_or_path')!r}"
        )


def _merge_tables(tables: list[pa.Table], rows: list[int]) -> pa.Table:
    """Concatenate metadata tables of several batches; batches without columns get nulls."""
    if all(t.num_columns == 0 for t in tables):
        return pa.table({"_": pa.nulls(sum(rows))}).drop_columns(["_"])
    filled = [
        t if t.num_columns else pa.table({"_latemm_empty": pa.nulls(n)})
        for t, n in zip(tables, rows, strict=True)
    ]
    merged = pa.concat_tables(filled, promote_options="default")
    return (
        merged.drop_columns(["_latemm_empty"]) if "_latemm_empty" in merged.column_names else merged
    )


def create(path: str | Path, config: IndexConfig) -> IndexWriter:
    """Create an index (or reopen an existing one with the same config) for writing."""
    return IndexWriter(path, config=config)


def open_index(path: str | Path, *, verify: str = "fast") -> Index:
    return Index(path, verify=verify)
