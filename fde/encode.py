"""Batch MUVERA fixed-dimensional encodings of multi-vector sets.

``encode_documents`` and ``encode_queries`` turn many multi-vector sets at once into one vector
each, with a few large matrix products and scatter-adds per chunk of documents (no Python loop
per document or repetition). The math runs in torch so the same code runs on a GPU when a device
is given; on the CPU, scipy's counting sort groups points by cell and torch's embedding bag sums
them, and chunks run on several threads. Imports numpy, scipy and torch only; no I/O.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import scipy.sparse
import torch

from fde.config import FDEConfig
from fde.errors import FDEInputError
from fde.matrices import FDEMatrices, fde_matrices

# Float elements of intermediate state per chunk (about 32 MB in float32; larger chunks were
# no faster on ColPali pages).
_CHUNK_ELEMENTS = 1 << 23
# Token/partition pairs examined at once when filling empty partitions.
_FILL_PAIRS = 1 << 22
# Largest k whose sign code -> partition map is a lookup table, and whose (2**k, 2**k) table of
# code-to-partition Hamming distances fills empty partitions.
_TABLE_MAX_BITS = 20
_FILL_TABLE_MAX_BITS = 6
_NO_POINT = torch.iinfo(torch.int64).max


def _item_error(kind: str, item: int, reason: str) -> FDEInputError:
    """The error for one set: ``"{kind} {item} {reason}"``, with ``item`` and ``reason`` as data."""
    return FDEInputError(f"{kind} {item} {reason}", item=item, reason=reason)


def _as_float_array(value: Any, what: str, item: int | None = None) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            reason = f"has dtype {value.dtype}; expected a float tensor"
            raise FDEInputError(f"{what} {reason}", item=item, reason=reason)
        return value.detach().to(device="cpu", dtype=torch.float32).numpy()
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.floating):
        reason = (
            f"has dtype {array.dtype}; expected float16, float32 or float64 "
            "(cast with .astype(np.float32))"
        )
        raise FDEInputError(f"{what} {reason}", item=item, reason=reason)
    return array


# Over 60 lines on purpose: a chain of input checks, each raising its own error naming the document.
def as_flat(
    sets: Any,
    dimension: int,
    *,
    offsets: Any = None,
    kind: str = "document",
    keep_float16: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate multi-vector sets and return them as a flat array plus offsets.

    Parameters
    ----------
    sets
        A sequence of float arrays of shape (T_i, d), or one (N, d) float array when ``offsets``
        is given.
    dimension
        Expected vector dimension ``d``.
    offsets
        (n + 1,) integer array; set i is ``sets[offsets[i]:offsets[i+1]]``.
    kind
        ``"document"`` or ``"query"``, used in error messages.
    keep_float16
        Return a float16 ``sets`` array (with ``offsets``) as float16, not widened (the FDE
        widens it chunk by chunk; an index stores it as it is).

    Returns
    -------
    vectors : (N, d) float32 (or float16, see ``keep_float16``), C-contiguous
    offsets : (n + 1,) int64
    """
    if offsets is not None:
        flat = _as_float_array(sets, f"the flat {kind} array")
        if flat.ndim != 2:
            raise FDEInputError(
                f"with offsets, {kind} vectors must be one (N, d) array, got shape {flat.shape}"
            )
        bounds = np.asarray(offsets)
        if bounds.ndim != 1 or bounds.size < 1 or not np.issubdtype(bounds.dtype, np.integer):
            raise FDEInputError(
                f"offsets must be a 1-D integer array of n+1 entries, got {bounds!r}"
            )
        bounds = bounds.astype(np.int64)
        if bounds[0] != 0 or bounds[-1] != flat.shape[0]:
            raise FDEInputError(
                f"offsets must start at 0 and end at the number of vectors ({flat.shape[0]}), "
                f"got {bounds[0]} and {bounds[-1]}"
            )
        lengths = np.diff(bounds)
        if (lengths < 0).any():
            bad = int(np.flatnonzero(lengths < 0)[0])
            raise FDEInputError(
                f"offsets decrease at {kind} {bad}; they must be non-decreasing", item=bad
            )
    else:
        if isinstance(sets, np.ndarray) and sets.ndim == 2:
            raise FDEInputError(
                f"got one (N, d) array without offsets; pass offsets=, or a list of (T_i, d) "
                f"arrays, one per {kind}"
            )
        arrays = []
        for i, item in enumerate(sets):
            array = _as_float_array(item, f"{kind} {i}", i)
            if array.ndim != 2:
                raise _item_error(
                    kind,
                    i,
                    f"has shape {array.shape}; expected (num_vectors, {dimension}) "
                    "(a single vector is a set of one: reshape it to (1, d))",
                )
            arrays.append(array)
        lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
        bounds = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum(lengths, out=bounds[1:])
        for i, array in enumerate(arrays):
            if array.shape[1] != dimension:
                raise _item_error(
                    kind,
                    i,
                    f"has vectors of dimension {array.shape[1]}; the FDEConfig "
                    f"expects dimension={dimension}",
                )
        flat = (
            np.concatenate(arrays, axis=0, dtype=np.float32)
            if arrays
            else np.zeros((0, dimension), np.float32)
        )
    if flat.shape[1] != dimension:
        raise FDEInputError(
            f"{kind} vectors have dimension {flat.shape[1]}; the FDEConfig expects "
            f"dimension={dimension}"
        )
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise _item_error(
            kind,
            int(empty[0]),
            f"has no vectors ({empty.size} empty {kind}s in all); "
            f"every {kind} needs at least one vector",
        )
    half = keep_float16 and flat.dtype == np.float16
    flat = np.ascontiguousarray(flat, dtype=np.float16 if half else np.float32)
    finite = np.ones(flat.shape[0], dtype=bool)
    if not all_finite(flat):  # one cheap pass, and the row scan only then
        finite = np.isfinite(flat).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        bad = int(np.searchsorted(bounds, row, side="right") - 1)
        raise _item_error(
            kind,
            bad,
            f"contains NaN or inf (vector {row - int(bounds[bad])}); check the encoder's output",
        )
    return flat, bounds


def all_finite(flat: np.ndarray) -> bool:
    """Whether a float32 or float16 array holds no NaN or inf, in one pass or two without a
    temporary array: any NaN or inf makes the float32 sum non-finite; float16 values are
    non-finite exactly when their bits, read as int16, reach 0x7C00 (positive) or, read as
    uint16, reach 0xFC00 (negative)."""
    if flat.size == 0:
        return True
    if flat.dtype == np.float16:
        return bool(flat.view(np.int16).max() < 0x7C00 and flat.view(np.uint16).max() < 0xFC00)
    return bool(np.isfinite(flat.sum(dtype=np.float32)))


def encode_documents(
    docs: Any,
    config: FDEConfig,
    *,
    offsets: Any = None,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Document FDEs: vectors are averaged per partition (empty ones filled if configured).

    Parameters
    ----------
    docs
        Sequence of (T_i, d) float arrays, or an (N, d) float array with ``offsets``.
    config
        The encoding parameters; queries must use the same config.
    offsets
        (n + 1,) int64 boundaries into a flat ``docs`` array.
    device
        torch device to compute on (``"cuda"`` for a GPU); the CPU by default.

    Returns
    -------
    (n, config.output_dimension) float32 array.
    """
    return _encode(docs, config, offsets=offsets, device=device, is_document=True)


def encode_queries(
    queries: Any,
    config: FDEConfig,
    *,
    offsets: Any = None,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Query FDEs: vectors are summed per partition. Same arguments as ``encode_documents``."""
    return _encode(queries, config, offsets=offsets, device=device, is_document=False)


def _encode(
    sets: Any,
    config: FDEConfig,
    *,
    offsets: Any,
    device: str | torch.device | None,
    is_document: bool,
) -> np.ndarray:
    if not isinstance(config, FDEConfig):
        raise TypeError(f"config must be an FDEConfig, got {type(config).__name__}")
    kind = "document" if is_document else "query"
    flat, bounds = as_flat(sets, config.dimension, offsets=offsets, kind=kind, keep_float16=True)
    return encode_flat(flat, bounds, config, device=device, is_document=is_document)


def encode_flat(
    flat: np.ndarray,
    offsets: np.ndarray,
    config: FDEConfig,
    *,
    device: str | torch.device | None = None,
    is_document: bool = True,
    threads: int | None = None,
) -> np.ndarray:
    """FDEs of sets that ``as_flat`` has validated (an index's stored vectors), unchecked.

    Parameters
    ----------
    flat, offsets
        (N, d) float32 or float16 C-contiguous vectors and (n + 1,) int64 offsets, as
        ``as_flat`` returns them (float16 is widened chunk by chunk).
    config
        The encoding parameters.
    device
        torch device to compute on; the CPU by default.
    is_document
        Average each partition (and fill empty ones, if configured) rather than sum it.
    threads
        CPU threads encoding chunks at once (the math releases the GIL), each running torch on
        one thread. Default: one per core this process may use (``cpu_threads(1)``); a single
        chunk runs on the calling thread with torch's own threads. Chunks side by side beat
        one chunk at a time on all threads: most of a chunk's steps are small or serial, and
        the Vaswani build took 15-16 s against 20-21 s with torch's threads under one chunk.

    Returns
    -------
    (n, config.output_dimension) float32 array.
    """
    n = offsets.size - 1
    out = np.empty((n, config.output_dimension), dtype=np.float32)
    if n == 0:
        return out
    dev = torch.device(device) if device is not None else torch.device("cpu")
    kernel = _kernel(config, dev)

    def encode(span: tuple[int, int]) -> None:
        if workers > 1:
            torch.set_num_threads(1)  # this pool thread's setting only (OpenMP's is per thread)
        start, stop = span
        chunk = flat[offsets[start] : offsets[stop]]
        chunk_offsets = offsets[start : stop + 1] - offsets[start]
        out[start:stop] = kernel(chunk, chunk_offsets, is_document).cpu().numpy()

    spans = _chunks(offsets, config)
    workers = min(len(spans), threads or (cpu_threads(1) if dev.type == "cpu" else 1))
    if workers <= 1:
        for span in spans:
            encode(span)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(encode, spans))  # re-raises the first error
    return out


def _chunks(offsets: np.ndarray, config: FDEConfig) -> list[tuple[int, int]]:
    """(start, stop) set ranges of about ``_CHUNK_ELEMENTS`` elements of intermediate state
    each: whole sets, at least one per chunk."""
    per_token = config.num_repetitions * (
        config.block_dimension + config.num_simhash_projections + 4
    )
    budget = max(1, _CHUNK_ELEMENTS // per_token)
    n = offsets.size - 1
    spans, start = [], 0
    while start < n:
        stop = int(np.searchsorted(offsets, offsets[start] + budget, side="right") - 1)
        stop = min(max(stop, start + 1), n)
        spans.append((start, stop))
        start = stop
    return spans


def cpu_threads(per_call: int | None = None) -> int:
    """Threads for work split by hand on the CPU (FDE chunks, an index's passes over a batch,
    faiss calls): the cores this process may use, divided by the threads each call runs on
    (``per_call``, torch's by default; more would only contend for the same cores)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    threads = torch.get_num_threads() if per_call is None else per_call
    return max(1, cores // max(1, threads))


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch products on this thread alone (its OpenMP setting is per thread), restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@functools.lru_cache(maxsize=8)
def _kernel(config: FDEConfig, device: torch.device) -> _Kernel:
    """The kernel of a config on a device, built once: a query's FDE costs less than building
    the kernel's tables does."""
    return _Kernel(config, fde_matrices(config), device)


# Tokens per cell above which a projected FDE sums each cell's raw vectors, then projects the
# sums; below it every token is projected and the projections summed. The gather-add of raw
# d-dimensional rows costs about as much as projecting them to 16 dimensions, so the sums pay
# only when cells hold several tokens each (R=20, k=5, 384 -> 16, 3,000 Vaswani abstracts
# and those joined 2-6 at a time, loaded 2-core machine, project/sum seconds: 48 tokens
# 3.6-6.0/6.4-9.1, 81: 1.8/2.1-2.3, 121: 1.25/1.45-1.6, 242: 0.93-0.99/0.86).
_SUM_FIRST_TOKENS_PER_CELL = 6


class _Kernel:
    """The FDE math for one config on one device, over a chunk of whole sets.

    The AMS projection is linear, so a cell (set, repetition, partition) can sum its raw vectors
    first and project the sum once: one gather-sum of the (N, d) chunk into its cells and one
    small batched product, instead of projecting every token with a dense (d, R * p) product.
    That is chosen when a chunk has more tokens than cells (documents); short sets project
    tokens first. Cells are numbered (set * R + r) * B + partition; everything a cell needs
    (count, sum, lowest point) is indexed that way.
    """

    def __init__(self, config: FDEConfig, matrices: FDEMatrices, device: torch.device) -> None:
        self.config = config
        self.device = device

        def put(array: np.ndarray | None) -> torch.Tensor | None:
            return None if array is None else torch.from_numpy(np.array(array)).to(device)

        R, k, p = config.num_repetitions, config.num_simhash_projections, config.block_dimension
        self.simhash = put(matrices.simhash)  # (d, R*k)
        self.ams = put(matrices.ams)  # (d, R*p)
        # (R, d, p): repetition r's projection, for the batched product of cell sums.
        self.ams_blocks = (
            None
            if self.ams is None
            else self.ams.view(config.dimension, R, p).permute(1, 0, 2).contiguous()
        )
        self.final_buckets = put(matrices.final_buckets)  # (raw,)
        self.final_signs = put(matrices.final_signs)  # (raw,)
        # Block-diagonal (R*k, R) weights turning sign bits into each repetition's integer code,
        # projection 0 in the top bit (exact in float32 for k <= 24).
        self.code_weights = None
        if k > 0:
            weights = torch.zeros((R * k, R))
            powers = 2.0 ** torch.arange(k - 1, -1, -1, dtype=torch.float64)
            for r in range(R):
                weights[r * k : (r + 1) * k, r] = powers.float()
            self.code_weights = weights.to(device)
        partitions = torch.arange(config.num_partitions, device=device)
        self.partition_gray = partitions ^ (partitions >> 1)  # (B,)
        # Sign code -> partition (the Gray-code inverse) as a table when it is small.
        self.partition_of_code = (
            _gray_to_binary(partitions) if k <= _TABLE_MAX_BITS else None
        )  # (B,)
        # (B, B) Hamming distance between the sign codes of partitions a and b (the codes of a
        # partition's points are its Gray code), for the table fill.
        self.distance = (
            _popcount(self.partition_gray.unsqueeze(1) ^ self.partition_gray.unsqueeze(0))
            if k <= _FILL_TABLE_MAX_BITS
            else None
        )

    def __call__(self, flat: np.ndarray, offsets: np.ndarray, is_document: bool) -> torch.Tensor:
        """(N, d) float32 or float16 vectors of n sets and their (n + 1,) offsets -> (n, D)."""
        cfg = self.config
        R, B = cfg.num_repetitions, cfg.num_partitions
        dev = self.device
        x = torch.from_numpy(flat).to(dev, torch.float32)  # (N, d), float16 widened here
        bounds = torch.from_numpy(offsets).to(dev)  # (n+1,)
        n, N = offsets.size - 1, flat.shape[0]
        lengths = bounds[1:] - bounds[:-1]  # (n,)
        doc_of_token = torch.repeat_interleave(torch.arange(n, device=dev), lengths)  # (N,)
        # Cell of each token's repetitions, (N, R); int32 where it fits (scipy's index type).
        small = n * R * B < 2**31 and dev.type == "cpu"
        index_type = torch.int32 if small else torch.int64
        base = (doc_of_token.to(index_type).unsqueeze(1) * R + torch.arange(R, device=dev)) * B
        cells = base + self._partitions(x)  # (N, R)
        fill = is_document and cfg.fill_empty_partitions and cfg.num_simhash_projections > 0
        projected = self.ams_blocks is not None
        if N > n * B * (_SUM_FIRST_TOKENS_PER_CELL if projected else 1):
            # Many tokens per cell: sum raw vectors per cell, then project.
            sums, counts, first = self._cell_sums(x, cells, n, fill)  # (n*R*B, d), (n*R*B,)
            if fill:
                assert first is not None
                empty = torch.nonzero(counts == 0).squeeze(1)
                sums[empty] = x[self._nearest(empty, first, N)]
            out = self._project_cells(sums, n)  # (n*R*B, p)
        else:
            tokens = self._projected(x)  # (N, R, p)
            out = torch.zeros((n * R * B, tokens.shape[2]), dtype=torch.float32, device=dev)
            out.index_add_(0, cells.reshape(-1).long(), tokens.reshape(N * R, -1))
            counts = torch.bincount(cells.reshape(-1), minlength=n * R * B)  # (n*R*B,)
            if fill:
                first = self._first_of_cell(cells, n)
                empty = torch.nonzero(counts == 0).squeeze(1)
                nearest = self._nearest(empty, first, N)
                # The nearest point's projection in the empty cell's repetition, gathered from
                # the projections at hand (p floats a cell, not the d of its raw vector: the
                # raw gather wrote ~300 KB of fresh memory per short page).
                out[empty] = tokens[nearest, (empty // B) % R]
        if is_document:  # averages; a filled cell holds one point
            out /= counts.clamp(min=1).unsqueeze(1).to(out.dtype)

        raw = out.view(n, R * B * cfg.block_dimension)
        if self.final_buckets is None:
            return raw
        assert self.final_signs is not None
        final = torch.zeros((n, cfg.output_dimension), dtype=torch.float32, device=dev)
        final.index_add_(1, self.final_buckets, raw * self.final_signs)
        return final

    def _partitions(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) vectors -> (N, R) partition of each point in each repetition: the Gray-code
        inverse of its SimHash sign code (projection 0 in the top bit)."""
        R, k = self.config.num_repetitions, self.config.num_simhash_projections
        if k == 0:
            return torch.zeros((x.shape[0], R), dtype=torch.uint8, device=self.device)
        assert self.simhash is not None and self.code_weights is not None
        projections = x @ self.simhash  # (N, R*k)
        if self.device.type == "cpu" and k <= 8:
            # Up to 8 bits, in uint8: partition bit j is the XOR of sign bits 0..j.
            signs = (projections.numpy() > 0).view(np.uint8).reshape(-1, R, k)  # (N, R, k)
            prefix = signs[:, :, 0].copy()  # (N, R)
            partition = prefix << (k - 1)
            for j in range(1, k):
                prefix ^= signs[:, :, j]
                partition |= prefix << (k - 1 - j)
            return torch.from_numpy(partition)
        codes = _sign_codes(projections > 0, self.code_weights, k, R)  # (N, R)
        if self.partition_of_code is not None:
            return self.partition_of_code[codes]
        return _gray_to_binary(codes)

    def _cell_sums(
        self, x: torch.Tensor, cells: torch.Tensor, n: int, first: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Per cell: the sum of its raw vectors (n*R*B, d), its count (n*R*B,) and, when
        ``first``, its lowest point index in the chunk (int64 max where empty)."""
        R, B = self.config.num_repetitions, self.config.num_partitions
        N, d = x.shape
        if self.device.type != "cpu":
            sums = torch.zeros((n * R * B, d), dtype=torch.float32, device=self.device)
            for r in range(R):
                sums.index_add_(0, cells[:, r], x)
            counts = torch.bincount(cells.reshape(-1), minlength=n * R * B)
            return sums, counts, self._first_of_cell(cells, n) if first else None
        # Group the (token, repetition) pairs by cell with scipy's counting sort (a transpose of
        # a 0/1 matrix with one entry per pair: stable, so each cell lists its points in order),
        # then sum each cell's rows with an embedding bag (vectorised gather-add, in point order
        # as the reference adds them).
        pairs = scipy.sparse.csc_matrix(
            (np.ones(N * R, np.float32), cells.reshape(-1).numpy(), np.arange(0, N * R + 1, R)),
            shape=(n * R * B, N),
        ).tocsr()
        starts = torch.from_numpy(pairs.indptr)  # (n*R*B + 1,)
        points = torch.from_numpy(pairs.indices)  # (N*R,) point of each pair, by cell
        sums = torch.nn.functional.embedding_bag(
            points, x, starts.to(points.dtype), mode="sum", include_last_offset=True
        )  # (n*R*B, d)
        counts = (starts[1:] - starts[:-1]).long()
        if not first:
            return sums, counts, None
        lowest = points[starts[:-1].clamp(max=N * R - 1)].long()  # (n*R*B,)
        return sums, counts, torch.where(counts > 0, lowest, _NO_POINT)

    def _first_of_cell(self, cells: torch.Tensor, n: int) -> torch.Tensor:
        """(n*R*B,) lowest point index of each cell, int64 max where empty."""
        R, B = self.config.num_repetitions, self.config.num_partitions
        N = cells.shape[0]
        points = torch.arange(N, device=self.device).unsqueeze(1).expand(N, R)  # (N, R)
        first = torch.full((n * R * B,), _NO_POINT, dtype=torch.int64, device=self.device)
        first.scatter_reduce_(0, cells.reshape(-1).long(), points.reshape(-1), reduce="amin")
        return first

    def _project_cells(self, sums: torch.Tensor, n: int) -> torch.Tensor:
        """(n*R*B, d) cell sums -> (n*R*B, p), each by its repetition's projection."""
        if self.ams_blocks is None:
            return sums
        R, B, d = self.config.num_repetitions, self.config.num_partitions, sums.shape[1]
        projected = torch.matmul(sums.view(n, R, B, d), self.ams_blocks)  # (n, R, B, p)
        return projected.view(n * R * B, -1)

    def _projected(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) vectors -> (N, R, p): each token by every repetition's projection (a view of
        ``x`` repeated when there is no projection)."""
        N, R, p = x.shape[0], self.config.num_repetitions, self.config.block_dimension
        if self.ams is not None:
            return (x @ self.ams).view(N, R, p)
        return x.unsqueeze(1).expand(N, R, p)

    def _nearest(self, empty: torch.Tensor, first: torch.Tensor, N: int) -> torch.Tensor:
        """(E,) the point each empty cell takes: the one whose sign code is Hamming-nearest to
        the partition's Gray code, lowest point index on ties (the reference's strict ``<``
        scan). ``first`` is each cell's lowest point (int64 max where empty); a point's code
        is its partition's Gray code, so a (set, repetition)'s candidates are the first points
        of its non-empty cells, compared by the key distance * N + point."""
        if empty.numel() == 0:
            return empty
        if self.distance is not None:
            return self._nearest_by_table(empty, first, N)
        return self._nearest_by_pairs(empty, first, N)

    def _nearest_by_table(self, empty: torch.Tensor, first: torch.Tensor, N: int) -> torch.Tensor:
        """``_nearest`` with few partitions: each empty cell compares all B cells of its (set,
        repetition) at once through the (B, B) distance table."""
        assert self.distance is not None
        B, k = self.config.num_partitions, self.config.num_simhash_projections
        # Empty cells rank after every present one (distances are at most k).
        first = torch.where(first == _NO_POINT, (k + 1) * N, first).view(-1, B)  # (n*R, B)
        nearest = torch.empty_like(empty)
        step = max(1, _FILL_PAIRS // B)
        for start in range(0, empty.numel(), step):
            cells = empty[start : start + step]
            keys = self.distance[cells % B] * N + first[cells // B]  # (e, B)
            nearest[start : start + step] = keys.min(dim=1).values % N
        return nearest

    def _nearest_by_pairs(self, empty: torch.Tensor, first: torch.Tensor, N: int) -> torch.Tensor:
        """``_nearest`` for many partitions, where a (B, B) table does not fit: each empty cell
        examines the non-empty cells of its (set, repetition), at most min(T, 2**k), in slices
        of ``_FILL_PAIRS`` (cell, candidate) pairs."""
        B = self.config.num_partitions
        dev = self.device
        present = torch.nonzero(first != _NO_POINT).squeeze(1)  # sorted by (set, rep, partition)
        group_count = torch.bincount(present // B, minlength=first.shape[0] // B)  # (n*R,)
        group_start = torch.cumsum(group_count, 0) - group_count

        nearest = torch.empty_like(empty)
        cell_count = group_count[empty // B]
        ends = torch.cumsum(cell_count, 0)
        start, total = 0, empty.numel()
        while start < total:  # slices of at most _FILL_PAIRS (cell, candidate) pairs
            base = int(ends[start - 1]) if start else 0
            stop = int(torch.searchsorted(ends, base + _FILL_PAIRS, right=True))
            stop = min(max(stop, start + 1), total)
            cells = empty[start:stop]
            per_cell = cell_count[start:stop]
            pair_cell = torch.repeat_interleave(torch.arange(cells.numel(), device=dev), per_cell)
            rank = (
                torch.arange(pair_cell.numel(), device=dev)
                - (torch.cumsum(per_cell, 0) - per_cell)[pair_cell]
            )
            candidate = present[group_start[cells // B][pair_cell] + rank]  # cell ids
            codes = _gray(candidate % B) ^ _gray(cells % B)[pair_cell]
            key = _popcount(codes) * N + first[candidate]
            best = torch.full((cells.numel(),), _NO_POINT, dtype=torch.int64, device=dev)
            best.scatter_reduce_(0, pair_cell, key, reduce="amin")
            nearest[start:stop] = best % N
            start = stop
        return nearest


def _sign_codes(signs: torch.Tensor, weights: torch.Tensor, k: int, R: int) -> torch.Tensor:
    """(N, R*k) bool sign bits -> (N, R) int64 codes, projection 0 in the top bit."""
    if k <= 24:
        return (signs.to(weights.dtype) @ weights).to(torch.int64)
    powers = 1 << torch.arange(k - 1, -1, -1, device=signs.device, dtype=torch.int64)
    return (signs.view(signs.shape[0], R, k).to(torch.int64) * powers).sum(dim=2)


def _gray(values: torch.Tensor) -> torch.Tensor:
    """The Gray code of non-negative integers: the sign code of a partition's points."""
    return values ^ (values >> 1)


def _gray_to_binary(codes: torch.Tensor) -> torch.Tensor:
    """Invert the Gray code: the reference appends bits as ``(i << 1) + (bit ^ (i & 1))``,
    so a point's partition is the prefix XOR of its sign bits (k <= 30 < 32 bits)."""
    out = codes.clone()
    for shift in (1, 2, 4, 8, 16):
        out ^= out >> shift
    return out


def _popcount(values: torch.Tensor) -> torch.Tensor:
    """Number of set bits of non-negative int64 values below 2**32."""
    v = values - ((values >> 1) & 0x55555555)
    v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F
    return (v * 0x01010101 & 0xFFFFFFFF) >> 24
