"""Rescoring latency against the number of segments: Vaswani (MiniLM token vectors, float16)
committed every ``--commit-every`` abstracts, as an index grows by small appends, against the
same pages compacted into one segment.

Run: ``python -m experiments.bench_segments --name NAME [--dir DIR]`` from each of two
checkouts in turn (an A/B: each checkout's code searches the same two indexes, built on the
first run and only read after). Writes ``results/NAME.json``: per index, ``bench_scale``'s
timing at ``--candidates`` (k = 10; after a warm-up pass over every query, the p50 and p95 of
one query at a time and queries/s with all 93 queries in one call), plus the ratio of the
many-segment index to the compacted one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from experiments.bench_scale import evaluate_latemm
from experiments.common import CACHE, vaswani_minilm, write_result
from index_store import Index, IndexConfig, create


def build(path: Path, data: dict[str, np.ndarray], commit_every: int, compact: bool) -> Index:
    """The Vaswani index at ``path``, built once (float16, the default first stage)."""
    if not (path / "manifest.json").is_file():
        ids, vectors, offsets = data["doc_ids"], data["doc_vectors"], data["doc_offsets"]
        with create(path, IndexConfig(dim=vectors.shape[1])) as writer:
            for start in range(0, ids.size, commit_every):
                stop = min(ids.size, start + commit_every)
                sets = [vectors[offsets[i] : offsets[i + 1]] for i in range(start, stop)]
                writer.add([str(d) for d in ids[start:stop]], sets)
                writer.commit()
            if compact:
                writer.compact()
    return Index.open(path, verify="none")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--dir", default=str(CACHE / "bench_segments"))
    parser.add_argument("--commit-every", type=int, default=128)
    parser.add_argument("--candidates", type=int, default=512)
    args = parser.parse_args(argv)
    data = vaswani_minilm()
    root = Path(args.dir)
    flat, offsets = data["query_vectors"].astype(np.float32), data["query_offsets"]
    queries = [flat[offsets[q] : offsets[q + 1]] for q in range(offsets.size - 1)]
    rows = {}
    for label, compact in (("appended", False), ("compacted", True)):
        path = root / f"vaswani-{label}-{args.commit_every}"
        index = build(path, data, args.commit_every, compact)
        # bench_scale's timing: a warm pass, one query at a time, then all in one batch.
        (row,) = evaluate_latemm(
            index, queries, None, [args.candidates], batch_size=len(queries), warm=True
        )
        rows[label] = {"segments": len(index.segments), **row}
    ratio = {
        "p50": rows["appended"]["p50_ms"] / rows["compacted"]["p50_ms"],
        "batched": rows["compacted"]["batch_queries_per_s"]
        / rows["appended"]["batch_queries_per_s"],
    }
    print(f"appended / compacted: p50 {ratio['p50']:.2f}x, batched {ratio['batched']:.2f}x")
    write_result(
        args.name,
        {
            "commit_every": args.commit_every,
            "candidates": args.candidates,
            "indexes": rows,
            "appended_over_compacted": ratio,
        },
    )


if __name__ == "__main__":
    main()
