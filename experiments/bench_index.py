"""Ingest throughput, peak memory and bytes per document of the on-disk index.

Run: ``python -m experiments.bench_index [--quick] [--sizes 10000 100000]``. Each size runs in a
fresh subprocess so its peak RSS is its own: ColPali-shaped synthetic pages (1,030 x 128) are
generated in batches and added through ``IndexWriter`` (no model), committing every 512 pages.
Generation time is excluded from the throughput. Writes ``results/bench_index.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from experiments.common import write_result
from experiments.synthetic import SyntheticCorpus
from index_store import Index, IndexConfig, create


def ingest(n_docs: int, dtype: str, directory: Path, commit_every: int = 512) -> dict[str, float]:
    corpus = SyntheticCorpus()
    busy = 0.0
    with create(directory, IndexConfig(dim=corpus.dim, dtype=dtype)) as writer:
        for start, pages in corpus.batches(n_docs, batch=commit_every):
            t0 = time.perf_counter()
            ids = [f"p{start + i}" for i in range(len(pages))]
            writer.add(
                ids,
                pages.reshape(-1, corpus.dim),
                offsets=np.arange(len(pages) + 1) * corpus.tokens_per_page,
            )
            writer.commit()
            busy += time.perf_counter() - t0
    stats = Index.open(directory, verify="none").stats()
    return {
        "documents": n_docs,
        "dtype": dtype,
        "docs_per_s": n_docs / busy,
        "ingest_seconds": busy,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "disk_bytes": stats["disk_bytes"],
        "bytes_per_document": stats["bytes_per_document"],
        "segments": stats["segments"],
    }


def _child(n_docs: int, dtype: str) -> None:
    directory = Path(tempfile.mkdtemp(prefix="latemm-bench-index-"))
    try:
        print(json.dumps(ingest(n_docs, dtype, directory / "idx")))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run_child(n_docs: int, dtype: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "experiments.bench_index", "--child", str(n_docs), dtype],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="sizes 2,000 and 10,000")
    parser.add_argument("--sizes", type=int, nargs="*", default=None)
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(int(args.child[0]), args.child[1])
        return
    sizes = args.sizes or ([2000, 10000] if args.quick else [10000, 100000])
    growth = []
    for n in sizes:
        row = run_child(n, "float16")
        growth.append(row)
        print(
            f"{n:>7} docs float16: {row['docs_per_s']:.0f} docs/s, peak RSS {row['peak_rss_mb']:.0f} MB, "
            f"{row['bytes_per_document'] / 1024:.0f} KiB/doc on disk"
        )
    storage = []
    for dtype in ("float32", "float16", "int8", "binary"):
        row = run_child(1000, dtype)
        storage.append(row)
        print(
            f"{dtype:>8}: {row['bytes_per_document'] / 1024:.1f} KiB/doc ({row['docs_per_s']:.0f} docs/s)"
        )
    rss = [r["peak_rss_mb"] for r in growth]
    write_result(
        "bench_index" + ("_quick" if args.quick else ""),
        {
            "growth": growth,
            "storage": storage,
            "peak_rss_ratio_largest_to_smallest": rss[-1] / rss[0],
            "size_ratio_largest_to_smallest": sizes[-1] / sizes[0],
        },
    )


if __name__ == "__main__":
    main()
