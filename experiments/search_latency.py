"""Search latency of an existing index of ``experiments.synthetic`` pages, for A/B runs of two
checkouts over the same index (each checkout's code searches it; the index is only read).

Run: ``python -m experiments.search_latency --index DIR --pages N --name NAME [--candidates C
...]`` from each checkout in turn. Writes ``results/NAME.json``: per candidate count, the p50
and p95 of one query at a time (after one pass over every query at that count, so the pages
are in the page cache) and queries/s with all queries in one call, as ``bench_scale``
measures them. The queries are ``bench_scale``'s (the first
``--queries`` of the seeded set for ``--pages`` pages).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from experiments import render
from experiments.bench_scale import evaluate_latemm
from experiments.common import write_result
from experiments.synthetic import SyntheticCorpus
from index_store import Index


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--pages", type=int, required=True, help="pages the index holds")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--candidates", type=int, nargs="+", default=[384, 512])
    parser.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    queries, _ = SyntheticCorpus().queries(args.queries, args.pages)
    index = Index.open(args.index, verify="none")
    # bench_scale's search phase without recall, warmed at each count: every query searched
    # once, then one query at a time, then all in one batch.
    rows = [
        row
        for c in args.candidates
        for row in evaluate_latemm(index, queries, None, [c], batch_size=len(queries), warm=True)
    ]
    write_result(args.name, {"index": args.index, "pages": args.pages, "rows": rows})


def table_ab_refine(*runs: dict[str, Any]) -> str:
    """Search latency of one index from two checkouts, alternating (``experiments.search_latency``;
    runs given as before, after, before, after): 5c (cont.) on the 100k refine index, 7c (cont.
    3) on a 10k one."""
    rows = []
    for i, c in enumerate(x["candidates"] for x in runs[0]["rows"]):
        p50 = [r["rows"][i]["p50_ms"] for r in runs]
        qps = [r["rows"][i]["batch_queries_per_s"] for r in runs]
        before, after = p50[0::2], p50[1::2]
        rows.append(
            [
                c,
                " / ".join(render.sig3(v) for v in before),
                " / ".join(render.sig3(v) for v in after),
                f"{statistics.mean(after) / statistics.mean(before):.2f}",
                " / ".join(f"{v:.1f}" for v in qps[0::2]),
                " / ".join(f"{v:.1f}" for v in qps[1::2]),
            ]
        )
    header = ["C", "p50 ms before", "p50 ms after", "after / before (means)"]
    return render.table(header + ["queries/s batched before", "after"], rows)


if __name__ == "__main__":
    main()
