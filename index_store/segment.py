"""One immutable segment of an index: a batch of documents written once, then only read.

Files (all in the segment's directory, listed with sizes and sha256 in the manifest):
``vectors.npy`` (N, d) codes, ``scales.npy`` (N,) for int8, ``codebook.npy`` (M, 16, d / M)
float32 for a trained codec (``codecs.PQ_SUBDIM``: trained on this segment's vectors, so
compaction retrains it; a segment too small to train one stores float16 and its manifest entry
says so), ``offsets.npy`` (n + 1,) int64,
``fde.faiss`` the faiss index over the documents' FDEs (recomputed from the stored vectors when a
segment is compacted, so they are not kept twice) or, under the index's codebook,
``fde-codes.npy`` their product-quantised codes (``index_store.first_stage``),
``page-max.npy`` (n,) float16 each document's largest stored magnitude for float16 storage (the
fast rescoring pass's error bound needs it; segments written before it existed lack it and
the pass reads it from the vectors), ``refine-vectors.npy`` (N, d) and for int8
``refine-scales.npy`` (N,): the refine copy beside compact codes (``IndexConfig.refine``); for
a residual codec (``codecs.RESIDUAL_BITS``) ``codebook.npy`` holds the segment's centroids and
bucket cutoffs and weights (absent in a segment written under the index's residual codebook,
``vectors-codebook-g<gen>.npy`` at the index root, which readers pass in), and ``scales.npy``
each vector's recorded reconstruction error; and ``meta.parquet`` with
``doc_id``, the page content and every metadata column. Deletions live in separate
``deleted-g<generation>.npy`` bitmaps, so a committed file is never modified.

Files are data: every array's dtype, shape and offsets are checked against the manifest and the
config before use, and the faiss file's size and header before faiss deserializes it. A reader
pins what it opened (memory maps held from open time), so a writer's garbage collection never
pulls a file from under it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fde import encode_flat
from index_store import codecs, first_stage
from index_store.config import IndexConfig, faiss_fourccs
from index_store.errors import IndexCorruptError, InputError
from index_store.fsio import fsync_dir, load_npy, save_bytes, save_npy, sha256_file, write_file
from index_store.manifest import (
    PAGE_MAX_FILE,
    REFINE_FILE,
    REFINE_SCALES_FILE,
    FileEntry,
    SegmentEntry,
)

SMALL_FILE = 64 << 20  # files below this size are checksummed on every open
_FAISS_HEADER = 37  # fourcc, d (int32), ntotal (int64), 2 x int64, is_trained (u8), metric (int32)


def build_faiss(factory: str, fde: np.ndarray) -> Any:
    import faiss

    dim = fde.shape[1]
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise InputError(f"faiss could not build {factory!r}: {exc}") from exc
    if not index.is_trained:
        try:
            index.train(fde)
        except RuntimeError as exc:
            raise InputError(
                f"training the faiss index {factory!r} on {len(fde)} documents failed ({exc}); "
                "commit larger batches (--commit-every) or use a smaller index (e.g. Flat)"
            ) from exc
    index.add(fde)
    return index


def write_segment(
    root: Path,
    name: str,
    *,
    codes: np.ndarray,
    scales: np.ndarray | None,
    offsets: np.ndarray,
    table: pa.Table,
    config: IndexConfig,
    codebook_for: Callable[[np.ndarray], Any] | None = None,
    codebook: np.ndarray | None = None,
    storage: str | None = None,
    refine: tuple[np.ndarray, np.ndarray | None] | None = None,
    index_codebook: np.ndarray | None = None,
) -> SegmentEntry:
    """Write a complete segment under ``root/name`` and return its manifest entry.

    ``storage`` is what ``codes`` are (``codecs.storage_dtype``; default the config's dtype),
    with ``codebook`` for a trained codec. float16 and float32 codes are the FDE's input as they
    are (it widens float16 chunk by chunk); other codes are decoded first.

    Everything is written into a temporary directory, fsynced, then renamed into place, so a
    crash leaves either nothing or a whole (not yet committed) segment; a failure removes the
    temporary directory. ``codebook_for(fde)``, for a global first stage, returns the index's
    codebook (or None before it exists): the FDEs are then stored as its codes,
    ``fde-codes.npy``, instead of a faiss index of their own. ``refine``: the refine copy's
    (codes, scales) in ``config.refine``, from which the FDEs are then computed.
    ``index_codebook``: the index's residual codebook the codes are under (instead of
    ``codebook``); it is not stored with the segment.
    """
    import faiss

    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        # Checksums of the files written here are taken as they are written, not read back.
        # The vectors go to disk (through sha256) on a second thread while the FDE is computed:
        # both release the GIL. A failure below still removes the whole temporary directory.
        kind = storage or config.dtype
        with ThreadPoolExecutor(max_workers=1) as pool:
            vectors_written = pool.submit(save_npy, tmp / "vectors.npy", codes)
            magnitudes = None
            if kind == "float16":  # after the vectors, on the same thread
                magnitudes = pool.submit(codecs.page_magnitudes, codes, offsets)
            # The FDE is computed from the stored (decoded) vectors so that compaction
            # reproduces it: the refine copy where there is one.
            if refine is None:
                decoded = _as_stored(
                    codes,
                    scales,
                    kind,
                    config.dim,
                    codebook if codebook is not None else index_codebook,
                )
            else:
                decoded = _as_stored(*refine, str(config.refine), config.dim, None)
            fde = first_stage_vectors(decoded, offsets, config)
            fde_codebook = codebook_for(fde) if codebook_for is not None else None
            index = None
            if fde_codebook is None:  # training may fail
                factory = "Flat" if first_stage.is_global(config.faiss_factory) else None
                index = build_faiss(factory or config.faiss_factory, fde)
            digests = {"vectors.npy": vectors_written.result()}
        if scales is not None:
            digests["scales.npy"] = save_npy(tmp / "scales.npy", scales)
        if magnitudes is not None:
            digests[PAGE_MAX_FILE] = save_npy(tmp / PAGE_MAX_FILE, magnitudes.result())
        if codebook is not None:
            digests["codebook.npy"] = save_npy(tmp / "codebook.npy", codebook)
        if refine is not None:
            digests[REFINE_FILE] = save_npy(tmp / REFINE_FILE, refine[0])
            if refine[1] is not None:
                digests[REFINE_SCALES_FILE] = save_npy(tmp / REFINE_SCALES_FILE, refine[1])
        digests["offsets.npy"] = save_npy(tmp / "offsets.npy", offsets)
        if index is not None:
            digests["fde.faiss"] = save_bytes(tmp / "fde.faiss", faiss.serialize_index(index))
        else:
            codes_file = first_stage.CODES_FILE
            digests[codes_file] = save_npy(
                tmp / codes_file, first_stage.encode_codes(fde_codebook, fde)
            )
        write_file(tmp / "meta.parquet", lambda fh: pq.write_table(table, fh))
        fsync_dir(tmp)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(root)
    files = tuple(
        FileEntry(p.name, p.stat().st_size, digests.get(p.name) or sha256_file(p))
        for p in sorted(final.iterdir())
    )
    return SegmentEntry(
        name,
        int(offsets.size - 1),
        int(offsets[-1]),
        files,
        dtype=kind if kind != config.dtype else None,
        codec=codecs.residual_training(codebook, kind, int(offsets[-1]))
        if codebook is not None and codecs.is_residual(kind)
        else None,
    )


def _as_stored(
    codes: np.ndarray,
    scales: np.ndarray | None,
    kind: str,
    dim: int,
    codebook: np.ndarray | None,
) -> np.ndarray:
    """The vectors ``codes`` stand for: float16 and float32 codes as they are (the FDE widens
    float16 chunk by chunk), other codecs decoded."""
    if kind in ("float16", "float32"):
        return codes
    return codecs.decode(codes, scales, kind, dim, codebook)


def first_stage_vectors(
    decoded: np.ndarray, offsets: np.ndarray, config: IndexConfig
) -> np.ndarray:
    """What faiss indexes: the documents' FDEs, or for a single-vector index their one vector
    each, (n, D) float32. ``decoded`` is the stored vectors, (N, d) float32 or float16 (checked
    when they were added)."""
    if not config.single_vector:
        return encode_flat(np.ascontiguousarray(decoded), offsets, config.fde_config)
    lengths = np.diff(offsets)
    if np.any(lengths != 1):
        row = int(np.flatnonzero(lengths != 1)[0])
        raise InputError(
            f"document {row} of a single-vector segment has {int(lengths[row])} vectors"
        )
    return np.ascontiguousarray(decoded, dtype=np.float32)


def check_files(directory: Path, files: tuple[FileEntry, ...], *, full: bool) -> list[str]:
    """Problems with some files: missing, wrong size, checksum mismatch."""
    problems = []
    for info in files:
        fpath = directory / info.file
        if fpath.is_symlink():  # never read through a link out of the index
            problems.append(f"{fpath}: a symbolic link (an index holds none); remove it")
            continue
        # A file can vanish between the checks (a writer's commit removing what it replaced,
        # while a reader opens the state before it): reported as missing, so that the reader
        # retries on the new manifest instead of failing with a bare FileNotFoundError.
        if not fpath.is_file():
            problems.append(f"{fpath}: missing")
            continue
        try:
            size = fpath.stat().st_size
            if size != info.size:
                problems.append(
                    f"{fpath}: size {size} bytes, manifest says {info.size} (truncated or replaced)"
                )
                continue
            if (full or size <= SMALL_FILE) and sha256_file(fpath) != info.sha256:
                problems.append(f"{fpath}: checksum mismatch (file corrupted)")
        except FileNotFoundError:
            problems.append(f"{fpath}: missing")
        except OSError as exc:
            problems.append(f"{fpath}: unreadable ({exc})")
    return problems


def check_faiss_header(
    path: Path,
    head: bytes,
    *,
    file_size: int,
    expected_size: int,
    config: IndexConfig,
    num_docs: int,
) -> None:
    """Refuse a ``fde.faiss`` that is not what we wrote for this segment before faiss parses it
    (faiss trusts its input: a crafted file can make it allocate without bound or abort).

    ``head`` is the file's first 45 bytes (or all of it when shorter).
    """

    def bad(why: str) -> IndexCorruptError:
        return IndexCorruptError(
            f"{path}: {why}; it is not the faiss index this segment was written with. Restore "
            "the file or rebuild the index"
        )

    if file_size != expected_size:
        raise bad(f"{file_size} bytes, the manifest says {expected_size}")
    if min(file_size, len(head)) < _FAISS_HEADER:
        raise bad(f"only {file_size} bytes, too short for a faiss index")
    fourccs = faiss_fourccs(config.faiss_factory)
    if head[:4] not in fourccs:
        raise bad(
            f"starts with {head[:4]!r}; {config.faiss_factory!r} indexes start with "
            f"{' or '.join(map(repr, sorted(fourccs)))}"
        )
    d = int(np.frombuffer(head, "<i4", 1, 4)[0])
    ntotal = int(np.frombuffer(head, "<i8", 1, 8)[0])
    metric = int(np.frombuffer(head, "<i4", 1, 33)[0])
    expected_d = config.faiss_dimension
    if (d, ntotal, metric) != (expected_d, num_docs, 0):
        raise bad(
            f"holds {ntotal} vectors of dimension {d} (metric {metric}); expected {num_docs} of "
            f"dimension {expected_d} (inner product)"
        )
    if head[:4] == b"IxFI":
        floats = int(np.frombuffer(head, "<u8", 1, _FAISS_HEADER)[0]) if len(head) >= 45 else -1
        if floats != d * ntotal or file_size != 45 + 4 * d * ntotal:
            raise bad(f"its flat codes do not hold {ntotal} x {d} floats")


@dataclass(frozen=True)
class CentroidFile:
    """PLAID's inverted file over the residual segments that share one codebook (every segment
    under the index's codebook, or one segment with its own), built from their codes once per
    reader (``Index.centroid_files``). Pages are numbered across the segments in order: segment
    ``segments[g]``'s row r is page ``bases[g] + r``.

    ``tokens`` (N,) int32 the centroid of every token and ``offsets`` (P + 1,) each page's
    tokens; the pages holding a token of centroid c are ``pages[starts[c]:starts[c + 1]]``, each
    once, ascending. One file, not one per segment: a build commits every few hundred pages, and
    a query's lookups and gathers per segment cost more than the work in them (Vaswani, 12
    segments: 1.19x the time of the same pages in one)."""

    segments: tuple[int, ...]
    bases: np.ndarray
    tokens: np.ndarray
    offsets: np.ndarray
    starts: np.ndarray
    pages: np.ndarray

    @classmethod
    def build(cls, numbers: Sequence[int], segments: Sequence[Segment]) -> CentroidFile:
        """The file of ``segments`` (numbered ``numbers``), residual segments of one codebook."""
        tokens, lengths, centroids, pages = [], [], [], []
        bases = np.zeros(len(segments) + 1, dtype=np.int64)
        for g, seg in enumerate(segments):
            seg.residual_parts()  # refuses a segment without residual codes
            ids = codecs.centroid_ids(seg.vectors).astype(np.int32)
            n = max(seg.num_docs, 1)
            page = np.repeat(np.arange(seg.num_docs, dtype=np.int64), np.diff(seg.offsets))
            centroid, rows = np.divmod(np.unique(ids.astype(np.int64) * n + page), n)
            tokens.append(ids)
            lengths.append(np.diff(seg.offsets))
            centroids.append(centroid)
            pages.append(rows + bases[g])
            bases[g + 1] = bases[g] + seg.num_docs
        centroid = np.concatenate(centroids)
        order = np.argsort(centroid, kind="stable")  # within a centroid: segment, then row
        offsets = np.zeros(int(bases[-1]) + 1, dtype=np.int64)
        np.cumsum(np.concatenate(lengths), out=offsets[1:])
        k = segments[0].residual_parts()[0].shape[0]
        return cls(
            tuple(numbers),
            bases,
            np.concatenate(tokens),
            offsets,
            np.searchsorted(centroid[order], np.arange(k + 1)),
            np.concatenate(pages)[order],
        )

    def locate(self, pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(segment numbers, rows) of ``pages`` of this file."""
        g = np.searchsorted(self.bases, pages, side="right") - 1
        return np.asarray(self.segments, dtype=np.int64)[g], pages - self.bases[g]


@dataclass
class Segment:
    """A committed segment opened for reading.

    Vectors are memory-mapped; the faiss file and the metadata are memory-mapped at open time
    and parsed on first use, so the segment reads what it opened even after a writer has
    replaced or removed the files.
    """

    name: str
    path: Path
    entry: SegmentEntry
    offsets: np.ndarray  # (n + 1,) int64
    vectors: np.ndarray  # (N, d) codes, memory-mapped
    scales: np.ndarray | None  # (N,) float32 for int8
    doc_ids: np.ndarray  # (n,) object (str)
    deleted: np.ndarray  # (n,) bool
    config: IndexConfig
    _meta: pq.ParquetFile
    _faiss_file: pa.MemoryMappedFile | None  # None for a coded segment
    _faiss: Any = None
    fde_codes: np.ndarray | None = None  # (n, code size) uint8 under the index's codebook
    dtype: str = "float16"  # what ``vectors`` are (``SegmentEntry.storage_dtype``)
    codebook: np.ndarray | None = None  # (M, 16, d / M) float32 for a trained codec
    page_max: np.ndarray | None = None  # (n,) float16 largest magnitude per float16 document
    refine_vectors: np.ndarray | None = None  # (N, d) the refine copy, memory-mapped
    refine_scales: np.ndarray | None = None  # (N,) float32 for an int8 refine copy
    _tables: dict[str, np.ndarray] = field(default_factory=dict)

    def refined(self) -> Segment:
        """This segment as its refine copy stores it (itself where it has none: a segment
        stored in float16 because it was too small to train its codec)."""
        if self.refine_vectors is None:
            return self
        return replace(
            self,
            vectors=self.refine_vectors,
            scales=self.refine_scales,
            dtype=str(self.config.refine),
            codebook=None,
            page_max=None,
            refine_vectors=None,
            refine_scales=None,
            _tables={},
        )

    def decode(
        self, codes: np.ndarray, scales: np.ndarray | None, out: Any, into: Any = None
    ) -> np.ndarray:
        """Codes of some of this segment's vectors -> (n, d) ``out`` (float32 or float16),
        written into ``into`` ((n, d) C-contiguous of that dtype) when given."""
        if self.codebook is not None and codecs.is_residual(self.dtype):
            return self.decode_residual(codes, out, into)
        if self.codebook is None:
            decoded = codecs.decode(codes, scales, self.dtype, self.config.dim, out=out)
            if into is None:
                return decoded
            into[...] = decoded
            return np.asarray(into)
        key = np.dtype(out).name
        if key not in self._tables:  # built once per reader and segment
            self._tables[key] = codecs.pair_table(self.codebook, out)
        return codecs.pq_decode(codes, self._tables[key], out, into)

    def decode_residual(
        self, codes: np.ndarray, out: Any, into: Any = None, *, centroids: bool = True
    ) -> np.ndarray:
        """``decode`` of this residual segment's codes; ``centroids=False``: float32 residuals
        alone (``codecs.residual_decode``)."""
        nbits = codecs.RESIDUAL_BITS[self.dtype]
        if "residual" not in self._tables:  # built once per reader and segment
            self._tables["residual"] = codecs.residual_table(self.residual_parts()[2], nbits)
        return codecs.residual_decode(
            codes,
            self._tables["residual-codebook"],
            nbits,
            out,
            table=self._tables["residual"],
            into=into,
            centroids=centroids,
        )

    def residual_parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This residual segment's codebook widened to float32 once per reader and segment,
        as ``codecs.residual_parts`` splits it: (centroids, cutoffs, weights)."""
        if self.codebook is None or not codecs.is_residual(self.dtype):
            raise InputError(f"segment {self.path.name} holds {self.dtype} codes, not residual")
        if "residual-codebook" not in self._tables:
            self._tables["residual-codebook"] = self.codebook.astype(np.float32)
        wide = self._tables["residual-codebook"]
        return codecs.residual_parts(wide, codecs.RESIDUAL_BITS[self.dtype])

    def codebook_digest(self) -> bytes:
        """A digest of this residual segment's codebook, once per reader and codebook: equal
        for the segments, and the shards, coded under one codebook
        (``latemm.retrieval.retriever.centroid_tables`` shares their query x centroid tables by
        it)."""
        if "codebook-digest" not in self._tables:
            if self.codebook is None or not codecs.is_residual(self.dtype):
                raise InputError(f"segment {self.path.name} holds {self.dtype} codes, not residual")
            stored = np.ascontiguousarray(self.codebook)
            digest = hashlib.blake2b(stored.data, digest_size=16).digest()
            self._tables["codebook-digest"] = np.frombuffer(digest, dtype=np.uint8)
        return self._tables["codebook-digest"].tobytes()

    def decoded_magnitude(self) -> float:
        """At least the largest ``|value|`` of this residual segment's centroids plus the
        largest of its bucket weights: it bounds every centroid, every residual and every
        decoded float32 vector's values (their sum rounds up by half an ulp at most)."""
        if "magnitude" not in self._tables:  # once per reader and segment
            centroids, _, weights = self.residual_parts()
            top = float(np.abs(centroids).max()) + float(np.abs(weights).max())
            self._tables["magnitude"] = np.array(top * (1.0 + 2.0**-22))
        return float(self._tables["magnitude"])

    @property
    def num_docs(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def live(self) -> np.ndarray:
        return ~self.deleted

    @property
    def schema(self) -> pa.Schema:
        """The metadata's schema (read from the Parquet footer, no data)."""
        return self._meta.schema_arrow

    def check_faiss_header(self) -> None:
        """``check_faiss_header`` on the pinned ``fde.faiss`` (nothing for a coded segment)."""
        if self._faiss_file is None:
            return
        entry = self.entry.file("fde.faiss")
        assert entry is not None  # the manifest validation requires it
        check_faiss_header(
            self.path / "fde.faiss",
            self._faiss_file.read_at(min(64, self._faiss_file.size()), 0),
            file_size=self._faiss_file.size(),
            expected_size=entry.size,
            config=self.config,
            num_docs=self.num_docs,
        )

    def faiss_index(self) -> Any:
        if self._faiss_file is None:
            raise InputError(
                f"segment {self.path} has no faiss index of its own: its FDEs are codes under "
                "the index's codebook, searched by Index.global_first_stage()"
            )
        if self._faiss is None:
            import faiss

            path = self.path / "fde.faiss"
            self.check_faiss_header()
            data = self._faiss_file.read_at(self._faiss_file.size(), 0)
            try:
                index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
            except (RuntimeError, MemoryError, ValueError) as exc:
                raise IndexCorruptError(f"{path}: faiss cannot read it ({exc})") from exc
            if index.ntotal != self.num_docs or index.d != self.config.faiss_dimension:
                raise IndexCorruptError(f"{path}: faiss read an index of another shape")
            self._faiss = index
        return self._faiss

    def metadata(self, columns: list[str] | None = None) -> pa.Table:
        try:
            return self._meta.read(columns=columns, use_threads=False)
        except (OSError, pa.ArrowException) as exc:
            raise IndexCorruptError(f"cannot read {self.path / 'meta.parquet'}: {exc}") from exc


def _array(path: Path, *, mmap: bool, dtype: np.dtype, ndim: int) -> np.ndarray:
    try:
        array = load_npy(path, mmap=mmap)
    except (OSError, ValueError, EOFError) as exc:
        pickled = "pickle" in str(exc) or "Python objects" in str(exc)
        why = "it needs pickle, which is never loaded" if pickled else str(exc)
        raise IndexCorruptError(f"{path}: not a readable .npy file ({why})") from exc
    if array.dtype != dtype or array.ndim != ndim:
        raise IndexCorruptError(
            f"{path}: {array.ndim}-D {array.dtype} array, expected {ndim}-D {dtype}"
        )
    return array


def _check_arrays(
    path: Path, entry: SegmentEntry, config: IndexConfig, arrays: dict[str, np.ndarray]
) -> None:
    offsets, vectors = arrays["offsets"], arrays["vectors"]
    kind = entry.storage_dtype(config.dtype)
    _, width = codecs.code_layout(kind, config.dim)
    problems = []
    if offsets.size != entry.num_docs + 1:
        problems.append(f"offsets.npy has {offsets.size} entries for {entry.num_docs} documents")
    elif offsets[0] != 0 or (np.diff(offsets) < 1).any() or offsets[-1] != vectors.shape[0]:
        problems.append(
            "offsets.npy is not increasing from 0 to the number of vectors "
            f"({vectors.shape[0]}); every document has at least one vector"
        )
    if vectors.shape != (entry.num_vectors, width):
        problems.append(
            f"vectors.npy has shape {vectors.shape}, expected ({entry.num_vectors}, {width}) "
            f"for {kind} vectors of dimension {config.dim} (config.dim)"
        )
    if "codebook" in arrays:
        problems += codebook_problems(arrays["codebook"], kind, config.dim)
        if entry.codec is not None and not problems:
            k = codecs.residual_centroids(arrays["codebook"], kind)
            if entry.codec["centroids"] != k:
                problems.append(
                    f"codebook.npy holds {k} centroids, the manifest records "
                    f"{entry.codec['centroids']}"
                )
    if "scales" in arrays and arrays["scales"].shape != (entry.num_vectors,):
        problems.append(f"scales.npy has shape {arrays['scales'].shape}")
    if "refine_vectors" in arrays:
        _, refine_width = codecs.code_layout(str(config.refine), config.dim)
        if arrays["refine_vectors"].shape != (entry.num_vectors, refine_width):
            problems.append(
                f"{REFINE_FILE} has shape {arrays['refine_vectors'].shape}, expected "
                f"({entry.num_vectors}, {refine_width}) for the {config.refine} refine copy"
            )
    if "refine_scales" in arrays and arrays["refine_scales"].shape != (entry.num_vectors,):
        problems.append(f"{REFINE_SCALES_FILE} has shape {arrays['refine_scales'].shape}")
    if "page_max" in arrays and arrays["page_max"].shape != (entry.num_docs,):
        problems.append(f"{PAGE_MAX_FILE} has shape {arrays['page_max'].shape}")
    if "fde_codes" in arrays:
        expected = (entry.num_docs, first_stage.code_size(config.faiss_factory))
        if arrays["fde_codes"].shape != expected:
            problems.append(
                f"{first_stage.CODES_FILE} has shape {arrays['fde_codes'].shape}, expected "
                f"{expected} for {config.faiss_factory} codes"
            )
    if arrays["deleted"].shape != (entry.num_docs,):
        problems.append(f"the deletion bitmap has shape {arrays['deleted'].shape}")
    if problems:
        raise IndexCorruptError(
            f"segment {path} is inconsistent with the manifest: " + "; ".join(problems)
        )


def codebook_problems(codebook: np.ndarray, kind: str, dim: int) -> list[str]:
    """What is wrong with ``codebook`` as the codebook of ``kind`` codes of ``dim`` dimensions
    (its shape, non-finite values); empty when it fits."""
    if codecs.is_residual(kind):
        bucket_rows = (2 << codecs.RESIDUAL_BITS[kind]) - 1
        if codebook.shape[1] != dim or not (
            1 <= codebook.shape[0] - bucket_rows <= codecs.MAX_CENTROIDS
        ):
            return [
                f"codebook.npy has shape {codebook.shape}, expected (K + {bucket_rows}, {dim}) "
                f"with 1 <= K <= {codecs.MAX_CENTROIDS} for {kind} codes of dimension {dim}"
            ]
        if not np.isfinite(codebook).all():
            return ["codebook.npy holds NaN or infinite values"]
        return []
    shape = codecs.codebook_shape(kind, dim)
    if codebook.shape != shape:
        return [
            f"codebook.npy has shape {codebook.shape}, expected {shape} for {kind} codes of "
            f"dimension {dim}"
        ]
    if not np.isfinite(codebook).all():
        return ["codebook.npy holds NaN or infinite values"]
    return []


def _load_arrays(path: Path, entry: SegmentEntry, config: IndexConfig) -> dict[str, np.ndarray]:
    kind = entry.storage_dtype(config.dtype)
    code_dtype, _ = codecs.code_layout(kind, config.dim)
    arrays = {
        "offsets": _array(path / "offsets.npy", mmap=False, dtype=np.dtype(np.int64), ndim=1),
        "vectors": _array(path / "vectors.npy", mmap=True, dtype=code_dtype, ndim=2),
    }
    if codecs.is_trained(kind) and entry.file("codebook.npy") is not None:
        arrays["codebook"] = _array(
            path / "codebook.npy",
            mmap=False,
            dtype=np.dtype(np.float16 if codecs.is_residual(kind) else np.float32),
            ndim=2 if codecs.is_residual(kind) else 3,
        )
    if kind == "int8" or codecs.is_residual(kind):
        scale_dtype = np.float16 if codecs.is_residual(kind) else np.float32
        arrays["scales"] = _array(
            path / "scales.npy", mmap=True, dtype=np.dtype(scale_dtype), ndim=1
        )
    if kind == "float16" and entry.file(PAGE_MAX_FILE) is not None:
        arrays["page_max"] = _array(
            path / PAGE_MAX_FILE, mmap=False, dtype=np.dtype(np.float16), ndim=1
        )
    if entry.file(REFINE_FILE) is not None:
        refine_dtype, _ = codecs.code_layout(str(config.refine), config.dim)
        arrays["refine_vectors"] = _array(path / REFINE_FILE, mmap=True, dtype=refine_dtype, ndim=2)
    if entry.file(REFINE_SCALES_FILE) is not None:
        arrays["refine_scales"] = _array(
            path / REFINE_SCALES_FILE, mmap=True, dtype=np.dtype(np.float32), ndim=1
        )
    if entry.coded:
        arrays["fde_codes"] = _array(
            path / first_stage.CODES_FILE, mmap=True, dtype=np.dtype(np.uint8), ndim=2
        )
    if entry.deleted:
        arrays["deleted"] = _array(
            path / entry.deleted.file, mmap=False, dtype=np.dtype(bool), ndim=1
        )
    else:
        arrays["deleted"] = np.zeros(entry.num_docs, dtype=bool)
    _check_arrays(path, entry, config, arrays)
    return arrays


def _open_meta(path: Path, num_docs: int) -> tuple[pq.ParquetFile, np.ndarray]:
    try:
        # Read on this thread (no pre-buffering, no thread pool): a threaded read left tasks of
        # arrow's pools holding the memory map for a moment after it returned, so a failed
        # step could still map a file it had deleted (test_full_disk, ~1 run in 4).
        meta = pq.ParquetFile(pa.memory_map(str(path)), pre_buffer=False)
        ids = meta.read(columns=["doc_id"], use_threads=False).column("doc_id")
    except (OSError, KeyError, pa.ArrowException) as exc:
        raise IndexCorruptError(f"cannot read {path}: {exc}") from exc
    if len(ids) != num_docs or not pa.types.is_string(ids.type) or ids.null_count:
        raise IndexCorruptError(
            f"{path}: doc_id is {len(ids)} {ids.type} values ({ids.null_count} null), expected "
            f"{num_docs} strings"
        )
    return meta, np.array(ids.to_pylist(), dtype=object)


def open_segment(
    root: Path,
    entry: SegmentEntry,
    config: IndexConfig,
    *,
    verify: str,
    index_codebook: np.ndarray | None = None,
    tables: dict[str, np.ndarray] | None = None,
) -> Segment:
    """A committed segment, checked against its manifest entry. ``index_codebook``: the
    index's residual codebook (``load_index_codebook``), the codebook of a residual segment
    without one of its own; ``tables``: its decoding tables, shared by every such segment."""
    path = root / entry.name
    if verify != "none":
        problems = check_files(path, entry.all_files(), full=verify == "full")
        if problems:
            raise IndexCorruptError(
                "index files are damaged: "
                + "; ".join(problems)
                + ". Run `latemm verify` for a full report; restore the files or rebuild the index"
            )
    arrays = _load_arrays(path, entry, config)
    shared = "codebook" not in arrays and codecs.is_residual(entry.storage_dtype(config.dtype))
    if shared:
        if index_codebook is None:
            raise IndexCorruptError(
                f"segment {path} holds residual codes without codebook.npy and the index has no "
                "codebook to decode them; restore the index's manifest or rebuild the index"
            )
        arrays["codebook"] = index_codebook
    meta, doc_ids = _open_meta(path / "meta.parquet", entry.num_docs)
    faiss_file = None
    if not entry.coded:
        try:
            faiss_file = pa.memory_map(str(path / "fde.faiss"))
        except OSError as exc:
            raise IndexCorruptError(f"cannot read {path / 'fde.faiss'}: {exc}") from exc
    return Segment(
        name=entry.name,
        path=path,
        entry=entry,
        offsets=arrays["offsets"],
        vectors=arrays["vectors"],
        scales=arrays.get("scales"),
        doc_ids=doc_ids,
        deleted=arrays["deleted"],
        config=config,
        _meta=meta,
        _faiss_file=faiss_file,
        fde_codes=arrays.get("fde_codes"),
        dtype=entry.storage_dtype(config.dtype),
        codebook=arrays.get("codebook"),
        page_max=arrays.get("page_max"),
        refine_vectors=arrays.get("refine_vectors"),
        refine_scales=arrays.get("refine_scales"),
        _tables=tables if shared and tables is not None else {},
    )


def load_index_codebook(path: Path, kind: str, dim: int, centroids: int) -> np.ndarray:
    """The index's residual codebook at ``path`` (float16, ``codecs.train_residual``'s layout),
    checked against the index's ``kind`` (a residual dtype), ``dim`` and the manifest's
    recorded ``centroids``."""
    codebook = _array(path, mmap=False, dtype=np.dtype(np.float16), ndim=2)
    problems = codebook_problems(codebook, kind, dim)
    if not problems and codecs.residual_centroids(codebook, kind) != centroids:
        problems = [
            f"it holds {codecs.residual_centroids(codebook, kind)} centroids, the manifest "
            f"records {centroids}"
        ]
    if problems:
        why = "; ".join(p.removeprefix("codebook.npy ") for p in problems)
        raise IndexCorruptError(
            f"{path} is inconsistent with the manifest: {why}. Restore it or rebuild the index"
        )
    return codebook


def check_segment(
    root: Path, entry: SegmentEntry, config: IndexConfig, index_codebook: np.ndarray | None = None
) -> list[str]:
    """Every problem ``latemm verify`` finds in a segment: files (size, checksum), then, when
    those are intact, the arrays and the faiss header against the manifest and the config."""
    path = root / entry.name
    problems = check_files(path, entry.all_files(), full=True)
    if problems:
        return problems
    try:
        segment = open_segment(root, entry, config, verify="none", index_codebook=index_codebook)
        segment.check_faiss_header()
    except IndexCorruptError as exc:
        return [str(exc)]
    if codecs.is_residual(segment.dtype):
        problems = _residual_problems(segment)
        if problems:
            return problems
    if segment.page_max is not None:
        # Its checksum only says it is the file written: the rescoring's bounds trust its values.
        truth = codecs.page_magnitudes(segment.vectors, segment.offsets)
        if not np.array_equal(segment.page_max.view(np.uint16), truth.view(np.uint16)):
            return [
                f"{path / PAGE_MAX_FILE} does not hold the largest magnitude of each document's "
                "vectors; rebuild the index (or remove the file and its manifest entry)"
            ]
    return []


def _residual_problems(segment: Segment) -> list[str]:
    """``verify``'s checks of a residual segment's values (its checksums only say the files are
    those written): every centroid id names a centroid, every recorded error is a finite
    non-negative number or infinite (the score bounds trust them)."""
    assert segment.codebook is not None and segment.scales is not None  # loaded for residual
    nbits = codecs.RESIDUAL_BITS[segment.dtype]
    centroids, _, _ = codecs.residual_parts(segment.codebook, nbits)
    problems = []
    for a in range(0, segment.vectors.shape[0], 1 << 20):
        ids = codecs.centroid_ids(segment.vectors[a : a + (1 << 20)])
        if ids.size and int(ids.max()) >= centroids.shape[0]:
            row = a + int(np.argmax(ids >= centroids.shape[0]))
            problems.append(
                f"{segment.path / 'vectors.npy'}: row {row} names centroid {int(ids[row - a])} "
                f"of {centroids.shape[0]}; rebuild the index"
            )
            break
    errors = np.asarray(segment.scales)
    if np.isnan(errors).any() or (errors < 0).any():
        problems.append(
            f"{segment.path / 'scales.npy'}: the recorded reconstruction errors hold NaN or "
            "negative values; rebuild the index"
        )
    return problems
