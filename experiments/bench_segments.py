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
from typing import Any

import numpy as np

from experiments import render
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


def table_segments(*runs: dict[str, Any]) -> str:
    """Section 7c (cont. 3): Vaswani float16, 83 appended segments against one compacted,
    checkouts before and after alternating (``experiments.bench_segments``; runs given as
    before, after, before, after)."""
    rows = []
    for i, r in enumerate(runs):
        appended, compacted = r["indexes"]["appended"], r["indexes"]["compacted"]
        rows.append(
            [
                ("before" if i % 2 == 0 else "after") + f" ({r['commit']})",
                f"{appended['segments']} / {compacted['segments']}",
                f"{render.sig3(appended['p50_ms'])} / {render.sig3(compacted['p50_ms'])}",
                f"{r['appended_over_compacted']['p50']:.2f}",
                f"{appended['batch_queries_per_s']:.1f} / {compacted['batch_queries_per_s']:.1f}",
            ]
        )
    header = ["checkout", "segments", "p50 ms", "p50 appended / compacted"]
    return render.table(header + ["queries/s batched"], rows)


if __name__ == "__main__":
    main()
