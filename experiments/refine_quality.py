"""Compact codes with a refine copy (``IndexConfig.refine``) against float16 storage (issue #14
goal 1): bytes per page, recall@10 against the exact float32 top-10, nDCG@10 on Vaswani.

Run: ``python -m experiments.refine_quality [--pages 3000] [--queries 50]``. Writes
``results/refine_quality.json``.

Every storage is a real index built through the API and searched by ``Retriever`` with the
default candidates (512): float16 (the default), pq1 alone (16 B/token), and pq1 / pq2 with an
int8 refine copy at several depths (each query's best ``depth`` candidates on the codes rescored
from the copy). Bytes are every file the manifest lists, split into the compact part a search
reads for every candidate (codes, FDE codes, offsets, metadata) and the refine copy, which it
reads for ``depth`` pages per query only.

Data: Vaswani (11,429 abstracts embedded with the packaged MiniLM, 93 queries with qrels) and
ColPali-shaped synthetic pages (``experiments.synthetic``, 1,030 x 128), one index per storage.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from experiments import render
from experiments.common import CACHE, shared_data_dir, vaswani_minilm, write_result
from experiments.storage_quality import disk_bytes
from experiments.synthetic import SyntheticCorpus
from index_store import Index, IndexConfig, create
from latemm.ranking.scoring import maxsim
from latemm.retrieval.retriever import Retriever
from latemm.runs.metrics import evaluate, load_qrels

# (label, dtype, refine)
STORAGES = [
    ("float16", "float16", None),
    ("pq1", "pq1", None),
    ("pq1 + int8 copy", "pq1", "int8"),
    ("pq2 + int8 copy", "pq2", "int8"),
]
DEPTHS = [16, 32, 64, 128]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=3000, help="ColPali-shaped pages")
    parser.add_argument("--queries", type=int, default=50, help="ColPali-shaped queries")
    parser.add_argument("--no-vaswani", action="store_true")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"depths": DEPTHS}
    result["colpali"] = colpali(args.pages, args.queries)
    write_result("refine_quality", result)
    if not args.no_vaswani:
        result["vaswani"] = vaswani()
        write_result("refine_quality", result)


def _bytes(path: Path, n_docs: int) -> dict[str, float]:
    """Bytes per document of every file the manifest lists (and the manifest), and of the
    refine copy among them."""
    copy = Index.open(path).stats()["refine_bytes"]
    return {"bytes_per_doc": disk_bytes(path) / n_docs, "copy_bytes_per_doc": copy / n_docs}


def _searches(
    path: Path,
    refine: str | None,
    q_flat: np.ndarray,
    q_offsets: np.ndarray,
    k: int,
    query_ids: list[str] | None = None,
) -> list[tuple[int | None, Any]]:
    """(depth, SearchResult) for each refine depth (one search without a copy)."""
    depths: list[int | None] = [None]
    if refine is not None:
        depths = list(DEPTHS)
    index = Index.open(path)
    return [
        (
            d,
            Retriever(index, refine_depth=d).search_embeddings(
                q_flat, q_offsets, k=k, query_ids=query_ids
            ),
        )
        for d in depths
    ]


def _recall(found: list[list[str | None]], exact_top: list[set[str]]) -> float:
    return float(np.mean([len(set(f) & e) / 10 for f, e in zip(found, exact_top, strict=True)]))


def colpali(n_pages: int, n_queries: int) -> list[dict[str, Any]]:
    corpus = SyntheticCorpus()
    queries, _ = corpus.queries(n_queries, n_pages)
    q_flat = queries.reshape(-1, corpus.dim)
    q_offsets = np.arange(n_queries + 1, dtype=np.int64) * corpus.query_tokens
    paths = {label: CACHE / f"refine-colpali-{i}" for i, (label, _, _) in enumerate(STORAGES)}
    writers = {}
    for (label, dtype, refine), path in zip(STORAGES, paths.values(), strict=True):
        shutil.rmtree(path, ignore_errors=True)
        writers[label] = create(path, IndexConfig(dim=corpus.dim, dtype=dtype, refine=refine))
    exact = np.zeros((n_queries, n_pages), np.float32)
    for start, batch in corpus.batches(n_pages, batch=250):
        ids = [f"p{start + i}" for i in range(len(batch))]
        flat = batch.reshape(-1, corpus.dim)
        offsets = np.arange(len(batch) + 1, dtype=np.int64) * corpus.tokens_per_page
        exact[:, start : start + len(batch)] = maxsim(q_flat, q_offsets, flat, offsets)
        for writer in writers.values():
            writer.add(ids, batch)
            if writer.pending_documents >= 1024 or start + len(batch) == n_pages:
                writer.commit()
    for writer in writers.values():
        writer.close()
    order = np.lexsort((np.tile(np.arange(n_pages), (n_queries, 1)), -exact))
    exact_top = [{f"p{j}" for j in row[:10]} for row in order]
    rows = []
    for label, dtype, refine in STORAGES:
        path = paths[label]
        sizes = _bytes(path, n_pages)
        for depth, result in _searches(path, refine, q_flat, q_offsets, 10):
            rows.append(
                {
                    "storage": label,
                    "dtype": dtype,
                    "refine": refine,
                    "depth": depth,
                    "pages": n_pages,
                    **sizes,
                    "recall@10": _recall(result.doc_ids.tolist(), exact_top),
                }
            )
            print(f"ColPali {label:>16} depth {depth}: {rows[-1]}", flush=True)
        shutil.rmtree(path, ignore_errors=True)
    return rows


def vaswani() -> list[dict[str, Any]]:
    data = vaswani_minilm()
    offsets = data["doc_offsets"]
    vectors = data["doc_vectors"].astype(np.float32)
    ids = [str(i) for i in data["doc_ids"]]
    q_vectors, q_offsets = data["query_vectors"].astype(np.float32), data["query_offsets"]
    query_ids = [str(q) for q in data["query_ids"]]
    exact = maxsim(q_vectors, q_offsets, vectors, offsets)
    exact_top = [set(np.array(ids)[np.argsort(-row, kind="stable")[:10]]) for row in exact]
    qrels = load_qrels(shared_data_dir() / "vaswani" / "qrels")
    rows = []
    for i, (label, dtype, refine) in enumerate(STORAGES):
        path = CACHE / f"refine-vaswani-{i}"
        shutil.rmtree(path, ignore_errors=True)
        config = IndexConfig(dim=vectors.shape[1], dtype=dtype, refine=refine)
        with create(path, config) as writer:
            writer.add(ids, vectors, offsets=offsets)
            writer.commit()
        sizes = _bytes(path, len(ids))
        for depth, result in _searches(path, refine, q_vectors, q_offsets, 10, query_ids):
            run = result.to_run()
            rows.append(
                {
                    "storage": label,
                    "dtype": dtype,
                    "refine": refine,
                    "depth": depth,
                    **sizes,
                    "recall@10": _recall([list(r[:10]) for r in result.doc_ids], exact_top),
                    "ndcg@10": evaluate(run, qrels, ["ndcg@10"])["ndcg@10"],
                }
            )
            print(f"Vaswani {label:>16} depth {depth}: {rows[-1]}", flush=True)
        shutil.rmtree(path, ignore_errors=True)
    return rows


def table_refine(r: dict[str, Any]) -> str:
    """Section 5c: storages with and without a refine copy, bytes per page split into what a
    search reads for every candidate and the copy, recall@10 (and nDCG@10 on Vaswani)."""
    rows = []
    for data, key in (("ColPali-shaped", "colpali"), ("Vaswani MiniLM", "vaswani")):
        for x in r.get(key, []):
            copy = x["copy_bytes_per_doc"]
            rows.append(
                [
                    f"{data} ({x['pages']:,} pages)" if "pages" in x else data,
                    x["storage"],
                    x["depth"] if x["depth"] is not None else "-",
                    f"{(x['bytes_per_doc'] - copy) / 1000:.1f}",
                    f"{copy / 1000:.1f}" if copy else "-",
                    f"{x['recall@10']:.3f}",
                    f"{x['ndcg@10']:.3f}" if "ndcg@10" in x else "",
                ]
            )
    header = ["data", "storage", "depth", "kB/page without the copy", "kB/page copy"]
    return render.table(header + ["recall@10", "nDCG@10"], rows)


if __name__ == "__main__":
    main()
