"""CPU text encoding, float32 against int8 dynamic quantisation (``--quantize int8``).

Run: ``python -m experiments.bench_cpu_encode [--docs 2000] [--chunks 4]``. Writes
``results/bench_cpu_encode.json``.

On the first ``--docs`` Vaswani abstracts with the packaged all-MiniLM-L6-v2, in one run:

- pages/s: the abstracts are split into ``--chunks`` chunks; each chunk is encoded by the float32
  and the int8 encoder back to back, the order alternating from chunk to chunk, so load from
  other processes on a shared machine hits both alike. Reported per chunk, as totals, and as the
  median of the per-chunk int8 / float32 speed ratios.
- exactness: exact MaxSim (brute force, every query against every document) over each
  encoder's own vectors; recall@10 of the int8 top-10 against the float32 top-10.
- quality: nDCG@10 of both against Vaswani's qrels, restricted to the documents encoded
  (queries with no relevant document among them are left out).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments import render
from experiments.common import (
    minilm_path,
    read_trec_docs,
    read_trec_topics,
    shared_data_dir,
    write_result,
)
from latemm.encoders import MultiVectors, load_encoder
from latemm.runs.metrics import load_qrels

KINDS = ("float32", "int8")


def exact_scores(queries: MultiVectors, documents: MultiVectors) -> np.ndarray:
    """(queries, documents) exact MaxSim: one matrix product, a max over each document's
    tokens, a sum over each query's tokens."""
    sims = queries.vectors @ documents.vectors.T  # (query tokens, doc tokens)
    per_doc = np.maximum.reduceat(sims, documents.offsets[:-1], axis=1)
    return np.add.reduceat(per_doc, queries.offsets[:-1], axis=0)


def ndcg_at_10(ranking: np.ndarray, doc_ids: list[str], relevant: dict[str, int]) -> float:
    gains = [relevant.get(doc_ids[d], 0) for d in ranking[:10]]
    dcg = sum(g / np.log2(i + 2) for i, g in enumerate(gains))
    ideal = sorted(relevant.values(), reverse=True)[:10]
    idcg = sum(g / np.log2(i + 2) for i, g in enumerate(ideal))
    return float(dcg / idcg) if idcg > 0 else 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000, help="abstracts encoded (default 2000)")
    parser.add_argument("--chunks", type=int, default=4, help="timed chunks (default 4)")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per forward (32)")
    parser.add_argument("--data", type=Path, default=None, help="shared data folder")
    parser.add_argument(
        "--join",
        type=int,
        default=1,
        help="abstracts joined into one page (default 1): long pages like a report's; their "
        "nDCG is not measured (the qrels judge abstracts)",
    )
    parser.add_argument("--name", default="bench_cpu_encode", help="results JSON name")
    args = parser.parse_args(argv)

    root = (args.data or shared_data_dir()) / "vaswani"
    doc_ids, texts = read_trec_docs(root / "doc-text.trec")
    doc_ids, texts = doc_ids[: args.docs], texts[: args.docs]
    if args.join > 1:
        doc_ids = [f"joined-{i}" for i in range(0, len(texts), args.join)]
        texts = [" ".join(texts[i : i + args.join]) for i in range(0, len(texts), args.join)]
    query_ids, query_texts = read_trec_topics(root / "query-text.trec")
    encoders = {
        "float32": load_encoder(minilm_path(), device="cpu", batch_size=args.batch_size),
        "int8": load_encoder(
            minilm_path(), device="cpu", batch_size=args.batch_size, quantize="int8"
        ),
    }
    for encoder in encoders.values():  # warm-up: first-call allocations and kernel selection
        encoder.encode_documents(texts[:64])

    bounds = np.linspace(0, len(texts), args.chunks + 1).astype(int)
    parts: dict[str, list[MultiVectors]] = {k: [] for k in KINDS}
    chunks: list[dict[str, Any]] = []
    elapsed = dict.fromkeys(KINDS, 0.0)
    for c in range(args.chunks):
        chunk = texts[bounds[c] : bounds[c + 1]]
        order = KINDS if c % 2 == 0 else KINDS[::-1]
        seconds = {}
        for kind in order:
            start = time.perf_counter()
            parts[kind].append(encoders[kind].encode_documents(chunk))
            seconds[kind] = time.perf_counter() - start
            elapsed[kind] += seconds[kind]
        chunks.append(
            {
                "pages": len(chunk),
                "order": list(order),
                **{f"{k}_pages_per_s": len(chunk) / seconds[k] for k in KINDS},
                "int8_speedup": seconds["float32"] / seconds["int8"],
            }
        )
        print(
            f"chunk {c}: {len(chunk)} pages, float32 {chunks[-1]['float32_pages_per_s']:.1f} "
            f"pages/s, int8 {chunks[-1]['int8_pages_per_s']:.1f} pages/s "
            f"(x{chunks[-1]['int8_speedup']:.2f})",
            flush=True,
        )
    docs = {
        k: MultiVectors.from_arrays(
            [m[i] for m in parts[k] for i in range(len(m))], encoders[k].dim
        )
        for k in KINDS
    }
    queries = {k: encoders[k].encode_queries(query_texts) for k in KINDS}

    cosine = np.sum(docs["float32"].vectors * docs["int8"].vectors, axis=1)
    scores = {k: exact_scores(queries[k], docs[k]) for k in KINDS}
    top = {k: np.argsort(-scores[k], axis=1, kind="stable")[:, :10] for k in KINDS}
    recall = [len(set(a) & set(b)) / 10 for a, b in zip(top["float32"], top["int8"], strict=True)]
    qrels = load_qrels(root / "qrels")
    kept = set(doc_ids)
    judged = {
        i: {d: r for d, r in qrels.get(q, {}).items() if d in kept and r > 0}
        for i, q in enumerate(query_ids)
    }
    judged = {i: rel for i, rel in judged.items() if rel}
    full_rankings = {k: np.argsort(-scores[k], axis=1, kind="stable") for k in KINDS}
    ndcg: dict[str, float | None] = {
        k: float(
            np.mean([ndcg_at_10(full_rankings[k][i], doc_ids, rel) for i, rel in judged.items()])
        )
        if judged
        else None
        for k in KINDS
    }
    total = {k: len(texts) / elapsed[k] for k in KINDS}
    payload = {
        "documents": len(texts),
        "tokens": int(docs["float32"].vectors.shape[0]),
        "queries": len(query_ids),
        "queries_judged": len(judged),
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "chunks": chunks,
        "pages_per_s": total,
        "tokens_per_s": {k: docs[k].vectors.shape[0] / elapsed[k] for k in KINDS},
        "int8_speedup_median": float(np.median([c["int8_speedup"] for c in chunks])),
        "token_cosine": {
            "min": float(cosine.min()),
            "p1": float(np.percentile(cosine, 1)),
            "mean": float(cosine.mean()),
        },
        "recall_at_10_int8_vs_float32_exact": float(np.mean(recall)),
        "ndcg_at_10": ndcg,
        "note": "timings on a shared, loaded 2-core machine: compare the alternated ratios",
    }
    print(
        f"pages/s float32 {total['float32']:.1f}, int8 {total['int8']:.1f} (median ratio "
        f"x{payload['int8_speedup_median']:.2f}); recall@10 vs float32 {np.mean(recall):.3f}; "
        f"nDCG@10 float32 {ndcg['float32']}, int8 {ndcg['int8']} "
        f"({len(judged)} judged queries)"
    )
    payload["join"] = args.join
    print(write_result(args.name, payload))


# Tables that hand-written fragments place with a <!-- table: NAME --> line: NAME -> (the
# results JSONs it reads, without .json; the function that renders it from those records).
def table_cpu_encode(r: dict[str, Any]) -> str:
    """Section 7c: MiniLM on the CPU, float32 against ``--quantize int8``, same run."""
    speed = ", ".join(f"{c['int8_speedup']:.2f}" for c in r["chunks"])
    rows = [
        [
            kind,
            r["pages_per_s"][kind],
            r["tokens_per_s"][kind],
            1.0 if kind == "float32" else r["recall_at_10_int8_vs_float32_exact"],
            "n/a" if r["ndcg_at_10"][kind] is None else r["ndcg_at_10"][kind],
        ]
        for kind in ("float32", "int8")
    ]
    header = ["MiniLM", "pages/s", "tokens/s", "recall@10 vs float32 (exact)", "nDCG@10"]
    cos = r["token_cosine"]
    join = int(r.get("join", 1))
    pages = (
        f"{r['documents']:,} pages of {join} Vaswani abstracts joined"
        if join > 1
        else f"{r['documents']:,} Vaswani abstracts"
    )
    judged = (
        "nDCG is not measured on joined pages (the qrels judge abstracts)"
        if join > 1
        else f"nDCG@10 over the {r['queries_judged']} queries with a relevant document among them"
    )
    return (
        render.provenance(r)
        + "\n\n"
        + render.table(header, rows)
        + f"\n\n{pages} ({r['tokens']:,} tokens), "
        f"{r['torch_threads']} torch threads, batch {r['batch_size']}; int8 / float32 speed per "
        f"alternated chunk: {speed} (median {r['int8_speedup_median']:.2f}). {judged}. "
        "Token vectors' "
        f"cosine to float32: mean {cos['mean']:.3f}, 1st percentile {cos['p1']:.3f}, "
        f"min {cos['min']:.3f}."
    )


if __name__ == "__main__":
    main()
