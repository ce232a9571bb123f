"""Exact late-interaction (MaxSim / Chamfer) scoring kernels. Arrays in, arrays out.

A multi-vector set is a flat (N, d) array plus (n + 1,) int64 offsets. Scores accumulate in
float32 whatever the storage dtype, and no set is ever padded, so a document's score never
depends on which other documents share its block. ``maxsim_half`` is a fast pass (float16
products, or exact int8 products on int8 codes) that returns each score with a proven bound on
its distance to ``maxsim``'s, and ``may_reach_top``
uses the bounds to keep only the candidates whose exact score could reach a top k. Imports
numpy, torch and ``index_store.codecs`` (float16 page magnitudes, read as an index stores them).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from fde.encode import one_torch_thread
from index_store.codecs import page_magnitudes

# Document tokens per matrix product; (block, query tokens) float32 similarities stay in cache.
_BLOCK_TOKENS = 1 << 16


def _segment_max(sim: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(N, M) -> (n, M): max over consecutive row segments of the given lengths."""
    n = lengths.numel()
    first = int(lengths[0])
    if bool((lengths == first).all()):
        return sim.view(n, first, sim.shape[1]).amax(dim=1)
    owner = torch.repeat_interleave(torch.arange(n, device=sim.device), lengths)
    out = torch.full((n, sim.shape[1]), -torch.inf, dtype=sim.dtype, device=sim.device)
    return out.scatter_reduce_(0, owner.unsqueeze(1).expand_as(sim), sim, reduce="amax")


def _segment_sum_columns(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(n, M) -> (n, Q): sum over consecutive column segments of the given lengths."""
    q = lengths.numel()
    first = int(lengths[0])
    if bool((lengths == first).all()):
        return values.view(values.shape[0], q, first).sum(dim=2)
    owner = torch.repeat_interleave(torch.arange(q, device=values.device), lengths)
    out = torch.zeros((values.shape[0], q), dtype=values.dtype, device=values.device)
    return out.index_add_(1, owner, values)


def maxsim(
    query_vectors: np.ndarray | torch.Tensor,
    query_offsets: np.ndarray,
    doc_vectors: np.ndarray | torch.Tensor,
    doc_offsets: np.ndarray,
    *,
    device: str | torch.device | None = None,
    block_tokens: int = _BLOCK_TOKENS,
    float64: bool = False,
) -> np.ndarray:
    """MaxSim of every query against every document.

    ``score(q, D) = sum over query tokens t of max over document tokens u of <t, u>``.

    Parameters
    ----------
    query_vectors
        (Nq, d) float array: all queries' token vectors, concatenated.
    query_offsets
        (Q + 1,) int64 boundaries of each query in ``query_vectors``.
    doc_vectors
        (N, d) float array (float16 or float32; memory-mapped arrays are read block by block),
        or a tensor, which may already lie on ``device`` (no copy through the host then).
    doc_offsets
        (n + 1,) int64 boundaries of each document; every document has at least one vector.
    device
        torch device for the products (``"cuda"`` for a GPU); the CPU by default.
    block_tokens
        Document tokens per matrix product.
    float64
        Products and sums in float64, the scores then rounded to float32: a document's score
        then does not depend on its place in a block (float32 products differ by an ulp with
        the position, which reorders identical documents). Twice the cost of float32.

    Returns
    -------
    (Q, n) float32 scores.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    q_offsets = np.asarray(query_offsets, dtype=np.int64)
    d_offsets = np.asarray(doc_offsets, dtype=np.int64)
    numpy_inputs = not isinstance(query_vectors, torch.Tensor) and not isinstance(
        doc_vectors, torch.Tensor
    )
    if numpy_inputs and _small_on_cpu(dev, q_offsets, d_offsets, int(doc_vectors.shape[-1])):
        assert not isinstance(query_vectors, torch.Tensor)
        assert not isinstance(doc_vectors, torch.Tensor)
        return _maxsim_numpy(query_vectors, q_offsets, doc_vectors, d_offsets, float64)
    kind = torch.float64 if float64 else torch.float32
    queries = _tensor(query_vectors).float().to(dev, kind)  # (Nq, d), rounded to float32 first
    q_lengths = torch.from_numpy(np.diff(q_offsets)).to(dev)  # (Q,)
    n = d_offsets.size - 1
    out = np.empty((q_offsets.size - 1, n), dtype=np.float32)
    start = 0
    while start < n:
        stop = int(np.searchsorted(d_offsets, d_offsets[start] + block_tokens, side="right")) - 1
        stop = min(max(stop, start + 1), n)
        block = doc_vectors[d_offsets[start] : d_offsets[stop]]
        tokens = _tensor(block).to(dev, kind)  # (Nb, d)
        sim = tokens @ queries.T  # (Nb, Nq)
        lengths = torch.from_numpy(np.diff(d_offsets[start : stop + 1])).to(dev)
        best = _segment_max(sim, lengths)  # (nb, Nq)
        out[:, start:stop] = _segment_sum_columns(best, q_lengths).T.float().cpu().numpy()
        start = stop
    return out


# Similarities ((document tokens) x (query tokens)) up to which ``maxsim`` on the CPU runs on
# this thread alone (one-thread product, numpy reductions): torch's and numpy's BLAS thread
# teams cost ~1-7 ms a small call on a loaded machine (480 x 384 by 12 x 384 in float64: 7.3 ms
# on 2 threads, 0.08 ms on one), which dominated the exact pass of short pages (Vaswani: ~10
# candidates of ~48 tokens per query, 5.7 ms per query).
_NUMPY_MAX_SIMILARITIES = 1 << 18
# and multiply-adds (similarities x dimension) up to which it does: above it, two threads pay
# on an idle machine (ColPali-shaped survivors, 10 pages of 1,030 x 128 by 24 query tokens in
# float64, 31.6M: 1.1-1.2 ms on 2 threads against 1.8-1.9 ms on one; Vaswani's 2.2M stay).
_NUMPY_MAX_MULTIPLY_ADDS = 1 << 23


def _small_on_cpu(
    dev: torch.device, q_offsets: np.ndarray, d_offsets: np.ndarray, dim: int
) -> bool:
    """Whether ``maxsim`` of numpy arrays takes the one-thread path: on the CPU, every query
    and document with a token, few similarities and few multiply-adds."""
    if dev.type != "cpu" or q_offsets.size < 2 or d_offsets.size < 2:
        return False
    similarities = int(d_offsets[-1] - d_offsets[0]) * int(q_offsets[-1] - q_offsets[0])
    if similarities > _NUMPY_MAX_SIMILARITIES or similarities * dim > _NUMPY_MAX_MULTIPLY_ADDS:
        return False
    return bool((np.diff(q_offsets) > 0).all() and (np.diff(d_offsets) > 0).all())


def _maxsim_numpy(
    query_vectors: np.ndarray,
    q_offsets: np.ndarray,
    doc_vectors: np.ndarray,
    d_offsets: np.ndarray,
    float64: bool,
) -> np.ndarray:
    """``maxsim`` of a small problem on one thread: the same products (queries rounded to
    float32 first, float64 when asked), maxima per document and sums per query in numpy."""
    kind = np.float64 if float64 else np.float32
    used = int(q_offsets[-1] - q_offsets[0])  # as torch's path: rows from 0, by lengths
    queries = np.asarray(query_vectors[:used], dtype=np.float32).astype(kind, copy=False)
    docs = np.asarray(doc_vectors[d_offsets[0] : d_offsets[-1]]).astype(kind, copy=False)
    with one_torch_thread():
        sim = torch.mm(_tensor(docs), torch.from_numpy(queries).T).numpy()  # (Nd, Nq)
    best = np.maximum.reduceat(sim, d_offsets[:-1] - d_offsets[0], axis=0)  # (n, Nq)
    sums = np.add.reduceat(best, q_offsets[:-1] - q_offsets[0], axis=1)  # (n, Q)
    return np.ascontiguousarray(sums.T, dtype=np.float32)


def maxsim_pairs(
    query_vectors: np.ndarray,
    doc_vectors: np.ndarray,
    doc_offsets: np.ndarray,
    *,
    device: str | torch.device | None = None,
    float64: bool = False,
) -> np.ndarray:
    """MaxSim of one query, (Tq, d), against n documents: (n,) float32."""
    offsets = np.array([0, len(query_vectors)], dtype=np.int64)
    return maxsim(query_vectors, offsets, doc_vectors, doc_offsets, device=device, float64=float64)[
        0
    ]


# ------------------------------------------------------------------ half-precision fast pass
# A fast pass multiplies in float16 (products accumulate in float32 inside the backend's GEMM,
# which ``half_accumulates_in_float32`` checks) and keeps the per-page maxima in float16; each
# fast score comes with a proven bound on its distance to the float32 kernel's score, so that
# ``may_reach_top`` can send only the candidates that might change a top k to ``maxsim``.
# The retriever's exact pass multiplies in float64 and rounds once to float32; its error is
# within the float32 kernel's (half a float32 ulp per score plus float64 rounding), which the
# bound's float32 summation terms already cover, so the bound holds against it too.

_U16 = 2.0**-11  # unit roundoff of float16
_TINY16 = 2.0**-25  # half the spacing of float16 subnormals: absolute rounding error there
_U32 = 2.0**-24  # unit roundoff of float32
_CODE_MAX = 127.0  # int8 codes lie in [-127, 127] (index_store.codecs)
_INT8_GROUP = 32  # query tokens per int8 product
# Pages of at least this many tokens are multiplied one by one where they lie (a memory-mapped
# page is read by its product, never copied), into one int32 buffer per block of pages of up to
# _INT8_IN_PLACE_BLOCK tokens (4 ColPali pages: (2 g, block) int32 stays in the L2 cache), then
# scaled and maximised block by block; shorter pages are copied into blocks first, as a
# product's fixed costs would dominate theirs. One 24-token query against 320 int8 ColPali pages
# of a 100k index, products and maxima: 23 ms in place in blocks of 4 pages (28 page by page,
# 25 in blocks of 16), against 33 ms copying them into blocks first (read 10.5, pass 22).
_INT8_IN_PLACE_TOKENS = 512
_INT8_IN_PLACE_BLOCK = 4800
_TINY32 = 2.0**-149  # float32's smallest subnormal: absolute rounding error bound there
_SAFETY = 1.001  # absorbs the float64 rounding of the bound's own arithmetic
# Page tokens per half-precision product, at least: (block, d) pages stay in the L2 cache.
_HALF_BLOCK_TOKENS = 16384
# Share of padding from which pages of many lengths are multiplied unpadded (_ragged_maxima).
_MAX_PADDING_WASTE = 0.25
# Pages of at least this many tokens each are multiplied one by one where they lie (never
# copied), on worker threads that each run their products on one thread (``_page_maxima``).
# 512 long text pages (700 x 384 float16) against a 20-token query on a loaded 2-core machine:
# 3.7 s with one product per page on torch's two OpenMP threads (every product waits at a
# barrier for a descheduled thread), 190 ms on one thread, 116 ms on two workers of one thread.
LONG_PAGE_TOKENS = 256
# Pages per task of ``_page_maxima``'s workers: small enough to balance a loaded machine.
_PAGES_PER_TASK = 8


def _gamma(n: np.ndarray | int) -> np.ndarray:
    """Higham's gamma_n for float32 (error of any order of summing n terms), rounded up."""
    return 1.01 * np.asarray(n, dtype=np.float64) * _U32


@functools.cache
def half_accumulates_in_float32() -> bool:
    """Whether torch's float16 CPU product accumulates in float32, as the fast pass's bound
    assumes: 1 + 127 * 2**-12 survives it, float16 accumulation would return 1."""
    u = torch.full((4, 128), 2.0**-12, dtype=torch.float16)
    u[:, 0] = 1.0
    got = (u @ torch.ones((128, 3), dtype=torch.float16)).float()
    return bool((got == 1.03125).all())


# Largest dimension whose int8 products stay in int32: (128 * 127 + 64) * 127 * d < 2**31.
INT8_MAX_DIM = 1024


@functools.cache
def int8_products_are_exact() -> bool:
    """Whether torch multiplies int8 matrices into int32 on this CPU (``torch._int_mm``),
    exactly, as the int8 fast pass needs; without it int8 pages are decoded to float16."""
    try:
        a = torch.tensor([[127, -127, 3], [1, 2, -128]], dtype=torch.int8)
        b = torch.tensor([[127, 127, 5], [-128, 1, 2]], dtype=torch.int8)  # (n, d)
        got = torch._int_mm(a, b.T)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return got.dtype == torch.int32 and bool(torch.equal(got.long(), a.long() @ b.long().T))


def _int_product(
    queries: torch.Tensor, page_t: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """(M, N) exact int32 products of int8 ``queries`` (M, d) and ``page_t`` (d, N), a
    transposed page. ``torch._int_mm`` is wrong when d = 1 (checked on torch 2.14, contiguous
    operands or not), so one dimension is an outer product in int32 instead."""
    if queries.shape[1] == 1:
        product = queries.to(torch.int32) * page_t.to(torch.int32)  # (M, 1) * (1, N)
        if out is None:
            return product
        return out.copy_(product)
    if out is None:
        return torch._int_mm(queries, page_t)
    return torch._int_mm(queries, page_t, out=out)


def _page_blocks(lengths: np.ndarray, block_tokens: int) -> list[np.ndarray]:
    """Pages grouped by similar length, each group at most ``block_tokens`` once padded."""
    order = np.argsort(lengths, kind="stable")
    blocks, start = [], 0
    while start < order.size:
        stop = start + 1
        while stop < order.size and (stop - start + 1) * int(lengths[order[stop]]) <= block_tokens:
            stop += 1
        blocks.append(order[start:stop])
        start = stop
    return blocks


def _gather_pages(docs: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(p, L, d) pages starting at ``starts`` (p,) in ``docs`` ((N, d), or (N,) for one value
    per token, then d = 1): a view when they are consecutive and of one length, else a copy
    (memory-mapped pages are read here, block by block); shorter pages repeat their last
    token, which leaves every maximum unchanged."""
    width = int(lengths.max())
    if bool((lengths == width).all()):
        if bool((starts == starts[0] + width * np.arange(starts.size)).all()):
            view = docs[int(starts[0]) : int(starts[0]) + width * starts.size]
            return np.asarray(view).reshape(starts.size, width, -1)
        block = np.concatenate([docs[a : a + width] for a in starts.tolist()])
        return block.reshape(starts.size, width, -1)
    steps = np.minimum(np.arange(width), lengths[:, None] - 1)  # (p, L)
    return np.asarray(docs[starts[:, None] + steps]).reshape(starts.size, width, -1)


def _padding_waste(lengths: np.ndarray, block_tokens: int) -> float:
    """The share of the tokens ``_page_blocks`` would multiply that are padding."""
    if bool((lengths == lengths[0]).all()):
        return 0.0
    padded = sum(
        int(rows.size) * int(lengths[rows].max()) for rows in _page_blocks(lengths, block_tokens)
    )
    return 1.0 - float(lengths.sum()) / max(1, padded)


def _ragged_maxima(
    q16: torch.Tensor,
    docs: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    block_tokens: int,
    best: np.ndarray,
    max_abs: np.ndarray | None,
    page_max: np.ndarray | None,
) -> None:
    """Fills ``best`` (n, Nq) with each page's float16 per-token maxima and ``max_abs`` (n,)
    with its largest magnitude (``page_max`` where given; not at all when ``max_abs`` is None),
    for the n pages [starts, ends) of
    ``docs`` (N, d) float16, in order: consecutive runs of pages of at most ``block_tokens``
    tokens, unpadded, one (Nq, tokens) product each, then a maximum over each page's columns.
    A run of pages lying one after another is read in place; others are gathered first."""
    lengths = ends - starts
    ends_cum = np.cumsum(lengths)
    first = 0
    while first < lengths.size:
        done = int(ends_cum[first - 1]) if first else 0
        stop = int(np.searchsorted(ends_cum, done + block_tokens, side="right"))
        stop = min(max(stop, first + 1), lengths.size)
        run_starts, run_ends = starts[first:stop], ends[first:stop]
        local = np.zeros(stop - first + 1, dtype=np.int64)
        np.cumsum(lengths[first:stop], out=local[1:])
        if bool((run_starts[1:] == run_ends[:-1]).all()):
            block = np.asarray(docs[int(run_starts[0]) : int(run_ends[-1])])
        else:
            tokens = np.repeat(run_starts - local[:-1], lengths[first:stop]) + np.arange(local[-1])
            block = np.asarray(docs[tokens])
        # A small product runs on this thread alone (_NUMPY_MAX_SIMILARITIES): 12 x 384 by
        # 10,900 x 384 float16, 1.4 ms on one thread against 3.0 ms on two (loaded machine).
        alone = q16.shape[0] * block.shape[0] <= _NUMPY_MAX_SIMILARITIES
        with one_torch_thread() if alone else contextlib.nullcontext():
            sim = torch.mm(q16, _tensor(block).T).float().numpy()  # (Nq, tokens), float16 values
        best[first:stop] = np.maximum.reduceat(sim, local[:-1], axis=1).T
        if max_abs is not None:
            got = page_magnitudes(block, local) if page_max is None else page_max[first:stop]
            max_abs[first:stop] = got
        first = stop


def _page_maxima(
    queries: torch.Tensor,
    pages: Sequence[torch.Tensor],
    best: np.ndarray,
    max_abs: np.ndarray | None = None,
    page_max: np.ndarray | None = None,
) -> None:
    """Each page's per-query-token maxima into ``best[i]`` ((n, Nq)): one (Nq, L_i) product of
    ``queries`` (Nq, d) and ``pages[i]`` (L_i, d) per page, where the page lies (a view of a
    memory map is read by its product, never copied), no padding; a page of another dtype than
    ``queries`` is converted first. With ``max_abs`` (n,) float16 pages' largest magnitudes too
    (``page_max`` where given). The pages are split into tasks over ``torch.get_num_threads()``
    worker threads, each running its products on one thread: short products on a shared
    OpenMP team stall at its barriers whenever another process holds a core."""

    def work(first: int) -> None:
        torch.set_num_threads(1)  # this worker thread's setting only (OpenMP's is per thread)
        for i in range(first, min(first + _PAGES_PER_TASK, len(pages))):
            page = pages[i].to(queries.dtype)  # (L_i, d)
            best[i] = torch.mm(queries, page.T).amax(dim=1).numpy()  # (Nq,)
            if max_abs is not None:
                if page_max is not None:
                    max_abs[i] = page_max[i]
                else:
                    offsets = np.array([0, page.shape[0]])
                    max_abs[i] = page_magnitudes(pages[i].numpy(), offsets)[0]

    tasks = range(0, len(pages), _PAGES_PER_TASK)
    threads = torch.get_num_threads()
    workers = min(threads, len(tasks))
    if workers <= 1:
        try:
            for first in tasks:
                work(first)
        finally:
            torch.set_num_threads(threads)  # work() set this thread's: restore it
        return
    list(thread_pool(workers).map(work, tasks))  # re-raises a worker's error


def maxsim_pages(
    query_vectors: np.ndarray, query_offsets: np.ndarray, pages: Sequence[np.ndarray]
) -> np.ndarray:
    """Exact MaxSim of every query against pages given one by one, as ``maxsim(...,
    float64=True)`` computes it: products and sums in float64 (the query rounded to float32
    first), the scores rounded to float32, so a score does not depend on the pages beside it.

    For long pages (``LONG_PAGE_TOKENS`` and more) that lie in a memory map: each page is
    multiplied where it lies, one product per page on worker threads (``_page_maxima``),
    nothing gathered into a block first.

    Parameters
    ----------
    query_vectors, query_offsets
        (Nq, d) float query tokens, concatenated, and (Q + 1,) int64 boundaries.
    pages
        n (L_i, d) float16 or float32 arrays (L_i >= 1), views of stored vectors say.

    Returns
    -------
    (Q, n) float32 scores.
    """
    q_offsets = np.asarray(query_offsets, dtype=np.int64)
    queries = np.asarray(query_vectors, dtype=np.float32).astype(np.float64)
    best = np.empty((len(pages), queries.shape[0]), dtype=np.float64)  # maxima, transposed
    _page_maxima(torch.from_numpy(queries), _tensors(pages), best)
    return _sum_rows(best.T.copy(), q_offsets).astype(np.float32)  # (Q, n)


@functools.cache
def thread_pool(n: int, name: str = "latemm-maxsim") -> ThreadPoolExecutor:
    """A pool of ``n`` threads named ``name`` (``_page_maxima``'s by default), started on first
    use and kept (starting threads per call cost ~4 ms each on a loaded machine). Work that
    may itself call ``_page_maxima`` takes a pool of another name, so that it never waits on
    the threads it occupies."""
    return ThreadPoolExecutor(max_workers=n, thread_name_prefix=name)


def _tensor(block: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A tensor sharing ``block``'s memory, which may be a read-only memory map (the products
    only read it, so torch's warning about non-writable arrays does not apply), or ``block``
    itself when it is a tensor already (on a GPU, say)."""
    return _tensors([block])[0]


def _tensors(blocks: Sequence[np.ndarray | torch.Tensor]) -> list[torch.Tensor]:
    """``_tensor`` of each block, the warning filter set once (it costs ~10 us a time)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        return [
            b if isinstance(b, torch.Tensor) else torch.from_numpy(np.asarray(b)) for b in blocks
        ]


def _max_abs(block: np.ndarray) -> np.ndarray:
    """(p, L, d) float16 -> (p,) float64 largest magnitude per page, read from the bits
    (``index_store.codecs.page_magnitudes``, what a float16 index stores)."""
    p, width, dim = block.shape
    flat = block.reshape(p * width, dim)
    return page_magnitudes(flat, np.arange(p + 1) * width).astype(np.float64)


def _sum_rows(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(Nq, n) -> (Q, n): the sum of each query's rows, zeros for a query with none."""
    lengths = np.diff(offsets)
    out = np.zeros((lengths.size, values.shape[1]), dtype=values.dtype)
    some = lengths > 0
    if some.any():
        out[some] = np.add.reduceat(values, offsets[:-1][some], axis=0)
    return out


def _token_terms(queries: np.ndarray, exact_half: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per query token t: (a_t, c_t) with ``|similarity error| <= a_t * m + c_t`` before the
    output rounding, for a page whose stored values are at most ``m`` in magnitude.

    Terms: the query's rounding to float16 (``||q - q16||_1 m``), float32 accumulation in
    both kernels (``gamma_d (||q||_1 + ||q16||_1) m``) and, when the stored values are not
    float16 numbers, their rounding to float16 (``||q16||_1 (2**-11 m + 2**-25)``).
    """
    q64 = queries.astype(np.float64)
    q16 = queries.astype(np.float16).astype(np.float64)
    norm1, norm1_16 = np.abs(q64).sum(axis=1), np.abs(q16).sum(axis=1)
    a = np.abs(q64 - q16).sum(axis=1) + _gamma(queries.shape[1]) * (norm1 + norm1_16)
    c = np.zeros_like(a)
    if not exact_half:
        a += _U16 * norm1_16
        c += _TINY16 * norm1_16
    return a, c


def _bounds(
    best: np.ndarray,
    max_abs: np.ndarray,
    terms: tuple[np.ndarray, np.ndarray],
    q_offsets: np.ndarray,
    unit: float = _U16,
    tiny: float | np.ndarray = _TINY16,
) -> np.ndarray:
    """(Nq, n) per-token maxima and (n,) page magnitudes -> (Q, n) float64 bound on
    |fast score - float32 kernel score|; inf where any input is not finite.

    A similarity v (within E = a_t m + c_t of the kernel's) reaches the maximum rounded,
    within ``unit * |v| + tiny`` of v: float16 output (2**-11, 2**-25); the int8 pass puts
    all its roundings in E (unit 0). Per token the fast maximum Z is off from the float32
    kernel's Y by
    D <= (unit (|Z| + E) + tiny + E) / (1 - unit) (|Y| <= |Z| + D bounds the rounded output
    of the token achieving Y). Summing the Tq maxima in float32, in both kernels, adds
    gamma_Tq (2 sum |Z| + sum D).
    """
    a, c = terms
    z = np.abs(best.astype(np.float64))  # (Nq, n)
    e = a[:, None] * max_abs[None, :] + c[:, None]
    d = e + tiny if unit == 0 else (unit * (z + e) + tiny + e) / (1.0 - unit)
    lengths = np.diff(q_offsets)
    sum_d, sum_z = _sum_rows(d, q_offsets), _sum_rows(z, q_offsets)  # (Q, n)
    bound = _SAFETY * (sum_d + _gamma(lengths)[:, None] * (2.0 * sum_z + sum_d))
    return np.where(np.isfinite(bound), bound, np.inf)


def maxsim_half(
    query_vectors: np.ndarray,
    query_offsets: np.ndarray,
    doc_vectors: np.ndarray,
    doc_offsets: np.ndarray,
    *,
    exact_half: bool = True,
    scales: np.ndarray | None = None,
    rows: np.ndarray | None = None,
    block_tokens: int | None = None,
    page_max: np.ndarray | None = None,
    bounds: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Half-precision MaxSim of every query against every document, with error bounds.

    Parameters
    ----------
    query_vectors
        (Nq, d) float32 array: all queries' token vectors, concatenated.
    query_offsets
        (Q + 1,) int64 boundaries of each query in ``query_vectors``.
    doc_vectors
        (N, d) float16 array: the documents as float16; or (N, d) int8 codes with ``scales``.
    doc_offsets
        (n + 1,) int64 boundaries of each document; every document has at least one vector.
    exact_half
        Whether ``doc_vectors`` are the stored values exactly (float16 storage), not a
        float16 rounding of float32 decoded values (every other codec but int8).
    scales
        (N,) float32 per-vector scales of int8 ``doc_vectors``: the int8 pass
        (``maxsim_int8``) scores them, nothing decoded.
    rows
        (n,) int64: score only these documents of ``doc_offsets``, in this order (all by
        default); their vectors are read block by block, never gathered all at once.
    page_max
        (n,) float16: each document's largest stored magnitude (``codecs.page_magnitudes``,
        which a float16 index keeps); read from the blocks when absent, which costs about half
        as much as the products for one query.
    block_tokens
        Page tokens per product (pages of similar length are padded to a block). By default
        16,384 for int8 codes' short pages (``maxsim_int8``); for float16, as many as keep
        the (query tokens x block) float16 similarities within 4 MB, between 16,384 and
        131,072 (one 28-token query against 256 pages: 45% of the product limit at 16,384
        tokens, 53% at 65,536).
    bounds
        False: the scores alone (every bound infinite), for a caller that only ranks them;
        the pages' magnitudes are then not read.

    Returns
    -------
    (Q, n) float32 fast scores and (Q, n) float64 bounds (n: documents scored): ``maxsim``
    of the same pair (on the float32 decoded values) is within the bound of the fast score.
    """
    q_offsets = np.asarray(query_offsets, dtype=np.int64)
    d_offsets = np.asarray(doc_offsets, dtype=np.int64)
    picked = np.arange(d_offsets.size - 1) if rows is None else np.asarray(rows, np.int64)
    starts, ends = d_offsets[picked], d_offsets[picked + 1]
    if scales is not None:
        spans = list(zip(starts.tolist(), ends.tolist(), strict=True))
        pages = [doc_vectors[a:b] for a, b in spans]
        page_scales = [scales[a:b] for a, b in spans]
        return maxsim_int8(query_vectors, q_offsets, pages, page_scales, block_tokens=block_tokens)
    queries = np.ascontiguousarray(query_vectors, dtype=np.float32)
    q16 = torch.from_numpy(queries.astype(np.float16))  # (Nq, d)
    if block_tokens is None:
        wide = (1 << 21) // max(1, queries.shape[0])
        block_tokens = max(_HALF_BLOCK_TOKENS, min(8 * _HALF_BLOCK_TOKENS, wide))
    n = picked.size
    best = np.empty((n, queries.shape[0]), dtype=np.float16)  # per-token maxima, transposed
    max_abs = np.empty(n, dtype=np.float64)
    lengths = ends - starts
    # Pages of one length are multiplied as (p, L, d) blocks, read in place where they lie
    # consecutively; pages of many lengths (text) are multiplied as they are, no padding, with
    # each page's maxima taken over its own columns (``_ragged_maxima``): padding short pages to
    # the longest of their block multiplied 5x the tokens on Vaswani's MiniLM abstracts.
    long = n > 0 and int(lengths.min()) >= LONG_PAGE_TOKENS
    ragged = not long and n > 0 and _padding_waste(lengths, block_tokens) > _MAX_PADDING_WASTE
    if long:
        stored_max = None if page_max is None else page_max[picked]
        views = [doc_vectors[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
        _page_maxima(q16, _tensors(views), best, max_abs if bounds else None, stored_max)
    elif ragged:
        stored_max = None if page_max is None else page_max[picked]
        _ragged_maxima(
            q16,
            doc_vectors,
            starts,
            ends,
            block_tokens,
            best,
            max_abs if bounds else None,
            stored_max,
        )
    for block_rows in [] if ragged or long else _page_blocks(lengths, block_tokens):
        block = _gather_pages(doc_vectors, starts[block_rows], lengths[block_rows])
        p, width, dim = block.shape  # (p, L, d)
        # One (Nq, p * L) product: the maximum then runs over contiguous memory.
        sim = torch.mm(q16, _tensor(block).view(p * width, dim).T)
        if bounds:
            stored = None if page_max is None else page_max[picked[block_rows]]
            max_abs[block_rows] = _max_abs(block) if stored is None else stored
        best[block_rows] = sim.view(-1, p, width).amax(dim=2).T.numpy()
    scores = _sum_rows(best.T.astype(np.float32), q_offsets)  # (Q, n)
    if not bounds:
        return scores, np.full(scores.shape, np.inf)
    terms = _token_terms(queries, exact_half)
    if not exact_half:  # a bound on the float32 values from their float16 rounding
        max_abs = (max_abs + _TINY16) / (1.0 - _U16)
    return scores, _bounds(best.T, max_abs, terms, q_offsets)


def maxsim_float32(
    query_vectors: np.ndarray,
    doc_vectors: np.ndarray,
    doc_offsets: np.ndarray,
    magnitude: np.ndarray,
    add: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One query's MaxSim in float32 products against n documents, with error bounds.

    ``query_vectors`` (Tq, d) float32; ``doc_vectors`` (N, d) float32 with (n + 1,)
    ``doc_offsets`` (every document has a vector); ``magnitude`` (n,): at least the largest
    ``|value|`` of each document's vectors. Returns (n,) float32 scores and (n,) float64 bounds:
    ``maxsim`` of the pair, and the exact pass's float64 score, are within the bound of the
    score. Per similarity both float32 kernels are within ``gamma_d ||q||_1 m`` (plus ``d``
    underflows of half a subnormal each) of the true product; ``_bounds`` adds the maxima's
    float32 sums. ``(1, n)`` float32 products cost ~1/6 of the exact pass's float64 ones,
    conversion included (24,779 MiniLM tokens against 10 query tokens: 7.7 against 50 ms).

    ``add`` (N, Tq) float32, PLAID's split of a residual codec's score: ``doc_vectors`` are
    the tokens' residuals and ``add`` their centroids' similarities (a float32 product of the
    query with the centroids); the documents are the float32 sums centroid + residual, and
    ``magnitude`` bounds centroids and residuals alike (their largest values summed). The
    bound then also holds the centroid product's error, the decoded sum's rounding
    (``2**-24 ||q||_1 m``) and the similarities' sum's (``unit``)."""
    queries = np.ascontiguousarray(query_vectors, dtype=np.float32)
    starts = np.asarray(doc_offsets[:-1], dtype=np.int64) - int(doc_offsets[0])
    docs = doc_vectors[int(doc_offsets[0]) : int(doc_offsets[-1])]
    sim = torch.mm(_tensor(docs), torch.from_numpy(queries).T).numpy()  # (N, Tq)
    if add is not None:
        sim += add
    best = np.maximum.reduceat(sim, starts, axis=0)  # (n, Tq)
    q_offsets = np.array([0, queries.shape[0]], dtype=np.int64)
    scores = _sum_rows(best.T, q_offsets)[0]
    dim = queries.shape[1]
    norm1 = np.abs(queries.astype(np.float64)).sum(axis=1)
    split = add is not None
    a = (2.0 * _gamma(dim) + (_U32 if split else 0.0)) * norm1
    # d products per kernel (3 with a split), each underflowing by half a subnormal at most
    c = np.full(queries.shape[0], (1.5 if split else 1.0) * dim * _TINY32)
    unit = _U32 if split else 0.0
    bounds = _bounds(best.T, np.asarray(magnitude, np.float64), (a, c), q_offsets, unit, 0.0)
    return scores.astype(np.float32), bounds[0]


def maxsim_int8(
    query_vectors: np.ndarray,
    query_offsets: np.ndarray,
    pages: Sequence[np.ndarray],
    scales: Sequence[np.ndarray],
    *,
    rows: np.ndarray | None = None,
    block_tokens: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The int8 fast pass: MaxSim of every query against int8-coded pages, nothing decoded,
    with error bounds (as ``maxsim_half``, whose ``scales`` argument calls this).

    Each query token is split into two int8 parts (``_Int8Query``), both are multiplied with a
    page's codes into int32 exactly (``torch._int_mm``), and each similarity is scaled by its
    page token's scale in float32 before the maximum. Needs ``int8_products_are_exact()`` and
    d <= ``INT8_MAX_DIM``.

    Parameters
    ----------
    query_vectors, query_offsets
        (Nq, d) float32 query tokens, concatenated, and (Q + 1,) int64 boundaries.
    pages, scales
        n (L_i, d) int8 code arrays and their n (L_i,) float32 per-token scales (L_i >= 1).
        Pages of at least ``_INT8_IN_PLACE_TOKENS`` tokens are multiplied where they lie, so
        views of memory-mapped storage are read by the products themselves, never copied.
    rows
        Score only these pages, in this order (all by default).
    block_tokens
        Page tokens per product for the shorter pages, copied into blocks (16,384 by default).

    Returns
    -------
    (Q, n) float32 fast scores and (Q, n) float64 bounds: ``maxsim`` of the same pair (on the
    float32 decoded values) is within the bound of the fast score.
    """
    q_offsets = np.asarray(query_offsets, dtype=np.int64)
    queries = np.ascontiguousarray(query_vectors, dtype=np.float32)
    if queries.shape[1] > INT8_MAX_DIM:
        raise ValueError(f"the int8 pass takes d <= {INT8_MAX_DIM}, got {queries.shape[1]}")
    if rows is not None:
        pages = [pages[i] for i in np.asarray(rows).tolist()]
        scales = [scales[i] for i in np.asarray(rows).tolist()]
    split = _Int8Query(queries)
    lengths = np.array([len(page) for page in pages], dtype=np.int64)
    best = np.empty((lengths.size, queries.shape[0]), dtype=np.float32)  # maxima, transposed
    max_abs = np.empty(lengths.size, dtype=np.float64)  # each page's largest scale, for now
    long = lengths >= _INT8_IN_PLACE_TOKENS
    for in_place, size in ((True, _INT8_IN_PLACE_BLOCK), (False, block_tokens)):
        chosen = np.flatnonzero(long == in_place)
        for block in _page_blocks(lengths[chosen], size or _HALF_BLOCK_TOKENS):
            picked = chosen[block].tolist()
            width = int(lengths[picked].max())
            scale = _stack_padded([scales[i] for i in picked], width)  # (p, L)
            if in_place:
                best[picked] = split.maxima_in_place([pages[i] for i in picked], scale)
            else:
                codes = _stack_padded([pages[i] for i in picked], width)  # (p, L, d)
                best[picked] = split.maxima(codes.reshape(-1, codes.shape[2]), scale)
            max_abs[picked] = scale.max(axis=1)
    scores = _sum_rows(best.T.copy(), q_offsets)  # (Q, n)
    # m = 127 times the largest scale bounds |codes * scale| and its float32 decoding.
    m = _CODE_MAX * (max_abs * (1.0 + _U32)) * (1.0 + 2.0 * _U32)
    return scores, _bounds(best.T, m, split.terms, q_offsets, 0.0, split.tiny)


def _stack_padded(arrays: list[np.ndarray], width: int) -> np.ndarray:
    """(p, width, ...) copy of p arrays of at most ``width`` rows, each shorter one padded by
    repeating its last row, which leaves every maximum over rows unchanged."""
    out = np.empty((len(arrays), width, *arrays[0].shape[1:]), dtype=arrays[0].dtype)
    for j, array in enumerate(arrays):
        out[j, : len(array)] = array
        out[j, len(array) :] = array[-1]
    return out


class _Int8Query:
    """Query tokens q (Nq, d) as ``unit * (128 h + l)``: h and l int8 (``codes``, (2 Nq, d), h
    first), ``unit`` = max|q| / (127 * 128) per token in float32, so that q is within
    ``unit / 2`` (about 3e-5 max|q|) per component and its products with int8 codes are exact
    in int32 (combined as 128 P_h + P_l, at most 2**28 for d = 128).

    ``terms`` (a_t, c_t) bound, per token, the distance of the fast similarity to the float32
    kernel's on a page of magnitude m by ``a_t m + c_t``: the split's error
    ``||q - unit (128 h + l)||_1 m``, float32 accumulation and decoding in the kernel
    (``(gamma_d + 2**-24) ||q||_1 m``), and the fast pass's three float32 roundings (int32 to
    float, the page token's scale, the query token's unit after the maximum:
    ``3.01 * 2**-24 unit ||128 h + l||_1 m``); ``tiny`` their underflow.
    """

    def __init__(self, queries: np.ndarray) -> None:
        q = queries.astype(np.float64)
        finite = np.asarray(np.isfinite(q).all(axis=1))
        q = np.where(finite[:, None], q, 0.0)
        top = np.abs(q).max(axis=1)
        unit = np.where(top > 0, top / (_CODE_MAX * 128.0), 1.0).astype(np.float32)
        unit64 = unit[:, None].astype(np.float64)
        high = np.clip(np.rint(q / (128.0 * unit64)), -_CODE_MAX, _CODE_MAX)
        low = np.clip(np.rint(q / unit64 - 128.0 * high), -_CODE_MAX, _CODE_MAX)
        self.codes = torch.from_numpy(np.concatenate([high, low]).astype(np.int8))
        self.unit = torch.from_numpy(unit)[:, None]  # (Nq, 1)
        combined = 128.0 * high + low
        norm1 = np.abs(q).sum(axis=1)
        a = np.abs(q - unit64 * combined).sum(axis=1) + (_gamma(q.shape[1]) + _U32) * norm1
        a += 3.01 * _U32 * unit * np.abs(combined).sum(axis=1)
        # A non-finite query token has no int8 split: its bound is infinite.
        a = np.where(finite, a, np.inf)
        self.terms = (a, np.zeros_like(a))
        self.tiny = 2.0 * _TINY32 * (1.0 + float(unit.max(initial=0.0)))
        # Query tokens in groups of _INT8_GROUP, h and l stacked: (2 g, d) per product.
        nq = q.shape[0]
        self.groups = [
            (a, b, torch.cat([self.codes[a:b], self.codes[nq + a : nq + b]]))
            for a, b in ((a, min(nq, a + _INT8_GROUP)) for a in range(0, nq, _INT8_GROUP))
        ]

    def maxima(self, codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """(p, Nq) float32 per-token maxima over p pages of L tokens copied into one block:
        ``codes`` (p L, d) int8, ``scale`` (p, L) float32 (padded past a page's end by
        repeating its last token)."""
        p, width = scale.shape
        tokens, page_scales = _tensor(codes), torch.from_numpy(scale)
        out = np.empty((p, self.unit.shape[0]), dtype=np.float32)
        for a, b, group in self.groups:
            exact = _int_product(group, tokens.T).view(2, b - a, p, width)  # exact int32
            # (128 h + l) . codes, in int32; then times each token's scale, in float32.
            sim = torch.add(exact[1], exact[0], alpha=128) * page_scales  # (k, p, L)
            # The query tokens' units are positive: they multiply the maxima instead.
            out[:, a:b] = (sim.amax(dim=2) * self.unit[a:b]).T.numpy()
        return out

    def maxima_in_place(self, pages: list[np.ndarray], scale: np.ndarray) -> np.ndarray:
        """As ``maxima``, but each page's (L_i, d) int8 codes (possibly a read-only memory map)
        are multiplied where they lie, into one int32 buffer for the block."""
        p, width = scale.shape
        page_scales, tokens = torch.from_numpy(scale).view(p, 1, width), _tensors(pages)
        out = np.empty((p, self.unit.shape[0]), dtype=np.float32)
        for a, b, group in self.groups:
            exact = torch.empty((p, 2 * (b - a), width), dtype=torch.int32)
            for j, page in enumerate(tokens):
                if page.shape[0] == width:
                    _int_product(group, page.T, out=exact[j])
                else:  # a shorter page: its last token repeated
                    exact[j, :, : page.shape[0]] = _int_product(group, page.T)
                    exact[j, :, page.shape[0] :] = exact[j, :, page.shape[0] - 1 : page.shape[0]]
            halves = exact.view(p, 2, b - a, width)
            sim = torch.add(halves[:, 1], halves[:, 0], alpha=128) * page_scales
            out[:, a:b] = (sim.amax(dim=2) * self.unit[a:b, 0]).numpy()
        return out


def may_reach_top(scores: np.ndarray, bounds: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
    """(Q, C) bool: the valid candidates whose exact score might be among their query's top k.

    With ``lam`` the lowest ``score - bound`` among a query's k best fast scores, k exact
    scores are >= lam, so a candidate with ``score + bound < lam`` scores strictly below the
    k-th exact score (and so does its fast score): it cannot enter, nor tie into, the top k.
    """
    low = np.where(valid, scores - bounds, np.nan)
    high = np.where(valid, scores + bounds, np.nan)
    keep = valid.copy()
    for q in range(scores.shape[0]):
        cols = np.flatnonzero(valid[q])
        if cols.size <= k:
            continue
        top = cols[np.argsort(-scores[q, cols], kind="stable")[:k]]
        keep[q, cols] = ~(high[q, cols] < np.min(low[q, top]))
    return keep
