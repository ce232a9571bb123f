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


if __name__ == "__main__":
    main()
