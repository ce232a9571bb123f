"""Issue 29's index codebook measured: a ``latemm index --dtype res4`` build of Vaswani's MiniLM
token vectors (``bench_shapes``' short corpus, committed every 512 abstracts as the CLI does)
by the checkout on ``PYTHONPATH``: bytes per abstract (every file), codebook files, build
seconds, recall@10 against exact float32 MaxSim and warm search ms per query.

Run once per checkout (e.g. ``PYTHONPATH=/work/main`` for per-segment codebooks, then this
branch), each printing one JSON line::

    PYTHONPATH=$PWD python -m experiments.index_codebook /tmp/idx --queries 465

``--threshold N`` sets ``index_store.store.INDEX_CODEBOOK_VECTORS`` in the build (this branch
only). ``--no-build`` measures an index built before. The exact top 10 are cached beside the
index (``exact-<queries>.json``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

SHAPES = Path("/work/cache/bench_shapes/short")


def build(index: Path, corpus: Path, threshold: int | None) -> float:
    """Seconds of a CLI build of ``corpus`` into a new ``index`` (res4, default commits)."""
    shutil.rmtree(index, ignore_errors=True)
    args = ["index", str(corpus), "--index", str(index), "--dtype", "res4", "--quiet"]
    patch = (
        f"import index_store.store as s; s.INDEX_CODEBOOK_VECTORS = {threshold}; "
        if threshold is not None
        else ""
    )
    code = f"{patch}from latemm.cli import main; raise SystemExit(main({args!r}))"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def exact_top10(corpus: Path, queries: list[np.ndarray], cache: Path) -> list[list[str]]:
    """Each query's 10 best abstracts by exact float32 MaxSim (cached in ``cache``)."""
    from latemm.ranking.scoring import maxsim

    if cache.is_file():
        return list(json.loads(cache.read_text()))
    table = pq.read_table(corpus)
    ids = table.column("doc_id").to_pylist()
    docs = [np.asarray(e, dtype=np.float32) for e in table.column("embedding").to_pylist()]
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    q_offsets = np.concatenate([[0], np.cumsum([len(q) for q in queries])])
    scores = np.asarray(maxsim(np.concatenate(queries), q_offsets, np.concatenate(docs), offsets))
    top = [[ids[j] for j in np.argsort(-row, kind="stable")[:10]] for row in scores]
    cache.write_text(json.dumps(top))
    return top


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("index", type=Path)
    parser.add_argument("--queries", type=int, default=465)
    parser.add_argument("--threshold", type=int, default=None)
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args(argv)
    from index_store import Index
    from latemm.retrieval.retriever import Retriever

    corpus = SHAPES / "corpus.parquet"
    seconds = None if args.no_build else build(args.index, corpus, args.threshold)
    files = [p for p in args.index.rglob("*") if p.is_file() and p.name != "LOCK"]
    books = [p for p in files if p.name == "codebook.npy" or p.name.startswith("vectors-codebook")]
    index = Index.open(args.index)
    table = pq.read_table(SHAPES / "q.parquet").slice(0, args.queries)
    queries = [np.asarray(e, dtype=np.float32) for e in table.column("embedding").to_pylist()]
    cache = args.index.parent / f"exact-{args.queries}.json"
    exact = exact_top10(corpus, queries, cache)
    retriever = Retriever(index)
    retriever.search_embeddings(queries[:20], k=10)  # warm: decoding tables, first stage
    times, found = [], []
    for _ in range(2):
        start = time.perf_counter()
        found = [list(r) for r in retriever.search_embeddings(queries, k=10).doc_ids]
        times.append((time.perf_counter() - start) / len(queries))
    recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)])
    total = sum(p.stat().st_size for p in files)
    record = {
        "documents": len(index),
        "segments": len(index.segments),
        "dtypes": sorted({s.dtype for s in index.segments}),
        "kib_per_doc_all_files": round(total / len(index) / 1024, 3),
        "codebook_files": len(books),
        "codebook_bytes": sum(p.stat().st_size for p in books),
        "build_s": None if seconds is None else round(seconds, 1),
        "search_ms_per_query_warm": round(1000 * min(times), 1),
        "recall@10_vs_exact": round(float(recall), 4),
        "queries": len(queries),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
