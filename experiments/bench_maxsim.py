"""Rescoring speed: the float16 MaxSim pass against the same-shape matrix-product limit, the
float32 kernel, a plain einsum and maxsim-cpu (PyPI); then the whole rescore path on an index
on disk, old against new, all in one run on the same data.

Run: ``python -m experiments.bench_maxsim [--pages 256] [--queries 8] [--threads 2]``.
Writes ``results/bench_maxsim.json`` (``--quick``: ``bench_maxsim_quick.json``; other thread
counts than 2: ``bench_maxsim_threads<N>.json``).

Data: seeded ColPali-shaped synthetic pages (``experiments.synthetic``, 1,030 x 128 unit
vectors) and 28-token queries aimed at some of them. FLOPs count the similarity product only
(2 * query tokens * page tokens * 128), the same for every method, so GFLOP/s compare
directly. The limit of a dtype is a bare product of the same shapes in that dtype (all pages'
tokens x all query tokens, output in that dtype, no maximum). Methods are timed round-robin
and each keeps its best round, because the machine is shared (the load average is recorded).

Kernel section: ``half_pass`` is ``latemm.ranking.scoring.maxsim_half`` (float16 products, per-page
maxima in float16, and its error bounds), ``float32_kernel`` is ``latemm.ranking.scoring.maxsim`` on
the float16 pages (widened to float32 block by block), called one query at a time as rescoring did.
The same pages as int8 codes: ``int8_pass`` multiplies the codes in place (the query split into
two int8 parts, two exact int8 products, each similarity scaled in float32), against
``int8_decoded_half_pass``, the previous path (decode to float16, then the float16 pass); the
int8 limit is one bare int8 product of the same shape (the pass makes two).
Rescore section: an index of ``--index-pages`` float16 pages; each query's first ``C``
candidates from the index's own first stage; ``old`` is the previous ``rescore`` (every
candidate decoded to float32, copied per query, float32 kernel), ``new`` is
``latemm.retrieval.retriever.rescore(k=10)`` (float16 pass, then the float32 kernel on the
candidates that may reach the top 10). Both top 10s are checked equal (ids; scores to float32
rounding, as the exact pass now multiplies in float64).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from experiments import render

THREADS_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
QUERY_TOKENS = 28
TOP_K = 10


def _best_of(methods: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Best seconds of each method over ``rounds`` round-robin rounds (after one warm-up)."""
    for fn in methods.values():
        fn()
    best = {name: float("inf") for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _limits(
    docs16: np.ndarray, flat_q: np.ndarray, codes: np.ndarray
) -> dict[str, Callable[[], Any]]:
    import torch

    out: dict[str, Callable[[], Any]] = {}
    q8 = torch.from_numpy(np.clip(np.rint(flat_q * 127), -127, 127).astype(np.int8))
    out["limit_int8"] = partial(torch._int_mm, q8, torch.from_numpy(codes).T)
    for name, dtype in (
        ("float32", torch.float32),
        ("float16", torch.float16),
        ("bfloat16", torch.bfloat16),
    ):
        a = torch.from_numpy(docs16).to(dtype)  # (N, d)
        b = torch.from_numpy(flat_q).to(dtype).T.contiguous()  # (d, Nq)
        out[f"limit_{name}"] = partial(torch.mm, a, b)
    return out


def _kernel_methods(pages: np.ndarray, queries: np.ndarray) -> dict[str, Callable[[], Any]]:
    """name -> callable returning (Q, n) scores (limits return None)."""
    import torch

    from index_store import codecs
    from latemm.ranking.scoring import maxsim, maxsim_half, maxsim_pairs

    n, tokens, dim = pages.shape
    docs16 = pages.reshape(-1, dim).astype(np.float16)
    codes, scales = codecs.encode(pages.reshape(-1, dim), "int8")
    offsets = np.arange(n + 1, dtype=np.int64) * tokens
    flat_q = queries.reshape(-1, dim)
    q_offsets = np.arange(len(queries) + 1, dtype=np.int64) * queries.shape[1]
    wide = torch.from_numpy(docs16).float().view(n, tokens, dim)
    q_t = torch.from_numpy(queries)
    pages32 = wide.numpy()
    magnitudes = codecs.page_magnitudes(docs16, offsets)  # as a float16 index stores them
    methods: dict[str, Callable[[], Any]] = {
        "half_pass": lambda: maxsim_half(flat_q, q_offsets, docs16, offsets, page_max=magnitudes)[
            0
        ],
        # the same without stored magnitudes (segments written before they were): read them
        "half_pass_reading_magnitudes": lambda: maxsim_half(flat_q, q_offsets, docs16, offsets)[0],
        # int8 storage: codes multiplied in place, against decoding them to float16 first
        "int8_pass": lambda: maxsim_half(flat_q, q_offsets, codes, offsets, scales=scales)[0],
        "int8_decoded_half_pass": lambda: maxsim_half(
            flat_q,
            q_offsets,
            codecs.decode(codes, scales, "int8", dim, out=np.float16),
            offsets,
            exact_half=False,
        )[0],
        "float32_kernel": lambda: np.stack([maxsim_pairs(q, docs16, offsets) for q in queries]),
        "float32_kernel_batched": lambda: maxsim(flat_q, q_offsets, docs16, offsets),
        "einsum_float32": lambda: (
            torch.einsum("qtd,nud->qntu", q_t, wide).amax(dim=3).sum(dim=2).numpy()
        ),
    }
    try:
        import maxsim_cpu

        methods["maxsim_cpu_float32"] = lambda: np.stack(
            [maxsim_cpu.maxsim_scores(q, pages32) for q in queries]
        )
    except ImportError:
        pass
    limits = {
        name: (lambda fn=fn: (fn(), None)[1]) for name, fn in _limits(docs16, flat_q, codes).items()
    }
    return {**methods, **limits}


def run_kernel(corpus: Any, n_pages: int, n_queries: int, rounds: int) -> dict[str, Any]:
    """One shape: ``n_queries`` queries, each against the same ``n_pages`` pages."""
    from latemm.ranking.scoring import maxsim_half

    pages = corpus.pages(0, n_pages)
    queries, _ = corpus.queries(n_queries, n_pages)
    methods = _kernel_methods(pages, queries)
    stored = pages.astype(np.float16).astype(np.float64)
    q64 = queries.astype(np.float64)
    reference = np.stack([(stored @ q.T).max(axis=1).sum(axis=1) for q in q64])  # (Q, n)
    out: dict[str, Any] = {}
    for name, fn in methods.items():
        got = fn()
        if got is not None:
            out[name] = {"max_abs_error": float(np.max(np.abs(got - reference)))}
    flat_q = queries.reshape(-1, queries.shape[2])
    q_offsets = np.arange(n_queries + 1) * QUERY_TOKENS
    docs16 = pages.reshape(-1, pages.shape[2]).astype(np.float16)
    _, bound = maxsim_half(flat_q, q_offsets, docs16, np.arange(n_pages + 1) * pages.shape[1])
    out["half_pass"]["max_bound"] = float(bound.max())
    flops = 2.0 * n_queries * QUERY_TOKENS * pages.shape[1] * pages.shape[2] * n_pages
    for name, seconds in _best_of(methods, rounds).items():
        entry = out.setdefault(name, {})
        entry.update(seconds=seconds, gflops=flops / seconds / 1e9)
    for name, entry in out.items():
        dtype = "float16" if name.startswith("half_pass") or name == "float32_kernel" else "float32"
        dtype = "int8" if name == "int8_pass" else "float16" if name.startswith("int8") else dtype
        if name.startswith("limit_"):
            continue
        entry["limit"] = dtype
        entry["fraction_of_limit"] = entry["gflops"] / out[f"limit_{dtype}"]["gflops"]
    return {"pages": n_pages, "queries": n_queries, "gflop": flops / 1e9, "methods": out}


def _old_rescore(index: Any, flat: np.ndarray, offsets: np.ndarray, cands: Any) -> np.ndarray:
    """``latemm.retrieval.retriever.rescore`` as it was before the float16 pass (commit ced3790)."""
    from latemm.ranking.scoring import maxsim_pairs
    from latemm.retrieval.retriever import take_sets

    out = np.full(cands.segments.shape, np.nan, dtype=np.float32)
    for s in np.unique(cands.segments[cands.valid]):
        in_seg = cands.segments == s  # (Q, C)
        union, inverse = np.unique(cands.rows[in_seg], return_inverse=True)
        vectors, set_offsets = index.vectors(int(s), union)
        position = np.full(cands.rows.shape, -1, dtype=np.int64)
        position[in_seg] = inverse
        for q in np.flatnonzero(in_seg.any(axis=1)):
            cols = np.flatnonzero(in_seg[q])
            docs, doc_offsets = take_sets(vectors, set_offsets, position[q, cols])
            query = flat[offsets[q] : offsets[q + 1]]
            out[q, cols] = maxsim_pairs(query, docs, doc_offsets)
    return out


def build_index(corpus: Any, n_pages: int, workdir: Path) -> Path:
    from index_store import IndexConfig, create

    path = workdir / "idx"
    with create(path, IndexConfig(dim=corpus.dim, dtype="float16")) as writer:
        for start, pages in corpus.batches(n_pages):
            ids = [f"p{start + i}" for i in range(len(pages))]
            offsets = np.arange(len(pages) + 1) * corpus.tokens_per_page
            writer.add(ids, pages.reshape(-1, corpus.dim), offsets=offsets)
        writer.commit()
    return path


def _top(index: Any, cands: Any, scores: np.ndarray) -> tuple[list, np.ndarray]:
    from latemm.retrieval.retriever import doc_ids_of, gather, top_k

    ids = doc_ids_of(index, cands)
    picks = top_k(ids, scores, TOP_K)
    return gather(ids, picks, fill=None).tolist(), gather(scores, picks)


def run_rescore(index: Any, queries: np.ndarray, n_cand: int, rounds: int) -> dict[str, Any]:
    """Old and new rescore of ``len(queries)`` queries, each against its first ``n_cand``, and
    the float16 limit of the same work (one bare product per query of its candidates' tokens
    x its tokens), timed round-robin."""
    import torch

    from latemm.ranking.scoring import maxsim_half, may_reach_top
    from latemm.retrieval.retriever import Retriever, rescore

    retriever = Retriever(index)
    flat = queries.reshape(-1, queries.shape[2])
    offsets = np.arange(len(queries) + 1, dtype=np.int64) * QUERY_TOKENS
    cands = retriever.candidates(flat, offsets, n_cand, retriever._allowed(None))
    old = _old_rescore(index, flat, offsets, cands)
    new = rescore(index, flat, offsets, cands, k=TOP_K)
    # The new exact pass multiplies in float64 and rounds once: scores within float32 ulps.
    assert _top(index, cands, old)[0] == _top(index, cands, new)[0]
    np.testing.assert_allclose(_top(index, cands, old)[1], _top(index, cands, new)[1], rtol=1e-6)
    vectors, set_offsets = index.vectors(0, cands.rows[0], dtype=np.float16)
    fast, bound = maxsim_half(flat[:QUERY_TOKENS], offsets[:2], vectors, set_offsets)
    pages = torch.from_numpy(np.array(index.half_vectors(0)[0][: n_cand * 1030]))
    tokens = torch.from_numpy(flat[:QUERY_TOKENS].astype(np.float16)).T.contiguous()
    best = _best_of(
        {
            "old": lambda: _old_rescore(index, flat, offsets, cands),
            "new": lambda: rescore(index, flat, offsets, cands, k=TOP_K),
            "limit_float16": lambda: [pages @ tokens for _ in range(len(queries))],
        },
        rounds,
    )
    flops = 2.0 * int(cands.valid.sum()) * QUERY_TOKENS * index.config.dim * 1030
    entry: dict[str, Any] = {"candidates": n_cand, "queries": len(queries)}
    entry["exact_share_query0"] = float(may_reach_top(fast, bound, cands.valid[:1], TOP_K).mean())
    entry["limit_float16_gflops"] = flops / best["limit_float16"] / 1e9
    for name in ("old", "new"):
        seconds = best[name]
        entry[name] = {
            "ms_per_query": 1e3 * seconds / len(queries),
            "gflops": flops / seconds / 1e9,
            "fraction_of_limit": best["limit_float16"] / seconds,
        }
    entry["speedup"] = best["old"] / best["new"]
    return entry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=256, help="pages in the kernel section")
    parser.add_argument("--queries", type=int, default=8, help="queries in a batch")
    parser.add_argument("--index-pages", type=int, default=1024)
    parser.add_argument("--candidates", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--quick", action="store_true", help="small shapes, 2 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.pages, args.index_pages, args.candidates, args.rounds = 32, 96, [64], 2
    for name in THREADS_ENV:  # before torch and maxsim-cpu's OpenMP start
        os.environ[name] = str(args.threads)
    import fde  # noqa: F401, I001  (sets libgomp's wait before torch loads it, as latemm does)
    import torch

    from experiments.common import write_result
    from experiments.synthetic import SyntheticCorpus
    from index_store import Index

    torch.set_num_threads(args.threads)
    corpus = SyntheticCorpus(query_tokens=QUERY_TOKENS)
    load = [os.getloadavg()]
    kernel = [run_kernel(corpus, args.pages, q, args.rounds) for q in (1, args.queries)]
    workdir = Path(tempfile.mkdtemp(prefix="bench-maxsim-", dir=args.workdir))
    try:
        index = Index.open(build_index(corpus, args.index_pages, workdir))
        queries, _ = corpus.queries(args.queries, args.index_pages)
        rescoring = [
            run_rescore(index, queries[:q], c, args.rounds)
            for c in args.candidates
            for q in (1, args.queries)
        ]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    load.append(os.getloadavg())
    payload = {"threads": args.threads, "rounds": args.rounds, "load_average": load}
    payload.update(kernel=kernel, rescore=rescoring)
    _print(kernel, rescoring)
    name = "bench_maxsim_quick" if args.quick else "bench_maxsim"
    write_result(name if args.threads == 2 else f"{name}_threads{args.threads}", payload)


def _print(kernel: list[dict[str, Any]], rescoring: list[dict[str, Any]]) -> None:
    for case in kernel:
        print(f"\n{case['queries']} x {QUERY_TOKENS}-token queries vs {case['pages']} pages")
        for name, e in case["methods"].items():
            frac = f"  {e['fraction_of_limit']:6.1%} of {e['limit']}" if "limit" in e else ""
            err = f"  err {e['max_abs_error']:.1e}" if "max_abs_error" in e else ""
            print(f"  {name:<24} {e['gflops']:7.1f} GFLOP/s{frac}{err}")
    print("\nrescore (index on disk): ms per query, old -> new")
    for e in rescoring:
        print(
            f"  C={e['candidates']:<4} Q={e['queries']}: {e['old']['ms_per_query']:8.1f} -> "
            f"{e['new']['ms_per_query']:7.1f} ms  x{e['speedup']:.1f}  "
            f"new {e['new']['fraction_of_limit']:.0%} of float16 limit, "
            f"exact share {e['exact_share_query0']:.1%}"
        )


def table_maxsim_kernel(r: dict[str, Any]) -> str:
    """Section 7c: each MaxSim method's GFLOP/s for 1 and 8 queries against its dtype's limit."""
    one, batch = r["kernel"][0]["methods"], r["kernel"][1]["methods"]
    rows = []
    for name, x in one.items():
        y = batch[name]
        if "limit" not in x:  # a bare product: the limit the others are measured against
            rows.append([name, f"{x['gflops']:.1f}", "-", f"{y['gflops']:.1f}", "-", "-"])
            continue
        rows.append(
            [
                name,
                f"{x['gflops']:.1f}",
                f"{x['fraction_of_limit']:.0%} of {x['limit']}",
                f"{y['gflops']:.1f}",
                f"{y['fraction_of_limit']:.0%} of {y['limit']}",
                f"{y['max_abs_error']:.1e}",
            ]
        )
    header = ["method", "1 query: GFLOP/s", "of limit", "8 queries: GFLOP/s", "of limit"]
    return render.table([*header, "max abs. error (8 q.)"], rows)


def table_maxsim_rescore(r: dict[str, Any]) -> str:
    """Section 7c: the whole rescore path, old against new, per candidate count and batch."""
    rows = [
        [
            x["candidates"],
            x["queries"],
            f"{x['old']['ms_per_query']:.1f}",
            f"{x['new']['ms_per_query']:.1f}",
            f"{x['speedup']:.1f}x",
            f"{x['new']['gflops']:.1f}",
            f"{x['new']['fraction_of_limit']:.0%}",
            f"{x['exact_share_query0']:.1%}",
        ]
        for x in r["rescore"]
    ]
    header = ["C", "queries", "old ms/query", "new ms/query", "speedup", "new GFLOP/s"]
    return render.table([*header, "new, of float16 limit", "rescored in float32 (query 0)"], rows)


if __name__ == "__main__":
    main()
