"""Storage options against quality: Vaswani embedded with MiniLM, and ColPali-shaped pages.

Run: ``python -m experiments.storage_quality [--quick]``. Writes ``results/storage_quality.json``.

Vaswani: for float32, float16, int8, 1-bit, the trained product-quantisation codecs (pq1, pq2)
and token pooling (factor 2 and 4, stored in float16): the bytes the vectors take per document,
the bytes of the whole index per document (every file the manifest lists, and the manifest),
recall@10 of the index's own search (default candidates) against the exact float32 MaxSim
top-10, and nDCG@10 against the Vaswani qrels (ranx).

ColPali-shaped pages (``experiments.synthetic``, 1,030 x 128): a real index per storage built
through the API (a segment per 500 pages), every file counted per page; recall@10 against the
exact float32 top-10 with the default candidates and with every page rescored (the codec's own
loss); the codec's encode time per page on one thread.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from experiments import render
from experiments.common import CACHE, shared_data_dir, vaswani_minilm, write_result
from experiments.render import Sources
from experiments.synthetic import SyntheticCorpus
from index_store import Index, IndexConfig, codecs, create
from index_store.codecs import bytes_per_vector
from latemm.ranking.pooling import pool_tokens
from latemm.ranking.scoring import maxsim
from latemm.retrieval.retriever import Retriever
from latemm.runs.metrics import evaluate, load_qrels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="the first 3,000 abstracts, 300 ColPali pages"
    )
    parser.add_argument(
        "--pages", type=int, default=None, help="ColPali-shaped pages (default 3,000; quick 300)"
    )
    args = parser.parse_args(argv)
    vaswani = vaswani_rows(args.quick)
    n_pages = args.pages or (300 if args.quick else 3000)
    pages = colpali_rows(n_pages, 20 if args.quick else 50)
    write_result(
        "storage_quality" + ("_quick" if args.quick else ""),
        {"documents": vaswani["documents"], "rows": vaswani["rows"], "colpali": pages},
    )


def disk_bytes(path: Path) -> int:
    """Every file of a committed index: what the manifest lists, and the manifest."""
    return sum(by_file(path).values())


def by_file(path: Path) -> dict[str, int]:
    """Bytes of every file of a committed index, summed over segments by file name."""
    out = {"manifest.json": (path / "manifest.json").stat().st_size}
    for _, f in Index.open(path).manifest.files():
        out[f.file] = out.get(f.file, 0) + f.size
    return out


def vaswani_rows(quick: bool) -> dict:
    data = vaswani_minilm()
    n_docs = 3000 if quick else len(data["doc_ids"])
    offsets = data["doc_offsets"][: n_docs + 1]
    vectors = data["doc_vectors"][: offsets[-1]].astype(np.float32)
    ids = [str(i) for i in data["doc_ids"][:n_docs]]
    q_vectors, q_offsets = data["query_vectors"].astype(np.float32), data["query_offsets"]
    query_ids = [str(q) for q in data["query_ids"]]
    exact = maxsim(q_vectors, q_offsets, vectors, offsets)
    exact_top = [set(np.array(ids)[np.argsort(-row)[:10]]) for row in exact]
    qrels = load_qrels(shared_data_dir() / "vaswani" / "qrels")
    rows = []
    for label, dtype, factor in [
        ("float32", "float32", 1),
        ("float16", "float16", 1),
        ("int8", "int8", 1),
        ("1-bit", "binary", 1),
        ("pq1 (4-bit PQ, 1 bit/dim)", "pq1", 1),
        ("pq2 (4-bit PQ, 2 bits/dim)", "pq2", 1),
        ("pool x2 (float16)", "float16", 2),
        ("pool x4 (float16)", "float16", 4),
    ]:
        stored_vectors, stored_offsets = pool_tokens(vectors, offsets, factor)
        path = CACHE / f"storage-{dtype}-{factor}"
        shutil.rmtree(path, ignore_errors=True)
        with create(path, IndexConfig(dim=vectors.shape[1], dtype=dtype)) as writer:
            writer.add(ids, stored_vectors, offsets=stored_offsets)
            writer.commit()
        result = Retriever(Index.open(path)).search_embeddings(
            q_vectors, q_offsets, k=100, query_ids=query_ids
        )
        top10 = [set(row[:10]) for row in result.doc_ids]
        run = result.to_run()
        per_doc = stored_vectors.shape[0] / n_docs
        rows.append(
            {
                "storage": label,
                "vectors_per_doc": per_doc,
                "kib_per_doc": per_doc * bytes_per_vector(dtype, vectors.shape[1]) / 1024,
                "index_kib_per_doc": disk_bytes(path) / n_docs / 1024,
                "recall@10": float(
                    np.mean([len(a & b) / 10 for a, b in zip(top10, exact_top, strict=True)])
                ),
                "ndcg@10": evaluate(run, qrels, ["ndcg@10"])["ndcg@10"],
            }
        )
        print(
            f"{label:>18}: {rows[-1]['kib_per_doc']:.1f} KiB/doc, recall@10 {rows[-1]['recall@10']:.3f}, nDCG@10 {rows[-1]['ndcg@10']:.3f}"
        )
        shutil.rmtree(path, ignore_errors=True)
    return {"documents": n_docs, "rows": rows}


COLPALI_STORAGE = ("float16", "int8", "pq1", "pq2")


def encode_ms(corpus: SyntheticCorpus, dtype: str) -> float:
    """The codec's encode time of one page on one thread (CPU time: the machine is shared),
    codebook trained beforehand, median of 20."""
    import faiss
    import torch

    threads = faiss.omp_get_max_threads(), torch.get_num_threads()
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    pages = corpus.pages(0, 8)
    codebook = (
        codecs.train(pages.reshape(-1, corpus.dim), dtype) if codecs.is_trained(dtype) else None
    )
    times = []
    for i in range(20):
        page = np.ascontiguousarray(pages[i % 8])
        t0 = time.thread_time()
        codecs.encode(page, dtype, codebook)
        times.append(time.thread_time() - t0)
    faiss.omp_set_num_threads(threads[0])
    torch.set_num_threads(threads[1])
    return float(np.median(times) * 1e3)


def colpali_rows(n_pages: int, n_queries: int) -> list[dict]:
    """Real indexes of ``n_pages`` ColPali-shaped pages, one per storage, fed the same batches;
    the exact float32 MaxSim of every page computed from the same batches."""
    corpus = SyntheticCorpus()
    queries, _ = corpus.queries(n_queries, n_pages)
    q_flat = queries.reshape(-1, corpus.dim)
    q_offsets = np.arange(n_queries + 1, dtype=np.int64) * corpus.query_tokens
    paths = {dtype: CACHE / f"storage-colpali-{dtype}" for dtype in COLPALI_STORAGE}
    writers = {}
    for dtype, path in paths.items():
        shutil.rmtree(path, ignore_errors=True)
        writers[dtype] = create(path, IndexConfig(dim=corpus.dim, dtype=dtype))
    exact = np.zeros((n_queries, n_pages), np.float32)
    build = dict.fromkeys(COLPALI_STORAGE, 0.0)
    for start, batch in corpus.batches(n_pages, batch=250):
        ids = [f"p{start + i}" for i in range(len(batch))]
        flat = batch.reshape(-1, corpus.dim)
        offsets = np.arange(len(batch) + 1, dtype=np.int64) * corpus.tokens_per_page
        exact[:, start : start + len(batch)] = maxsim(q_flat, q_offsets, flat, offsets)
        for dtype, writer in writers.items():
            t0 = time.perf_counter()
            writer.add(ids, batch)
            if writer.pending_documents >= 500 or start + len(batch) == n_pages:
                writer.commit()
            build[dtype] += time.perf_counter() - t0
    for writer in writers.values():
        writer.close()
    order = np.lexsort((np.tile(np.arange(n_pages), (n_queries, 1)), -exact))
    exact_top = [{f"p{j}" for j in row[:10]} for row in order]
    rows = []
    for dtype, path in paths.items():
        retriever = Retriever(Index.open(path))
        per_page = disk_bytes(path) / n_pages
        ms = encode_ms(corpus, dtype)
        recall = {}
        for label, candidates in (("recall@10", None), ("recall@10_all_rescored", n_pages)):
            # candidates=None: the retriever's default count
            found = retriever.search_embeddings(list(queries), k=10, candidates=candidates).doc_ids
            recall[label] = float(
                np.mean(
                    [len(set(f) & e) / 10 for f, e in zip(found.tolist(), exact_top, strict=True)]
                )
            )
        rows.append(
            {
                "storage": dtype,
                "pages": n_pages,
                "bytes_per_token": bytes_per_vector(dtype, corpus.dim),
                "index_bytes_per_page": per_page,
                "bytes_per_page_by_file": {k: v / n_pages for k, v in by_file(path).items()},
                "encode_ms_per_page": ms,
                "build_s": build[dtype],
                **recall,
            }
        )
        print(
            f"ColPali {dtype:>8}: {per_page / 1024:.1f} KiB/page, recall@10 "
            f"{recall['recall@10']:.3f} (all rescored {recall['recall@10_all_rescored']:.3f}), "
            f"encode {ms:.2f} ms/page"
        )
        shutil.rmtree(path, ignore_errors=True)
    return rows


# ------------------------------------------------------------------------------ report
def render_section(r: dict[str, Any], sources: Sources) -> str:
    out = ["## 5. Storage options: bytes against quality", render.provenance(r), ""]
    out.append(
        render.table(
            [
                "storage",
                "vectors/page",
                "KiB/page (vectors)",
                "KiB/page (whole index)",
                "recall@10 vs float32 exact",
                "nDCG@10 (Vaswani)",
            ],
            [
                [
                    x["storage"],
                    x["vectors_per_doc"],
                    x["kib_per_doc"],
                    x["index_kib_per_doc"] if "index_kib_per_doc" in x else "-",
                    x["recall@10"],
                    x["ndcg@10"],
                ]
                for x in r["rows"]
            ],
        )
    )
    if r.get("colpali"):
        out.append(_storage_colpali(r["colpali"]))
    return "\n".join(out)


def _storage_colpali(rows: list[dict[str, Any]]) -> str:
    """The ColPali-shaped table of ``storage_quality``: whole-index bytes and recall."""
    out = [
        f"\nColPali-shaped pages ({rows[0]['pages']} synthetic pages of 1,030 x 128, a real index "
        "each, every file counted; the FDE is today's Flat float32 FDE, 40 KiB/page, which the "
        "first-stage work replaces); recall@10 against the exact float32 top-10 with the default "
        "candidates and with every page rescored (the codec's own loss); encode: one thread, CPU "
        "time, the codebook trained beforehand.\n"
    ]
    table = [
        [
            x["storage"],
            x["bytes_per_token"],
            x["index_bytes_per_page"] / 1024,
            sum(v for k, v in x.get("bytes_per_page_by_file", {}).items() if k != "fde.faiss")
            / 1024,
            x["recall@10"],
            x["recall@10_all_rescored"],
            x["encode_ms_per_page"],
        ]
        for x in rows
    ]
    header = [
        "storage",
        "bytes/token",
        "KiB/page (whole index)",
        "KiB/page without fde.faiss",
        "recall@10",
        "recall@10 (all rescored)",
        "encode ms/page",
    ]
    out.append(render.table(header, table))
    return "\n".join(out)


if __name__ == "__main__":
    main()
