"""One first-stage structure per index: product-quantised FDEs, one codebook, one search.

With a fast-scan factory (``PQ<m>x4fs``, the default for multi-vector indexes) the index keeps

- one codebook, ``fde-pq-g<generation>.faiss`` at the index root: a trained, empty faiss
  ``IndexPQ`` (inner product, 4-bit sub-quantizers) listed in the manifest with its size and
  sha256. It is trained once, on the first commit that holds ``MIN_TRAIN_DOCUMENTS`` documents
  (with those committed before), and never rewritten;
- per segment, ``fde-codes.npy``: the documents' FDEs encoded with it, (n, m / 2) uint8 (640
  bytes per page for the default 10,240-dimensional FDE and m = 1,280; 320 for a residual
  index's 5,120-dimensional one and m = 640, ``index_store.config.default_fde_config``).

Segments committed before the codebook existed keep the per-segment layout (``fde.faiss``, an
exact Flat index over their FDEs); together they hold fewer than ``MIN_TRAIN_DOCUMENTS``
documents, and compaction re-encodes them.

At search time ``GlobalFirstStage`` concatenates every coded segment's codes into one faiss
``IndexPQFastScan`` (built on first use, about 2 ms per 1,000 pages): global id = the segment's
base + row, so a query scans all documents in one SIMD pass whatever the number of segments.
Deletions and ``--where`` filters are a bitmap over the global ids: few excluded documents are
skipped by over-fetching, many by searching a fast-scan index of the allowed codes only (faiss's
fast-scan search takes no ID selector).

The codebook is data: its header (fourcc, dimensions, sub-quantizer shape, centroid count, no
codes) and exact size are checked before faiss parses it.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fde.encode import cpu_threads
from index_store.errors import IndexCorruptError

CODEBOOK_PATTERN = re.compile(r"fde-pq-g\d{6,}\.faiss")
CODES_FILE = "fde-codes.npy"
FAST_SCAN = re.compile(r"PQ(?P<m>\d+)x4fs")
# Documents needed to train the codebook (16 centroids per sub-quantizer: 64 points each), and
# at most this many sampled for training (faiss would subsample beyond 256 per centroid).
MIN_TRAIN_DOCUMENTS = 1024
MAX_TRAIN_DOCUMENTS = 4096
_BITS = 4


def is_global(factory: str) -> bool:
    """Whether ``factory`` asks for the one-codebook, one-structure first stage."""
    return FAST_SCAN.fullmatch(factory) is not None


def subquantizers(factory: str) -> int:
    match = FAST_SCAN.fullmatch(factory)
    assert match is not None, factory
    return int(match["m"])


def code_size(factory: str) -> int:
    """Bytes per document of a fast-scan factory's codes."""
    return (subquantizers(factory) * _BITS + 7) // 8


def codebook_name(generation: int) -> str:
    return f"fde-pq-g{generation:06d}.faiss"


def expected_codebook_size(dimension: int) -> int:
    """Bytes of a serialized trained, empty 4-bit ``IndexPQ`` over ``dimension`` floats."""
    return 86 + 4 * dimension * (1 << _BITS)


def train_codebook(
    factory: str, fde: np.ndarray, *, seed: int = 1234, threads: int | None = None
) -> Any:
    """A trained, empty ``IndexPQ`` (inner product, m sub-quantizers of 4 bits) over ``fde``
    (n, D) float32, sampling at most ``MAX_TRAIN_DOCUMENTS`` rows (seeded).

    faiss trains each sub-quantizer on its own slice of the columns with the same seed, so
    blocks of sub-quantizers are trained on ``threads`` threads (default ``_threads()``; faiss
    releases the GIL) and their centroids put together: the same codebook, bit for bit."""
    import faiss

    if len(fde) > MAX_TRAIN_DOCUMENTS:
        rows = np.sort(np.random.default_rng(seed).choice(len(fde), MAX_TRAIN_DOCUMENTS, False))
        fde = fde[rows]
    m = subquantizers(factory)
    edges = np.linspace(0, m, min(m, threads or _threads()) + 1).astype(int) * (fde.shape[1] // m)

    def train_block(block: int) -> np.ndarray:
        # One OpenMP thread per pool thread (the setting is per thread): faiss's k-means over a
        # few thousand 8-dimensional points is all barriers, and two pool threads running two
        # OpenMP threads each on 2 cores, beside a build's other work, took 6.8 s where one
        # each took 0.85 s (the Vaswani build, issue 33).
        faiss.omp_set_num_threads(1)
        lo, hi = int(edges[block]), int(edges[block + 1])
        pq = faiss.ProductQuantizer(hi - lo, (hi - lo) * m // fde.shape[1], _BITS)
        pq.cp.seed = seed
        pq.cp.verbose = False
        pq.train(np.ascontiguousarray(fde[:, lo:hi], dtype=np.float32))
        return np.asarray(faiss.vector_to_array(pq.centroids))

    with ThreadPoolExecutor(max_workers=len(edges) - 1) as pool:
        centroids = np.concatenate(list(pool.map(train_block, range(len(edges) - 1))))
    index = faiss.IndexPQ(fde.shape[1], m, _BITS, faiss.METRIC_INNER_PRODUCT)
    faiss.copy_array_to_vector(centroids, index.pq.centroids)
    index.is_trained = True  # what IndexPQ.train sets after training its quantizer
    return index


def serialize_codebook(codebook: Any) -> bytes:
    import faiss

    return bytes(faiss.serialize_index(codebook).tobytes())


def encode_codes(codebook: Any, fde: np.ndarray, *, threads: int | None = None) -> np.ndarray:
    """(n, D) float32 FDEs -> (n, code size) uint8 codes, blocks of rows on ``threads``
    threads (default ``_threads()``)."""
    if len(fde) == 0:
        return np.zeros((0, codebook.sa_code_size()), dtype=np.uint8)
    fde = np.ascontiguousarray(fde, dtype=np.float32)
    blocks = np.array_split(fde, min(threads or _threads(), max(1, len(fde) // 256)))
    with ThreadPoolExecutor(max_workers=len(blocks)) as pool:
        return np.concatenate(list(pool.map(lambda b: np.asarray(codebook.sa_encode(b)), blocks)))


def _threads() -> int:
    """Threads for faiss work split by hand: ``cpu_threads`` for faiss's own thread count."""
    import faiss

    return cpu_threads(faiss.omp_get_max_threads())


def check_codebook_bytes(
    path: Path, data: bytes, *, expected_size: int, factory: str, dimension: int
) -> None:
    """Refuse a codebook that is not the one we wrote, before faiss parses it: fourcc, header
    (dimension, no vectors, trained, inner product), sub-quantizer shape, sizes."""

    def bad(why: str) -> IndexCorruptError:
        return IndexCorruptError(
            f"{path}: {why}; it is not the FDE codebook this index was written with. Restore "
            "the file or rebuild the index"
        )

    size = len(data)
    if size != expected_size:
        raise bad(f"{size} bytes, the manifest says {expected_size} (truncated or replaced)")
    if size != expected_codebook_size(dimension):
        raise bad(
            f"{size} bytes, a 4-bit codebook over {dimension} dimensions has "
            f"{expected_codebook_size(dimension)}"
        )
    if data[:4] != b"IxPq":
        raise bad(f"starts with {data[:4]!r}, not b'IxPq'")
    d = int(np.frombuffer(data, "<i4", 1, 4)[0])
    ntotal = int(np.frombuffer(data, "<i8", 1, 8)[0])
    trained, metric = data[32], int(np.frombuffer(data, "<i4", 1, 33)[0])
    pq_d, pq_m, nbits, floats = (int(v) for v in np.frombuffer(data, "<u8", 4, 37))
    codes = int(np.frombuffer(data, "<u8", 1, 69 + 4 * floats)[0]) if floats == d * 16 else -1
    expected = (dimension, 0, 1, 0, dimension, subquantizers(factory), _BITS, dimension * 16, 0)
    if (d, ntotal, trained, metric, pq_d, pq_m, nbits, floats, codes) != expected:
        raise bad(
            f"holds a PQ{pq_m}x{nbits} quantizer over {d} dimensions with {ntotal} vectors "
            f"(trained {trained}, metric {metric}); expected an empty trained "
            f"PQ{subquantizers(factory)}x4 over {dimension} (inner product)"
        )


def read_codebook(
    path: Path, data: bytes, *, expected_size: int, factory: str, dimension: int
) -> Any:
    """The codebook from its file's bytes, checked first (``check_codebook_bytes``)."""
    import faiss

    check_codebook_bytes(
        path, data, expected_size=expected_size, factory=factory, dimension=dimension
    )
    try:
        # deserialize_index already returns the concrete class; downcasting it again would
        # hand out a view of an object Python then frees.
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except (RuntimeError, MemoryError, ValueError) as exc:
        raise IndexCorruptError(f"{path}: faiss cannot read it ({exc})") from exc
    if not isinstance(index, faiss.IndexPQ):
        raise IndexCorruptError(f"{path}: faiss read a {type(index).__name__}, not an IndexPQ")
    return index


@dataclass
class GlobalFirstStage:
    """All coded segments' documents in one fast-scan index.

    ``codes`` (n, code size) uint8 concatenated in segment order; ``segments`` the index's
    segment number of each block, ``bases`` (len(segments) + 1,) the global id where each
    block starts."""

    codebook: Any
    codes: np.ndarray
    segments: np.ndarray  # (S,) int64
    bases: np.ndarray  # (S + 1,) int64
    _index: Any = field(default=None, repr=False)

    @classmethod
    def assemble(cls, codebook: Any, blocks: list[tuple[int, np.ndarray]]) -> GlobalFirstStage:
        """From (segment number, (n_s, code size) codes) per coded segment."""
        sizes = np.array([len(c) for _, c in blocks], dtype=np.int64)
        bases = np.zeros(len(blocks) + 1, dtype=np.int64)
        np.cumsum(sizes, out=bases[1:])
        width = codebook.sa_code_size()
        codes = np.concatenate([c for _, c in blocks]) if blocks else np.zeros((0, width), np.uint8)
        segments = np.array([s for s, _ in blocks], dtype=np.int64)
        return cls(codebook, np.ascontiguousarray(codes), segments, bases)

    @property
    def ntotal(self) -> int:
        return int(self.bases[-1])

    def _fast_scan(self, codes: np.ndarray) -> Any:
        import faiss

        pq = faiss.IndexPQ(self.codebook.d, self.codebook.pq.M, _BITS, faiss.METRIC_INNER_PRODUCT)
        pq.pq = self.codebook.pq
        pq.is_trained = True
        faiss.copy_array_to_vector(np.ascontiguousarray(codes).ravel(), pq.codes)
        pq.ntotal = len(codes)
        fast_scan: Any = faiss.IndexPQFastScan  # its stubs lack the IndexPQ constructor
        return fast_scan(pq)

    def index(self) -> Any:
        if self._index is None:
            self._index = self._fast_scan(self.codes)
        return self._index

    def search(
        self, queries: np.ndarray, k: int, masks: list[np.ndarray | None] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top ``k`` per query: (segment number, row, score), each (Q, k'); -1 / -inf pad.

        ``masks``: per block, a bool mask of searchable rows or None (all)."""
        allowed = None
        if masks is not None and any(m is not None for m in masks):
            sizes = np.diff(self.bases)
            allowed = np.concatenate(
                [
                    np.ones(int(n), bool) if m is None else m
                    for m, n in zip(masks, sizes, strict=True)
                ]
            )
        ids, scores = self._search_ids(np.ascontiguousarray(queries, np.float32), k, allowed)
        valid = ids >= 0
        block = np.clip(np.searchsorted(self.bases, ids, side="right") - 1, 0, None)
        seg = np.where(valid, self.segments[np.minimum(block, len(self.segments) - 1)], -1)
        row = np.where(valid, ids - self.bases[block], -1)
        return seg, row, np.where(valid, scores, -np.inf).astype(np.float32)

    def _search_ids(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k') global ids and scores among ``allowed`` (bool over global ids, None = all)."""
        n_queries = queries.shape[0]
        n_allowed = self.ntotal if allowed is None else int(allowed.sum())
        k = min(k, n_allowed)
        if k == 0:
            return np.full((n_queries, 0), -1, np.int64), np.zeros((n_queries, 0), np.float32)
        if allowed is None:
            scores, ids = self.index().search(queries, k)
            return ids, scores
        excluded = self.ntotal - n_allowed
        if excluded <= max(4 * k, self.ntotal // 8):
            # Over-fetch: the top k allowed are within the top k + excluded of all documents.
            scores, ids = self.index().search(queries, min(self.ntotal, k + excluded))
            keep = (ids >= 0) & allowed[np.maximum(ids, 0)]
            order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
            ids = np.where(
                np.take_along_axis(keep, order, 1), np.take_along_axis(ids, order, 1), -1
            )
            return ids, np.take_along_axis(scores, order, 1)
        # Many excluded: scan only the allowed documents' codes.
        chosen = np.flatnonzero(allowed)
        scores, local = self._fast_scan(self.codes[chosen]).search(queries, k)
        return np.where(local >= 0, chosen[np.maximum(local, 0)], -1), scores
