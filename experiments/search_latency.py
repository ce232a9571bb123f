"""Search latency of an existing index of ``experiments.synthetic`` pages, for A/B runs of two
checkouts over the same index (each checkout's code searches it; the index is only read).

Run: ``python -m experiments.search_latency --index DIR --pages N --name NAME [--candidates C
...]`` from each checkout in turn. Writes ``results/NAME.json``: per candidate count, the p50
of one query at a time (after one pass over every query, so the pages are in the page cache)
and queries/s with all queries in one call. The queries are ``bench_scale``'s (the first
``--queries`` of the seeded set for ``--pages`` pages).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from experiments.common import write_result
from experiments.synthetic import SyntheticCorpus
from index_store import Index
from latemm.retriever import Retriever


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--pages", type=int, required=True, help="pages the index holds")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--candidates", type=int, nargs="+", default=[384, 512])
    parser.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    queries, _ = SyntheticCorpus().queries(args.queries, args.pages)
    retriever = Retriever(Index.open(args.index, verify="none"))
    rows: list[dict[str, Any]] = []
    for c in args.candidates:
        for q in queries:  # warm: every page these queries touch is read once
            retriever.search_embeddings([q], k=10, candidates=c)
        latencies = []
        for q in queries:
            t0 = time.perf_counter()
            retriever.search_embeddings([q], k=10, candidates=c)
            latencies.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        retriever.search_embeddings(list(queries), k=10, candidates=c)
        batch_s = time.perf_counter() - t0
        rows.append(
            {
                "candidates": c,
                "p50_ms": float(np.median(latencies) * 1e3),
                "batch_queries_per_s": len(queries) / batch_s,
            }
        )
        print(
            f"  C={c}: p50 {rows[-1]['p50_ms']:.1f} ms, {rows[-1]['batch_queries_per_s']:.1f} q/s"
        )
    write_result(args.name, {"index": args.index, "pages": args.pages, "rows": rows})


if __name__ == "__main__":
    main()
