"""How many candidates a first stage must hand to exact MaxSim rescoring to recover 90/95/99% of
the exact MaxSim top-10: MUVERA FDEs (float32 and PQ-compressed) against a single-vector-per-token
first stage (the PLAID/ColBERTv2 style of candidate generation).

Run: ``python -m experiments.candidates [--quick]``. Writes ``results/candidates.json``.

On MiniLM-embedded Vaswani (real) and ColPali-shaped synthetic pages, for every query:
- the exact MaxSim top-10 over the whole corpus (brute force), the reference;
- FDE: documents ranked by the inner product of query and document FDEs (the index's default
  config, exhaustive, so only the encoding's loss is measured); recall of the exact top-10 within
  the top C for every C;
- FDE + PQ: the same with the document FDEs product-quantised by faiss (``PQ{M}x8``), at two
  code sizes, to see what compressing the first stage costs;
- per token: each query token's k' nearest document tokens (exact inner-product search over all
  token vectors), the union of their documents is the candidate set, ranked by the summed best
  similarity each query token found in it (ColBERTv2's approximate score); C is the candidate
  set's size as k' grows.
For each method and target recall, the smallest C that reaches it (mean over queries) and the
bytes per document the first stage keeps in memory.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from experiments import render
from experiments.common import vaswani_minilm, write_result
from experiments.render import Sources
from experiments.synthetic import SyntheticCorpus
from fde import encode_documents, encode_queries
from index_store import default_fde_config
from latemm.ranking.scoring import maxsim

TARGETS = (0.9, 0.95, 0.99)


def recall_curve(ranks: np.ndarray, n_docs: int) -> np.ndarray:
    """(Q, 10) ranks (0-based) of each exact top-10 document in a method's ordering ->
    recall@10 within the top C, for C = 1..n_docs, averaged over queries."""
    counts = np.zeros(n_docs + 1)
    np.add.at(counts, np.minimum(ranks.reshape(-1), n_docs), 1)
    return np.cumsum(counts[:n_docs]) / ranks.size


def needed(curve_c: np.ndarray, curve_recall: np.ndarray) -> dict[str, float | None]:
    """Smallest C whose recall reaches each target (None if it never does)."""
    out: dict[str, float | None] = {}
    for target in TARGETS:
        hit = np.flatnonzero(curve_recall >= target - 1e-12)
        out[f"{target:.0%}"] = float(curve_c[hit[0]]) if hit.size else None
    return out


def ranks_of(scores: np.ndarray, exact_top: np.ndarray) -> np.ndarray:
    """(Q, n) scores and (Q, 10) exact top-10 indices -> (Q, 10) ranks in the score order."""
    order = np.argsort(-scores, axis=1, kind="stable")
    position = np.empty_like(order)
    np.put_along_axis(position, order, np.arange(order.shape[1])[None, :], axis=1)
    return np.take_along_axis(position, exact_top, axis=1)


def fde_methods(
    vectors: np.ndarray,
    offsets: np.ndarray,
    q_vectors: np.ndarray,
    q_offsets: np.ndarray,
    exact_top: np.ndarray,
) -> list[dict[str, object]]:
    import faiss

    config = default_fde_config(vectors.shape[1])
    doc_fde = encode_documents(vectors, config, offsets=offsets)  # (n, D)
    query_fde = encode_queries(q_vectors, config, offsets=q_offsets)  # (Q, D)
    n = doc_fde.shape[0]
    rows = []
    variants: list[tuple[str, int | None]] = [("FDE float32", None)]
    variants += [(f"FDE PQ{m}x8", m) for m in (doc_fde.shape[1] // 16, doc_fde.shape[1] // 64)]
    for label, m in variants:
        if m is None:
            scores = query_fde @ doc_fde.T
            nbytes = doc_fde.shape[1] * 4
        else:
            pq = faiss.IndexPQ(doc_fde.shape[1], m, 8, faiss.METRIC_INNER_PRODUCT)
            pq.train(doc_fde)
            pq.add(doc_fde)
            found, ids = pq.search(query_fde, n)
            scores = np.full((len(query_fde), n), -np.inf, dtype=np.float32)
            np.put_along_axis(scores, ids, found, axis=1)
            nbytes = m
        curve = recall_curve(ranks_of(scores, exact_top), n)
        rows.append(
            {
                "method": label,
                "bytes_per_document": nbytes,
                "recall_at_c": {str(c): float(curve[c - 1]) for c in (10, 100, 1000) if c <= n},
                "candidates_needed": needed(np.arange(1, n + 1), curve),
            }
        )
        print(f"  {label}: {rows[-1]['candidates_needed']}", flush=True)
    return rows


def token_method(
    vectors: np.ndarray,
    offsets: np.ndarray,
    q_vectors: np.ndarray,
    q_offsets: np.ndarray,
    exact_top: np.ndarray,
    max_k: int,
) -> dict[str, object]:
    """Per-token candidate generation: candidate count and recall as k' grows."""
    import faiss

    n = offsets.size - 1
    owner = np.repeat(np.arange(n), np.diff(offsets))
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    sims, hits = index.search(q_vectors, max_k)  # (Nq, max_k), best first
    points = []
    k = 1
    while k <= max_k:
        sizes, found = [], []
        for q in range(q_offsets.size - 1):
            rows = slice(q_offsets[q], q_offsets[q + 1])
            docs = owner[hits[rows, :k]]  # (Tq, k)
            # Approximate score: per query token, its best similarity within each document.
            approx: dict[int, float] = {}
            for t in range(docs.shape[0]):
                best: dict[int, float] = {}
                for d, s in zip(docs[t], sims[rows][t, :k], strict=True):
                    best.setdefault(int(d), float(s))
                for d, s in best.items():
                    approx[d] = approx.get(d, 0.0) + s
            sizes.append(len(approx))
            found.append(len(set(approx) & set(exact_top[q].tolist())) / exact_top.shape[1])
        points.append((k, float(np.mean(sizes)), float(np.mean(found))))
        print(f"    per token k'={k}: {points[-1][1]:.0f} candidates, recall {points[-1][2]:.3f}")
        k *= 2
    candidates = np.array([p[1] for p in points])
    recalls = np.array([p[2] for p in points])
    return {
        "method": "per token (PLAID-style)",
        "bytes_per_document": float(np.diff(offsets).mean() * vectors.shape[1] * 4),
        "curve": [{"k_per_token": p[0], "candidates": p[1], "recall": p[2]} for p in points],
        "candidates_needed": needed(candidates, recalls),
    }


def run(
    name: str,
    vectors: np.ndarray,
    offsets: np.ndarray,
    q_vectors: np.ndarray,
    q_offsets: np.ndarray,
    max_k: int,
) -> dict[str, object]:
    print(f"[{name}] {offsets.size - 1} documents, {q_offsets.size - 1} queries", flush=True)
    exact = maxsim(q_vectors, q_offsets, vectors, offsets)  # (Q, n)
    exact_top = np.argsort(-exact, axis=1, kind="stable")[:, :10]
    methods = fde_methods(vectors, offsets, q_vectors, q_offsets, exact_top)
    methods.append(token_method(vectors, offsets, q_vectors, q_offsets, exact_top, max_k))
    return {
        "data": name,
        "documents": int(offsets.size - 1),
        "queries": int(q_offsets.size - 1),
        "mean_tokens_per_document": float(np.diff(offsets).mean()),
        "methods": methods,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3,000 abstracts, 1,000 pages")
    args = parser.parse_args(argv)
    results: list[dict[str, object]] = []
    data = vaswani_minilm()
    n = 3000 if args.quick else len(data["doc_ids"])
    offsets = data["doc_offsets"][: n + 1]
    results.append(
        run(
            "vaswani-minilm",
            data["doc_vectors"][: offsets[-1]].astype(np.float32),
            offsets,
            data["query_vectors"].astype(np.float32),
            data["query_offsets"],
            max_k=1024,
        )
    )
    corpus = SyntheticCorpus()
    n_pages, n_queries = (1000, 30) if args.quick else (3000, 50)
    pages = corpus.pages(0, n_pages)
    q3, _ = corpus.queries(n_queries, n_pages)
    results.append(
        run(
            f"colpali-synthetic-{n_pages}",
            pages.reshape(-1, corpus.dim),
            np.arange(n_pages + 1, dtype=np.int64) * corpus.tokens_per_page,
            q3.reshape(-1, corpus.dim),
            np.arange(n_queries + 1, dtype=np.int64) * corpus.query_tokens,
            max_k=4096 if not args.quick else 2048,
        )
    )
    write_result("candidates" + ("_quick" if args.quick else ""), {"datasets": results})


# ------------------------------------------------------------------------------ report
def render_section(r: dict[str, Any], sources: Sources) -> str:
    out = [
        "## 6. Candidates a first stage must hand to exact MaxSim",
        render.provenance(r),
        "",
        "Smallest number of candidates (documents rescored exactly) whose union holds 90/95/99% of "
        "the exact MaxSim top-10, averaged over queries; '-' where the method never got there. "
        "FDE: the index's default encoding (R=20, k=5, projection 16, fill), searched exhaustively, "
        "as float32 or product-quantised by faiss. Per token: each query token's k' nearest "
        "document tokens, as PLAID/ColBERTv2 generate candidates, measured at k' = 1, 2, 4, ...: "
        "the range runs from the last k' short of the target to the first one reaching it.\n",
    ]
    rows = []
    for data in r["datasets"]:
        for m in data["methods"]:
            cells = []
            for target in ("90%", "95%", "99%"):
                need = m["candidates_needed"][target]
                curve = m.get("curve")
                if need is None:
                    cells.append("-")
                elif curve:  # measured at doubling k': the minimum lies in this range
                    below = [p["candidates"] for p in curve if p["candidates"] < need]
                    cells.append(f"{below[-1]:,.0f}-{need:,.0f}" if below else f"{need:,.0f}")
                else:
                    cells.append(need)
            rows.append(
                [
                    f"{data['data']} ({data['documents']:,} docs)",
                    m["method"],
                    m["bytes_per_document"],
                    *cells,
                ]
            )
    out.append(
        render.table(
            ["data", "first stage", "bytes/doc in memory", "C for 90%", "C for 95%", "C for 99%"],
            rows,
        )
    )
    return "\n".join(out)


if __name__ == "__main__":
    main()
