"""Latency of a fused search: a ColPali-shaped MaxSim field (``experiments.synthetic`` pages)
fused with a BM25 field over the pages' text, one query at a time, for A/B runs of two
checkouts over the same index.

Run: ``python -m experiments.bench_fusion_latency --name NAME [--pages 2000] [--dir DIR]`` from
each checkout in turn. The first run writes the corpus (Parquet, an ``emb`` column of float16
pages and a ``text`` column of words drawn per page topic) and builds the index with
``index_fields`` (``img=embedding:emb``, ``text=bm25``); later runs only read it. Writes
``results/NAME.json``: per fusion and k, the p50 and p95 of ``FieldRetriever.search`` over
``--queries`` queries (after one warm-up pass), every candidate count the CLI default.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from experiments import render
from experiments.common import CACHE, write_result
from experiments.synthetic import SyntheticCorpus
from latemm.index.fields import index_fields
from latemm.retrieval.field_search import FieldRetriever

WORDS = 600  # vocabulary: each concept has its words, so text and image agree on topics


def _words(topics: np.ndarray, rng: np.random.Generator, n: int) -> str:
    """``n`` words drawn from the words of ``topics`` (seven per concept)."""
    picks = zip(rng.choice(topics, n), rng.integers(0, 7, n), strict=True)
    return " ".join(f"w{(int(t) * 7 + int(j)) % WORDS}" for t, j in picks)


def _pages(batch: np.ndarray) -> pa.Array:
    """(n, T, d) pages as list<fixed_size_list<float16>>, built from the buffer."""
    n, tokens, dim = batch.shape
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(batch.astype(np.float16).ravel()), dim)
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * tokens), vectors)


def build(root: Path, pages: int) -> Path:
    """The fields index under ``root``, written once."""
    index = root / f"fusion-{pages}"
    if (index / "fields.json").is_file():
        return index
    corpus = SyntheticCorpus()
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"fusion-{pages}.parquet"
    rng = np.random.default_rng(0)
    writer = None
    for first, batch in corpus.batches(pages, batch=250):
        ids = [f"p{first + i:07d}" for i in range(len(batch))]
        texts = [_words(corpus.page_topics(first + i), rng, 60) for i in range(len(batch))]
        table = pa.table({"doc_id": ids, "text": texts, "emb": _pages(batch)})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    assert writer is not None
    writer.close()
    index_fields(path, index, {"img": "embedding:emb", "text": "bm25"}, progress=False)
    path.unlink()
    return index


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--dir", default=str(CACHE / "bench_fusion_latency"))
    args = parser.parse_args(argv)
    index = build(Path(args.dir), args.pages)
    corpus = SyntheticCorpus()
    queries, targets = corpus.queries(args.queries, args.pages)
    rng = np.random.default_rng(1)
    texts = [_words(corpus.page_topics(int(t)), rng, 4) for t in targets]
    rows = []
    for fusion in ("rrf", "weighted"):
        retriever = FieldRetriever(index, fusion=fusion)
        for k in (10, 100):

            def one(q: int, k: int = k, retriever: FieldRetriever = retriever) -> None:
                retriever.search([texts[q]], k=k, query_vectors={"img": [queries[q]]})

            for q in range(args.queries):
                one(q)
            times = []
            for q in range(args.queries):
                start = time.perf_counter()
                one(q)
                times.append(1e3 * (time.perf_counter() - start))
            row = {
                "fusion": fusion,
                "k": k,
                "p50_ms": float(np.percentile(times, 50)),
                "p95_ms": float(np.percentile(times, 95)),
            }
            print(row, flush=True)
            rows.append(row)
    write_result(args.name, {"pages": args.pages, "queries": args.queries, "rows": rows})


def table_fusion_latency(*runs: dict[str, Any]) -> str:
    """Section 4b (cont.): one fused query (a ColPali-shaped MaxSim field and BM25), checkouts
    before and after alternating (``experiments.bench_fusion_latency``; runs given as before,
    after, before, after)."""
    rows = []
    for i, x in enumerate(runs[0]["rows"]):
        p50 = [r["rows"][i]["p50_ms"] for r in runs]
        before, after = p50[0::2], p50[1::2]
        rows.append(
            [
                x["fusion"],
                x["k"],
                " / ".join(render.sig3(v) for v in before),
                " / ".join(render.sig3(v) for v in after),
                f"{statistics.mean(before) / statistics.mean(after):.1f}x",
            ]
        )
    return render.table(["fusion", "k", "p50 ms before", "p50 ms after", "speed-up (means)"], rows)


if __name__ == "__main__":
    main()
