"""Opening a 3-shard fields collection's BM25 field: re-indexing every shard's texts in memory
(``BM25Index.union``, before) against rescoring each shard's saved matrix with the merged
collection statistics (``BM25Index.merged``, after), in the same run on Vaswani (11,429
abstracts). Also checks that both give the same scores, bit for bit, for the 93 queries.

    python -m experiments.bench_bm25_open [--repeats 5] [--out experiments/results/bench_bm25_open.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from experiments.common import read_trec_docs, read_trec_topics
from latemm.index.bm25 import BM25Index
from latemm.index.field_shards import index_field_shards
from latemm.retrieval.field_search import FieldRetriever
from tests.conftest import shared_data_dir


def _open(path: Path) -> tuple[float, FieldRetriever]:
    start = time.perf_counter()
    retriever = FieldRetriever(path, fields=["b"])
    return time.perf_counter() - start, retriever


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=Path("experiments/results/bench_bm25_open.json")
    )
    args = parser.parse_args()
    data = shared_data_dir() / "vaswani"
    ids, texts = read_trec_docs(data / "doc-text.trec")
    _, queries = read_trec_topics(data / "query-text.trec")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "vaswani.parquet"
        pq.write_table(pa.table({"doc_id": ids, "text": texts}), corpus)
        path = Path(tmp) / "sharded"
        index_field_shards(corpus, path, {"b": "bm25"}, num_shards=args.shards, progress=False)
        times: dict[str, list[float]] = {"union": [], "merged": []}
        scores = {}
        for _ in range(args.repeats + 1):  # the first round warms up and is not counted
            for name in ("union", "merged"):
                with mock.patch.object(BM25Index, "merged", getattr(BM25Index, name)):
                    seconds, retriever = _open(path)
                times[name].append(seconds)
                part = retriever.parts["b"][0]
                order = np.argsort(part.doc_ids.astype(str))
                scores[name] = part.scores(queries)[:, order]
                kind = type(part).__name__
        result = {
            "corpus": "vaswani",
            "documents": len(ids),
            "shards": args.shards,
            "repeats": args.repeats,
            "open_seconds_median": {k: statistics.median(v[1:]) for k, v in times.items()},
            "open_seconds": {k: v[1:] for k, v in times.items()},
            "speedup": statistics.median(times["union"][1:])
            / statistics.median(times["merged"][1:]),
            "scores_identical": bool(np.array_equal(scores["union"], scores["merged"])),
            "merged_part": kind,
            "note": "2 cores shared by 5 sessions: timings on a loaded machine",
        }
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
