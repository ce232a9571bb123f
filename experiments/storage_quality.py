"""Storage options against quality, on real vectors: Vaswani embedded with MiniLM.

Run: ``python -m experiments.storage_quality [--quick]``. Writes ``results/storage_quality.json``.

For float32, float16, int8, 1-bit and token pooling (factor 2 and 4, stored in float16): the
bytes the vectors take per document, recall@10 of the index's own search (default candidates)
against the exact float32 MaxSim top-10, and nDCG@10 against the Vaswani qrels (ranx).
"""

from __future__ import annotations

import argparse
import shutil

import numpy as np

from experiments.common import CACHE, shared_data_dir, vaswani_minilm, write_result
from index_store import Index, IndexConfig, create
from index_store.codecs import bytes_per_vector
from latemm.metrics import evaluate, load_qrels
from latemm.pooling import pool_tokens
from latemm.retriever import Retriever
from latemm.scoring import maxsim


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the first 3,000 abstracts")
    args = parser.parse_args(argv)
    data = vaswani_minilm()
    n_docs = 3000 if args.quick else len(data["doc_ids"])
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
        run = {
            q: {
                d: float(s)
                for d, s in zip(result.doc_ids[i], result.scores[i], strict=True)
                if d is not None
            }
            for i, q in enumerate(query_ids)
        }
        per_doc = stored_vectors.shape[0] / n_docs
        rows.append(
            {
                "storage": label,
                "vectors_per_doc": per_doc,
                "kib_per_doc": per_doc * bytes_per_vector(dtype, vectors.shape[1]) / 1024,
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
    write_result(
        "storage_quality" + ("_quick" if args.quick else ""), {"documents": n_docs, "rows": rows}
    )


if __name__ == "__main__":
    main()
