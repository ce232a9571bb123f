"""Storage codecs for multi-vectors.

Fixed codecs: float16, float32, int8 (per-vector scale), 1-bit signs. Trained codecs: product
quantisation with 4-bit codes, ``pq1`` (sub-vectors of 4 dimensions: 1 bit per dimension, 16
bytes per 128-d token) and ``pq2`` (sub-vectors of 2 dimensions: 2 bits per dimension). Their
codebooks (16 centroids per sub-vector, trained with faiss k-means on a sample of a segment's
vectors) are stored with the segment; a segment with too few vectors to train one is stored in
float16 instead (``storage_dtype``).

Arrays in, arrays out. ``decode`` returns float32 (or float16 on request) whatever the storage.
Trained codecs encode with faiss's ``ProductQuantizer`` (two 4-bit codes per byte, the lower
sub-vector in the low nibble) and decode with one gather from a table of byte -> two
sub-vectors (``pair_table``), which a reader builds once per segment.

Residual codecs ``res1`` / ``res2`` / ``res4`` (PLAID's centroid + n-bit residual coding, at 1, 2
or 4 bits per dimension): coarse centroids trained by k-means (``kmeans``, faiss's algorithm)
on a sample of a segment's vectors (``num_centroids``: 2^12 to 2^18 by the number of vectors,
capped by the sample), and each
vector's residual to its nearest centroid coded per dimension in ``2^n`` buckets: cutoffs and
weights start at quantiles of the sample's residuals in that dimension (PLAID's) and are refined
by Lloyd-Max steps on the sample (``bucket_levels``: a weight is its bucket's mean, a cutoff lies
midway between two weights), which cut res4's squared error 3x on Vaswani's MiniLM tokens
(0.0158 -> 0.0053, codec-only recall@10 0.956 -> 0.982). Each segment's manifest entry records
how its codebook was trained (``residual_training``). A code row is the centroid
id (3 bytes, little-endian) then the bucket indices packed ``8 / n`` per byte, the first in the
lowest bits. Decoded: the centroid plus the bucket weights. The segment's ``codebook.npy`` holds
the centroids, then the cutoffs, then the weights, in float16 (``residual_parts``; residuals are
taken from the rounded centroids, so rounding them costs no accuracy); its ``scales.npy`` holds
each vector's reconstruction error ``||x - decode(encode(x))||_2`` (float16, rounded up), so a
MaxSim over decoded vectors is within ``sum_i ||q_i|| * max error`` of the exact one
(``residual_score_bound``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import torch

from fde.encode import cpu_threads, one_torch_thread
from index_store.errors import IndexCorruptError, InputError

DTYPES = ("float16", "float32", "int8", "binary", "pq1", "pq2", "res1", "res2", "res4")
# Rows per block when int8 codes are scaled: 16,384 x 128 values stay in the cache.
_SCALE_BLOCK_ROWS = 16384
# Residual codes decoded per block: a whole segment at once built a (N, d / per) int64 index
# of 8x the codes' bytes in fresh memory. 548,453 Vaswani tokens: 1.5-2.2 s at once in a fresh
# process against 0.75 s in blocks, the same values bit for bit; 6.8 s at once inside a res4
# build, whose profile went from 58.7 to 51.2 s.
_DECODE_BLOCK_ROWS = 32768
# Trained codecs: dimensions per sub-vector (4-bit codes, 16 centroids per sub-vector).
PQ_SUBDIM = {"pq1": 4, "pq2": 2}
KSUB = 16
# Fewer vectors than this and a segment is stored in float16 (faiss k-means wants >= 39 points
# per centroid); training uses at most TRAIN_SAMPLE of them, picked with a fixed seed.
MIN_TRAIN = 64 * KSUB
TRAIN_SAMPLE = 32 * 1024
# Residual codecs: bits per dimension; coarse centroids per segment (PLAID's 2^floor(log2(16
# sqrt(N))), within these limits, and at most one per RESIDUAL_POINTS_PER_CENTROID sampled
# vectors); k-means on at most RESIDUAL_TRAIN_SAMPLE vectors, RESIDUAL_NITER iterations (PLAID: 4).
RESIDUAL_BITS = {"res1": 1, "res2": 2, "res4": 4}
MIN_CENTROIDS, MAX_CENTROIDS = 1 << 12, 1 << 18
RESIDUAL_POINTS_PER_CENTROID = 16
RESIDUAL_TRAIN_SAMPLE = 1 << 17
RESIDUAL_NITER = 4
# Lloyd-Max refinements of each dimension's buckets after PLAID's quantile start (``bucket_levels``).
LLOYD_ITERATIONS = 20
CENTROID_BYTES = 3  # centroid ids of up to 2^24 centroids, little-endian, before the residual


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise InputError(f"storage dtype must be one of {DTYPES}, got {dtype!r}")
    return dtype


def is_trained(dtype: str) -> bool:
    """Whether ``dtype`` needs a codebook trained per segment."""
    return dtype in PQ_SUBDIM or dtype in RESIDUAL_BITS


def is_residual(dtype: str) -> bool:
    """Whether ``dtype`` is a centroid + n-bit residual codec."""
    return dtype in RESIDUAL_BITS


def check_dim(dtype: str, dim: int) -> None:
    """Refuse a dimension a trained codec cannot split into pairs of sub-vectors (or, for a
    residual codec, whose bucket indices do not fill whole bytes)."""
    if is_residual(dtype):
        per_byte = 8 // RESIDUAL_BITS[dtype]
        if dim % per_byte:
            raise InputError(
                f"storage dtype {dtype!r} packs {per_byte} dimensions per byte, so dim must be a "
                f"multiple of {per_byte}; got dim={dim}. Use float16 or int8 for this dimension"
            )
        return
    if is_trained(dtype) and dim % (2 * PQ_SUBDIM[dtype]):
        raise InputError(
            f"storage dtype {dtype!r} splits vectors into sub-vectors of {PQ_SUBDIM[dtype]} "
            f"dimensions, two per byte, so dim must be a multiple of {2 * PQ_SUBDIM[dtype]}; "
            f"got dim={dim}. Use float16 or int8 for this dimension"
        )


def storage_dtype(dtype: str, num_vectors: int) -> str:
    """What a segment of ``num_vectors`` vectors stores: ``dtype``, or float16 when a trained
    codec has too few vectors to train its codebook."""
    return "float16" if is_trained(dtype) and num_vectors < MIN_TRAIN else dtype


def codebook_shape(dtype: str, dim: int) -> tuple[int, int, int]:
    """(sub-vectors, 16, dimensions per sub-vector) of a trained codec's codebook."""
    sub = PQ_SUBDIM[dtype]
    return dim // sub, KSUB, sub


def train(vectors: np.ndarray, dtype: str, *, seed: int = 0) -> np.ndarray:
    """A codebook for ``vectors`` (N, d) float32 (N >= MIN_TRAIN): (M, 16, d / M) float32."""
    import faiss

    n, dim = vectors.shape
    if n < MIN_TRAIN:
        raise InputError(f"{dtype} needs at least {MIN_TRAIN} vectors to train, got {n}")
    if is_residual(dtype):
        return train_residual(vectors, RESIDUAL_BITS[dtype], seed=seed)
    if n > TRAIN_SAMPLE:
        rows = np.sort(np.random.default_rng(seed).choice(n, TRAIN_SAMPLE, replace=False))
        vectors = vectors[rows]
    shape = codebook_shape(dtype, dim)
    pq = faiss.ProductQuantizer(dim, shape[0], 4)
    pq.cp.seed = seed
    pq.train(np.ascontiguousarray(vectors, dtype=np.float32))
    return faiss.vector_to_array(pq.centroids).astype(np.float32).reshape(shape)


class TrainedCodebook(NamedTuple):
    """A residual index's codebook (``train``'s) and the number of vectors it was trained on,
    which the manifest records (``residual_training``)."""

    values: np.ndarray
    trained_on: int


def train_codebook(sample: np.ndarray, dtype: str) -> TrainedCodebook:
    """A residual codebook trained on ``sample`` (N, d), to code one index or every shard of a
    collection with (``IndexWriter.use_vectors_codebook``)."""
    return TrainedCodebook(train(np.asarray(sample, dtype=np.float32), dtype), len(sample))


def _quantizer(codebook: np.ndarray) -> Any:
    """A faiss ``ProductQuantizer`` (4-bit codes) holding ``codebook``."""
    import faiss

    m, _, sub = codebook.shape
    pq = faiss.ProductQuantizer(m * sub, m, 4)
    faiss.copy_array_to_vector(np.ascontiguousarray(codebook, np.float32).ravel(), pq.centroids)
    pq.sync_transposed_centroids()  # faiss's faster encoder for short sub-vectors
    return pq


def pair_table(codebook: np.ndarray, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """The decoding table of a codebook, (M / 2 * 256,) records of 2 * d / M values: record
    ``256 * j + byte`` holds the two sub-vectors that byte ``j`` of a code stands for."""
    m, _, sub = codebook.shape
    byte = np.arange(256)
    low, high = codebook[0::2][:, byte & 15], codebook[1::2][:, byte >> 4]  # (M / 2, 256, sub)
    table = np.ascontiguousarray(np.concatenate([low, high], axis=-1), dtype=dtype)
    return (
        table.reshape(m // 2 * 256, 2 * sub)
        .view(np.dtype((np.void, 2 * sub * table.itemsize)))
        .ravel()
    )


def pq_decode(
    codes: np.ndarray, table: np.ndarray, dtype: np.dtype | type, into: np.ndarray | None = None
) -> np.ndarray:
    """(n, M / 2) uint8 codes and their ``pair_table`` -> (n, d) vectors of ``dtype``, written
    into ``into`` ((n, d) C-contiguous of ``dtype``) when given."""
    n, width = codes.shape
    index = codes.astype(np.intp)
    index += np.arange(width, dtype=np.intp) * 256
    # One gather of whole records (memcpy of 2 sub-vectors each): faster than torch's
    # embedding or numpy's take of single floats here.
    if into is None:
        return np.take(table, index).view(dtype).reshape(n, -1)
    # mode="clip" (the indices are in range): with "raise", numpy buffers ``out``.
    np.take(table, index, out=into.view(table.dtype).reshape(n, width), mode="clip")
    return into


def encode(
    vectors: np.ndarray, dtype: str, codebook: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, d) float32 (or float16 for float16 codes) -> (codes, per-vector scales or None).

    int8: ``x ~ codes * scale`` with ``scale = max|x| / 127`` per vector.
    binary: the sign bits, packed (N, ceil(d / 8)) uint8; decoded as +-1 / sqrt(d).
    pq1 / pq2: (N, M / 2) uint8 codes against ``codebook`` (``train``).
    """
    if dtype == "float32":
        return vectors.astype(np.float32, copy=False), None
    if dtype == "float16":
        if vectors.dtype == np.float16:  # buffered as float16 already
            return np.ascontiguousarray(vectors), None
        # torch rounds to float16 as numpy does (to nearest even), several times faster.
        return torch.from_numpy(np.ascontiguousarray(vectors, np.float32)).half().numpy(), None
    if dtype == "int8":
        return _int8(vectors)
    if dtype == "binary":
        return np.packbits(vectors > 0, axis=1), None
    if is_trained(dtype):
        if codebook is None:
            raise InputError(f"{dtype} codes need the segment's codebook")
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if is_residual(dtype):
            return residual_encode(x, codebook, RESIDUAL_BITS[dtype])
        return _quantizer(codebook).compute_codes(x), None
    raise InputError(f"unknown storage dtype {dtype!r}")


def _int8(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes and scales, in float32 whatever the input (float16 input is widened first),
    in row blocks with torch: numpy's whole-array passes took 2.4 ms per 1,030 x 128 page on
    a float16 buffer (float16 arithmetic is emulated), and match these on float32 input."""
    x = torch.from_numpy(np.ascontiguousarray(vectors))
    codes = torch.empty(x.shape, dtype=torch.int8)
    scales = torch.empty(x.shape[0], dtype=torch.float32)
    for a in range(0, x.shape[0], _SCALE_BLOCK_ROWS):
        block = x[a : a + _SCALE_BLOCK_ROWS].float()
        scale = block.abs().amax(dim=1) / 127.0
        scale[scale == 0] = 1.0
        codes[a : a + _SCALE_BLOCK_ROWS] = torch.round(block / scale[:, None]).clamp_(-127, 127)
        scales[a : a + _SCALE_BLOCK_ROWS] = scale
    return codes.numpy(), scales.numpy()


def _scaled(codes: np.ndarray, scales: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """(n, d) int8 ``codes`` times their (n,) ``scales``, computed in float32 and rounded once
    to ``dtype``. Row blocks that stay in cache: 4.4x numpy's whole-array passes for the 50 M
    values of 384 pages (49 against 216 ms), with identical results."""
    rows = _SCALE_BLOCK_ROWS
    out = torch.empty(codes.shape, dtype=dtype)
    c = torch.from_numpy(np.ascontiguousarray(codes))
    s = torch.from_numpy(np.ascontiguousarray(scales, dtype=np.float32)).unsqueeze(1)
    for a in range(0, c.shape[0], rows):
        torch.mul(c[a : a + rows], s[a : a + rows], out=out[a : a + rows])
    return out.numpy()


def decode(
    codes: np.ndarray,
    scales: np.ndarray | None,
    dtype: str,
    dim: int,
    codebook: np.ndarray | None = None,
    *,
    out: np.dtype | type = np.float32,
) -> np.ndarray:
    """Codes of some vectors -> (n, d) float32, or float16 with ``out=np.float16``."""
    half = np.dtype(out) == np.float16
    if dtype == "float32":
        return np.asarray(codes, dtype=np.float16 if half else np.float32)
    if dtype == "float16":
        if half:
            return np.asarray(codes, dtype=np.float16)
        # torch widens float16 about 3x faster than numpy's astype on this hardware
        # (experiments/bench_search.py's kernel section).
        return torch.from_numpy(np.ascontiguousarray(codes)).float().numpy()
    if is_trained(dtype):
        if codebook is None:
            raise InputError(f"{dtype} codes need the segment's codebook")
        dtype_out = np.float16 if half else np.float32
        if is_residual(dtype):
            return residual_decode(codes, codebook, RESIDUAL_BITS[dtype], dtype_out)
        return pq_decode(codes, pair_table(codebook, dtype_out), dtype_out)
    if dtype == "int8":
        assert scales is not None
        return _scaled(codes, scales, torch.float16 if half else torch.float32)
    if dtype == "binary":
        bits = np.unpackbits(np.asarray(codes), axis=1, count=dim)
        decoded = (bits.astype(np.float32) * 2.0 - 1.0) / np.float32(np.sqrt(dim))
    else:
        raise InputError(f"unknown storage dtype {dtype!r}")
    return decoded.astype(np.float16) if half else decoded


def bytes_per_vector(dtype: str, dim: int) -> int:
    """Bytes of one vector's codes (a residual codec's recorded error, 2 more, not included)."""
    if is_residual(dtype):
        return CENTROID_BYTES + dim * RESIDUAL_BITS[dtype] // 8
    if is_trained(dtype):
        return dim // PQ_SUBDIM[dtype] // 2
    return {"float32": 4 * dim, "float16": 2 * dim, "int8": dim + 4, "binary": (dim + 7) // 8}[
        dtype
    ]


def code_layout(dtype: str, dim: int) -> tuple[np.dtype, int]:
    """(numpy dtype, columns) of the stored codes of ``dim``-dimensional vectors."""
    if is_trained(check_dtype(dtype)):
        return np.dtype(np.uint8), bytes_per_vector(dtype, dim)
    layouts: dict[str, tuple[np.dtype, int]] = {
        "float32": (np.dtype(np.float32), dim),
        "float16": (np.dtype(np.float16), dim),
        "int8": (np.dtype(np.int8), dim),
        "binary": (np.dtype(np.uint8), (dim + 7) // 8),
    }
    return layouts[dtype]


def page_magnitudes(vectors: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(n,) float16: each set's largest stored magnitude max |v| over its (N, d) float16
    ``vectors`` (``offsets`` (n + 1,), every set non-empty), read from the bits with two
    integer maxima per set and no temporary copy (0.03 ms per ColPali page): as int16 a
    non-negative float's bits are its magnitude, as uint16 a negative one's are 0x8000 plus
    its magnitude (NaN's bits sort above infinity's, so a set holding NaN gets NaN). The fast
    pass's error bound scales with it (``latemm.ranking.scoring``, which also reads blocks of pages
    without stored magnitudes through this)."""
    flat = np.asarray(vectors).reshape(-1)
    starts = np.asarray(offsets[:-1], dtype=np.int64) * vectors.shape[1]
    positive = np.maximum.reduceat(flat.view(np.int16), starts).astype(np.int32)
    negative = np.maximum.reduceat(flat.view(np.uint16), starts).astype(np.int32) - 0x8000
    return np.maximum(np.maximum(positive, negative), 0).astype(np.uint16).view(np.float16)


def num_centroids(num_vectors: int, num_train: int) -> int:
    """Coarse centroids of a residual codec for ``num_vectors`` vectors trained on ``num_train``:
    PLAID's ``2^floor(log2(16 sqrt(N)))`` within ``MIN_CENTROIDS``..``MAX_CENTROIDS``, and at
    most one per ``RESIDUAL_POINTS_PER_CENTROID`` training vectors."""
    target = 1 << int(np.floor(np.log2(16.0 * np.sqrt(max(num_vectors, 1)))))
    k = min(max(target, MIN_CENTROIDS), MAX_CENTROIDS)
    return max(1, min(k, num_train // RESIDUAL_POINTS_PER_CENTROID))


def train_residual(vectors: np.ndarray, nbits: int, *, seed: int = 0) -> np.ndarray:
    """A residual codebook for ``vectors`` (N, d): (K + 2^(n+1) - 1, d) float16, the K k-means
    centroids, then the 2^n - 1 bucket cutoffs and the 2^n bucket weights of each dimension
    (quantiles ``i / 2^n`` and ``(i + 1/2) / 2^n`` of the sample's residuals in it)."""
    n = len(vectors)
    if n > RESIDUAL_TRAIN_SAMPLE:
        rng = np.random.default_rng(seed)
        vectors = vectors[np.sort(rng.choice(n, RESIDUAL_TRAIN_SAMPLE, replace=False))]
    sample = np.ascontiguousarray(vectors, dtype=np.float32)  # (S, d)
    trained = kmeans(sample, num_centroids(n, sample.shape[0]), RESIDUAL_NITER, seed=seed)
    # (K, d), rounded to what is stored
    centroids = np.asarray(np.asarray(trained, dtype=np.float16), dtype=np.float32)
    assigned = nearest_centroids(sample, trained)
    residuals = sample - centroids[assigned]  # (S, d)
    cutoffs, weights = bucket_levels(residuals, nbits)
    return np.concatenate([centroids, cutoffs, weights]).astype(np.float16)


# How far faiss's k-means moves the two halves of a split cluster apart (its ``EPS``).
_SPLIT_EPS = 1.0 / 1024


def kmeans(
    sample: np.ndarray, k: int, iterations: int, *, seed: int = 0, start: Any = None
) -> np.ndarray:
    """(k, d) float32: Lloyd's k-means of ``sample`` (S, d) float32, run as faiss's
    ``Clustering`` runs it: started at ``k`` distinct sample points drawn at random (or at
    ``start``, (k, d) centroids), then ``iterations`` times each point assigned to its nearest
    centroid and each centroid moved to the mean of its points; a centroid left without points
    takes half of a cluster drawn with odds of its size less one, the two halves set apart by
    ``_SPLIT_EPS``. The assignment is ``nearest_centroids`` (faiss's ``IndexFlatL2`` search took
    104 of a Vaswani build's 177 s) and every step is done in a fixed order, so the centroids do
    not depend on the process's threads."""
    rng = np.random.default_rng(seed)
    n, dim = sample.shape
    if start is None:
        start = sample[np.sort(rng.choice(n, k, replace=False))]
    centroids = np.array(start, dtype=np.float32)
    signs = np.where(np.arange(dim) % 2 == 0, _SPLIT_EPS, -_SPLIT_EPS).astype(np.float32)
    for _ in range(iterations):
        assigned = nearest_centroids(sample, centroids)
        order = np.argsort(assigned, kind="stable")
        counts = np.bincount(assigned, minlength=k)
        held = np.flatnonzero(counts)
        starts = np.concatenate([[0], np.cumsum(counts[held])[:-1]])
        sums = np.add.reduceat(sample[order], starts, axis=0)  # (held, d), in sample order
        centroids[held] = sums / counts[held, None].astype(np.float32)
        for empty in np.flatnonzero(counts == 0).tolist():
            odds = np.maximum(counts - 1, 0).astype(np.float64)
            source = int(rng.choice(k, p=odds / odds.sum()))
            centroids[empty] = centroids[source] * (1 + signs)
            centroids[source] *= 1 - signs
            counts[empty] = counts[source] // 2
            counts[source] -= counts[empty]
    return centroids


def bucket_levels(
    residuals: np.ndarray, nbits: int, *, iterations: int = LLOYD_ITERATIONS
) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension scalar quantisers of ``residuals`` (S, d): ((2^n - 1, d) cutoffs, (2^n, d)
    weights). Started at PLAID's quantiles (cutoffs ``i / 2^n``, weights ``(i + 1/2) / 2^n``),
    then ``iterations`` Lloyd-Max steps on the sample: each weight the mean of its bucket's
    values, each cutoff midway between its two weights (the least squared error for the
    weights; a bucket left empty keeps its weight). A value goes to the bucket of how many
    cutoffs it exceeds, as ``residual_encode`` assigns it."""
    levels = 1 << nbits
    at_cutoffs, at_weights = np.arange(1, levels) / levels, (np.arange(levels) + 0.5) / levels
    s, dim = residuals.shape
    kind = np.quantile(residuals[:1, :1], at_cutoffs[:1], axis=0).dtype  # numpy's own
    cutoffs, weights = np.empty((levels - 1, dim), kind), np.empty((levels, dim), kind)
    for a in range(0, dim, 64):  # 64 columns at a time: (S, 64) sorted once, + sums
        ordered = np.sort(residuals[:, a : a + 64], axis=0)
        # the quantiles of sorted columns: the same values, without numpy sorting them again
        cutoffs[:, a : a + 64] = np.quantile(ordered, at_cutoffs, axis=0)
        weights[:, a : a + 64] = np.quantile(ordered, at_weights, axis=0)
        if iterations <= 0:
            continue
        column = ordered.astype(np.float64)
        sums = np.zeros((s + 1, column.shape[1]))
        np.cumsum(column, axis=0, out=sums[1:])
        for j in range(column.shape[1]):
            cut, weight = cutoffs[:, a + j].astype(np.float64), weights[:, a + j].astype(np.float64)
            for _ in range(iterations):
                # values <= cutoff b lie in buckets 0..b
                ends = np.concatenate([[0], np.searchsorted(column[:, j], cut, "right"), [s]])
                count = np.diff(ends)
                total = np.diff(sums[ends, j])
                weight = np.where(count > 0, total / np.maximum(count, 1), weight)
                weight = np.maximum.accumulate(weight)  # empty buckets: stay in order
                cut = (weight[:-1] + weight[1:]) / 2
            cutoffs[:, a + j], weights[:, a + j] = cut, weight
    return cutoffs, weights


# The counts ``residual_training`` records (with ``buckets``, how the buckets were trained).
RESIDUAL_TRAINING_COUNTS = ("centroids", "trained_on", "kmeans_iterations", "bucket_iterations")


def residual_centroids(codebook: np.ndarray, dtype: str) -> int:
    """K, the centroid rows of a ``dtype`` residual codebook."""
    return int(codebook.shape[0]) - ((2 << RESIDUAL_BITS[dtype]) - 1)


def residual_training(codebook: np.ndarray, dtype: str, num_vectors: int) -> dict[str, Any]:
    """What a segment's manifest entry records of its residual codebook, trained by ``train``
    on its ``num_vectors`` vectors here: the centroid count (``num_centroids``), the vectors
    k-means and the buckets were trained on, k-means iterations, and the bucket training
    (``bucket_levels``: PLAID's quantiles then Lloyd-Max steps)."""
    return {
        "centroids": residual_centroids(codebook, dtype),
        "trained_on": min(num_vectors, RESIDUAL_TRAIN_SAMPLE),
        "kmeans_iterations": RESIDUAL_NITER,
        "buckets": "quantile+lloyd-max",
        "bucket_iterations": LLOYD_ITERATIONS,
    }


def residual_parts(codebook: np.ndarray, nbits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centroids (K, d), cutoffs (2^n - 1, d), weights (2^n, d)) float32 of a residual codebook
    (float16 as stored, or float32 widened from it)."""
    codebook = np.asarray(codebook, dtype=np.float32)
    levels = 1 << nbits
    k = codebook.shape[0] - (2 * levels - 1)
    if k < 1:
        raise IndexCorruptError(
            f"a {nbits}-bit residual codebook has K centroid rows then {2 * levels - 1} bucket "
            f"rows; this one has only {codebook.shape[0]} rows"
        )
    return codebook[:k], codebook[k : k + levels - 1], codebook[k + levels - 1 :]


def residual_table(
    weights: np.ndarray, nbits: int, dtype: np.dtype | type = np.float32
) -> np.ndarray:
    """Decoding table of the packed residuals, (d * n / 8 * 256,) records of ``8 / n`` values:
    record ``256 * j + byte`` holds the weights of the dimensions byte ``j`` codes."""
    levels, dim = weights.shape
    per = 8 // nbits
    width = dim // per
    byte = np.arange(256)[:, None]
    codes = (byte >> (np.arange(per) * nbits)[None, :]) & (levels - 1)  # (256, per)
    w = weights.reshape(levels, width, per)
    table = w[codes[None, :, :], np.arange(width)[:, None, None], np.arange(per)[None, None, :]]
    table = np.ascontiguousarray(table, dtype=dtype)  # (width, 256, per)
    return table.reshape(width * 256, per).view(np.dtype((np.void, per * table.itemsize))).ravel()


def centroid_ids(codes: np.ndarray) -> np.ndarray:
    c = np.asarray(codes[:, :CENTROID_BYTES], dtype=np.int64)
    return c[:, 0] | (c[:, 1] << 8) | (c[:, 2] << 16)


# Scores per block of ``nearest_centroids`` (rows x centroids): 64 MiB of float32.
_ASSIGN_BLOCK_SCORES = 1 << 24


def nearest_centroids(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(N,) int64: the nearest of ``centroids`` (K, d) in L2 to each of ``vectors`` (N, d),
    the lowest id on a tie. One float32 product per block, ``[x, 1]`` by ``[c, -|c|^2 / 2]``
    (the argmax of ``x.c - |c|^2 / 2`` is the argmin of ``|x - c|``), then an argmax: 3-4x
    faster than faiss's ``IndexFlatL2.search`` (16,384 x 384 against 8,192 centroids: 1.0
    against 3.2-4.1 s on 2 cores), which spends most of its time outside the product. Blocks
    run on worker threads with one torch thread each, so the ids do not depend on how many
    threads the process runs: a shard built by a Ray actor (one thread) codes a page as an
    in-process build does."""
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    k, dim = centroids.shape
    weights = np.empty((dim + 1, k), dtype=np.float32)
    weights[:dim] = centroids.T
    weights[dim] = -0.5 * np.einsum("kd,kd->k", centroids, centroids)
    table = torch.from_numpy(weights)
    n = len(vectors)
    out = np.empty(n, dtype=np.int64)
    rows = max(1, _ASSIGN_BLOCK_SCORES // k)
    starts = range(0, n, rows)
    workers = min(len(starts), cpu_threads(1))

    def block(start: int) -> None:
        if workers > 1:
            torch.set_num_threads(1)  # this pool thread's setting only (OpenMP's is per thread)
        x = vectors[start : start + rows]
        lifted = torch.ones((len(x), dim + 1), dtype=torch.float32)
        lifted[:, :dim] = torch.from_numpy(np.asarray(x, dtype=np.float32))
        out[start : start + len(x)] = torch.mm(lifted, table).argmax(dim=1).numpy()

    if workers <= 1:
        with one_torch_thread():  # as in the pool: the same products whatever the threads
            for start in starts:
                block(start)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(block, starts))
    return out


def residual_encode(
    vectors: np.ndarray, codebook: np.ndarray, nbits: int
) -> tuple[np.ndarray, np.ndarray]:
    """(N, d) float32 -> ((N, 3 + d * n / 8) uint8 codes, (N,) float16 reconstruction errors
    ``||x - decode(code)||_2``, rounded up (and 1e-5 relative) so that they bound the float32
    decoding's error however its norm is summed; infinite beyond float16's range)."""
    centroids, cutoffs, weights = residual_parts(codebook, nbits)
    n, dim = vectors.shape
    per = 8 // nbits
    codes = np.empty((n, CENTROID_BYTES + dim // per), dtype=np.uint8)
    errors = np.empty(n, dtype=np.float16)
    shifts = (np.arange(per) * nbits).astype(np.uint8)
    for a in range(0, n, _SCALE_BLOCK_ROWS):
        x = vectors[a : a + _SCALE_BLOCK_ROWS]  # (B, d)
        ids = nearest_centroids(x, centroids)
        base = centroids[ids]  # (B, d)
        residual = x - base
        buckets = np.zeros(x.shape, dtype=np.uint8)
        for cutoff in cutoffs:  # bucket = how many cutoffs the value exceeds
            buckets += residual > cutoff
        packed = (buckets.reshape(len(x), -1, per) << shifts).sum(axis=2, dtype=np.uint8)
        codes[a : a + len(x), :CENTROID_BYTES] = (
            ids.astype("<u4").view(np.uint8).reshape(-1, 4)[:, :CENTROID_BYTES]
        )
        codes[a : a + len(x), CENTROID_BYTES:] = packed
        decoded = base + weights[buckets, np.arange(dim)]  # what residual_decode gives
        # Exact in float64, then 1e-5 relative slack: a norm summed in float32 (d roundings)
        # stays below it too.
        err = np.linalg.norm((x - decoded).astype(np.float64), axis=1) * (1 + 1e-5)
        with np.errstate(over="ignore"):
            half = err.astype(np.float16)
        low = half.astype(np.float64) < err
        half[low] = np.nextafter(half[low], np.float16(np.inf))
        errors[a : a + len(x)] = half
    return codes, errors


def residual_decode(
    codes: np.ndarray,
    codebook: np.ndarray,
    nbits: int,
    dtype: np.dtype | type = np.float32,
    *,
    table: np.ndarray | None = None,
    into: np.ndarray | None = None,
    centroids: bool = True,
) -> np.ndarray:
    """(n, 3 + d * n / 8) uint8 residual codes -> (n, d) ``dtype``: centroid + bucket weights,
    summed in float32 and rounded once. ``table``: ``residual_table`` of the codebook's weights
    (float32), built here when absent; ``into``: (n, d) C-contiguous output of ``dtype``.
    ``centroids=False``: the bucket weights alone (the residuals), float32; adding each
    token's centroid row to them in float32 gives the full decoding bit for bit."""
    rows, _, weights = residual_parts(codebook, nbits)
    n = codes.shape[0]
    dim = rows.shape[1]
    ids = centroid_ids(codes)
    if n and int(ids.max()) >= rows.shape[0]:
        row = int(np.argmax(ids >= rows.shape[0]))
        raise IndexCorruptError(
            f"residual code {row} names centroid {int(ids[row])} of {rows.shape[0]}; the "
            "vectors do not belong to this codebook. Restore the segment or rebuild the index"
        )
    if table is None:
        table = residual_table(weights, nbits)
    if n > _DECODE_BLOCK_ROWS:  # in blocks: the (n, d / per) index stays small and reused
        out = (
            np.empty((n, dim), dtype=np.float32 if not centroids else dtype)
            if into is None
            else into
        )
        for a in range(0, n, _DECODE_BLOCK_ROWS):
            block = slice(a, a + _DECODE_BLOCK_ROWS)
            residual_decode(
                codes[block],
                codebook,
                nbits,
                out.dtype,
                table=table,
                into=out[block],
                centroids=centroids,
            )
        return out
    packed = np.asarray(codes[:, CENTROID_BYTES:])
    # Widened and offset in one pass; the residuals gathered as whole records (into the output
    # when it is float32); centroids by np.take (2x fancy indexing's speed here); float16 by
    # torch (3x numpy's conversion, the same rounding): 24,576 MiniLM tokens in ~half the time.
    index = np.add(packed, np.arange(packed.shape[1], dtype=np.intp) * 256, dtype=np.intp)
    direct = into is not None and into.dtype == np.float32
    if direct:
        assert into is not None
        records = into.view(table.dtype).reshape(n, packed.shape[1])
        np.take(table, index, out=records, mode="clip")  # in range: "raise" would buffer
        decoded = into
    else:
        decoded = np.take(table, index).view(np.float32).reshape(n, dim)  # (n, d) residuals
    if not centroids:
        return decoded
    decoded += np.take(rows, ids, axis=0)
    if direct or (into is None and np.dtype(dtype) == np.float32):
        return decoded
    if into is not None:
        torch.from_numpy(into).copy_(torch.from_numpy(decoded))
        return into
    if np.dtype(dtype) == np.float16:
        return torch.from_numpy(decoded).half().numpy()
    return decoded.astype(dtype)


def residual_score_bound(query_vectors: np.ndarray, errors: np.ndarray) -> float:
    """How far one query's MaxSim over a document's decoded vectors may be from the MaxSim
    over the vectors encoded: ``sum_i ||q_i|| * max_t error_t`` for the query's (T, d) vectors
    and the document's (N,) recorded errors (each max over tokens moves by at most the largest
    ``|q . (x - x')| <= ||q|| ||x - x'||``)."""
    norms = np.linalg.norm(np.asarray(query_vectors, dtype=np.float64), axis=1)
    return float(norms.sum() * float(np.max(errors)))
