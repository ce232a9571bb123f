"""FDE benchmark: throughput against the reference (muvfde), and FDE-only recall@10.

Run: ``python -m experiments.bench_fde [--quick]``. Writes ``results/bench_fde.json``.

1. Documents/s of ``fde.encode_documents`` against muvfde on ColPali-shaped (1,030 x 128) and
   ColBERT-shaped (~80 x 128) float32 documents, R=20, k=5, AMS projection 16, filling on; muvfde
   is timed both as users call it (one process) and spread over every core (a process pool), in
   the same run. Outputs are checked equal before timing.
2. Recall@10 of FDE-only retrieval (FDE inner products, exhaustive) against the exact MaxSim
   top-10 on real vectors: ColBERTv2 NanoFiQA and Vaswani embedded with MiniLM, for a ladder of
   configs along the MUVERA paper's Pareto frontier.
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from experiments import render
from experiments.common import (
    load_npz_sets,
    median_time,
    shared_data_dir,
    vaswani_minilm,
    write_result,
)
from experiments.render import Sources
from fde import FDEConfig, encode_documents, encode_queries
from fde.reference import reference_encode
from latemm.ranking.scoring import maxsim

BENCH_CONFIG = FDEConfig(
    dimension=128,
    num_repetitions=20,
    num_simhash_projections=5,
    projection_type="ams_sketch",
    projection_dimension=16,
    fill_empty_partitions=True,
)

# (R, k, projection) rungs: FDE dimension R * 2**k * p from 1,280 to 20,480, as in the paper.
PARETO = [(10, 3, 16), (20, 3, 16), (20, 4, 16), (20, 5, 16), (20, 5, 32), (40, 5, 16), (20, 6, 16)]


def _reference_chunk(args: tuple[list[np.ndarray], FDEConfig]) -> np.ndarray:
    return reference_encode(args[0], args[1], document=True)


def throughput(n_docs: int, lengths: np.ndarray, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    docs = [rng.standard_normal((int(t), 128)).astype(np.float32) for t in lengths[:n_docs]]
    for doc in docs:
        doc /= np.linalg.norm(doc, axis=1, keepdims=True)
    ours = encode_documents(docs, BENCH_CONFIG)
    ref = reference_encode(docs, BENCH_CONFIG, document=True)
    max_diff = float(np.abs(ours - ref).max())
    t_ours = median_time(lambda: encode_documents(docs, BENCH_CONFIG), repeats=repeats)
    t_ref = median_time(
        lambda: reference_encode(docs, BENCH_CONFIG, document=True), repeats=repeats
    )
    workers = os.cpu_count() or 1
    parts = [(docs[i::workers], BENCH_CONFIG) for i in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        t_pool = median_time(lambda: list(pool.map(_reference_chunk, parts)), repeats=repeats)
    return {
        "documents": n_docs,
        "mean_tokens": float(np.mean(lengths[:n_docs])),
        "fde_docs_per_s": n_docs / t_ours,
        "muvfde_docs_per_s": n_docs / t_ref,
        "muvfde_pool_docs_per_s": n_docs / t_pool,
        "muvfde_pool_workers": workers,
        "speedup_vs_muvfde": t_ref / t_ours,
        "speedup_vs_muvfde_pool": t_pool / t_ours,
        "max_abs_diff_vs_reference": max_diff,
    }


def fde_recall(
    name: str,
    doc_vectors: np.ndarray,
    doc_offsets: np.ndarray,
    query_vectors: np.ndarray,
    query_offsets: np.ndarray,
    k: int = 10,
) -> list[dict[str, str | float]]:
    dim = doc_vectors.shape[1]
    exact = maxsim(query_vectors, query_offsets, doc_vectors, doc_offsets)  # (Q, n)
    k_eff = min(k, exact.shape[1])
    exact_top = np.argsort(-exact, axis=1)[:, :k_eff]
    rows: list[dict[str, str | float]] = []
    for R, bits, p in PARETO:
        config = FDEConfig(
            dimension=dim,
            num_repetitions=R,
            num_simhash_projections=bits,
            projection_type="ams_sketch",
            projection_dimension=p,
            fill_empty_partitions=True,
        )
        docs = encode_documents(doc_vectors, config, offsets=doc_offsets)
        queries = encode_queries(query_vectors, config, offsets=query_offsets)
        approx_top = np.argsort(-(queries @ docs.T), axis=1)[:, :k_eff]
        hits = [len(set(a) & set(e)) / k_eff for a, e in zip(approx_top, exact_top, strict=True)]
        rows.append(
            {
                "dataset": name,
                "R": R,
                "k": bits,
                "projection": p,
                "fde_dimension": config.output_dimension,
                "bytes_per_doc_fp32": 4 * config.output_dimension,
                f"recall@{k}": float(np.mean(hits)),
            }
        )
        print(
            f"  {name:10s} R={R:2d} k={bits} p={p:2d} dim={config.output_dimension:6d} "
            f"recall@{k}={np.mean(hits):.3f}"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer documents and repeats")
    parser.add_argument("--data", default=None, help="shared data folder (default ../shared/data)")
    parser.add_argument("--no-vaswani", action="store_true", help="skip the MiniLM Vaswani part")
    args = parser.parse_args(argv)
    data = shared_data_dir() if args.data is None else __import__("pathlib").Path(args.data)
    repeats = 3 if args.quick else 5
    rng = np.random.default_rng(1)
    shapes = {
        "colpali_1030x128": (60 if args.quick else 300, np.full(5000, 1030)),
        "colbert_80x128": (
            600 if args.quick else 3000,
            np.clip(rng.normal(80, 20, 5000).round(), 8, 180).astype(int),
        ),
    }
    per_shape: dict[str, dict[str, float]] = {}
    results: dict[str, object] = {"config": BENCH_CONFIG.to_dict(), "throughput": per_shape}
    for shape, (n, lengths) in shapes.items():
        row = throughput(n, lengths, repeats)
        per_shape[shape] = row
        print(
            f"{shape}: fde {row['fde_docs_per_s']:.0f} docs/s, muvfde {row['muvfde_docs_per_s']:.0f} "
            f"docs/s ({row['speedup_vs_muvfde']:.1f}x), muvfde x{row['muvfde_pool_workers']} "
            f"processes {row['muvfde_pool_docs_per_s']:.0f} docs/s "
            f"({row['speedup_vs_muvfde_pool']:.1f}x)"
        )
    recall: list[dict[str, str | float]] = []
    root = data / "colbertv2-nanofiqa"
    if root.is_dir():
        _, dv, do = load_npz_sets(root / "documents.npz")
        _, qv, qo = load_npz_sets(root / "queries.npz")
        recall += fde_recall("colbertv2", dv, do, qv, qo)
    if not args.no_vaswani and (data / "vaswani").is_dir():
        v = vaswani_minilm(data)
        recall += fde_recall(
            "vaswani",
            v["doc_vectors"].astype(np.float32),
            v["doc_offsets"],
            v["query_vectors"].astype(np.float32),
            v["query_offsets"],
        )
    results["recall"] = recall
    path = write_result("bench_fde" + ("_quick" if args.quick else ""), results)
    print(f"wrote {path}")


# ------------------------------------------------------------------------------ report
def render_section(r: dict[str, Any], sources: Sources) -> str:
    out = [
        "## 1. The FDE: speed against the reference, recall against exact MaxSim",
        render.provenance(r),
        "",
    ]
    rows = [
        [
            shape,
            t["fde_docs_per_s"],
            t["muvfde_docs_per_s"],
            t["speedup_vs_muvfde"],
            t["muvfde_pool_docs_per_s"],
            t["speedup_vs_muvfde_pool"],
            t["max_abs_diff_vs_reference"],
        ]
        for shape, t in r["throughput"].items()
    ]
    out.append(
        render.table(
            [
                "documents",
                "fde docs/s",
                "muvfde docs/s",
                "ratio",
                "muvfde on all cores docs/s",
                "ratio",
                "max |diff|",
            ],
            rows,
        )
    )
    out.append("")
    rows = [
        [x["dataset"], x["R"], x["k"], x["projection"], x["fde_dimension"], x["recall@10"]]
        for x in r["recall"]
    ]
    out.append(
        "FDE-only retrieval (exhaustive inner products over FDEs) against the exact MaxSim top-10:\n"
    )
    out.append(render.table(["data", "R", "k", "proj", "FDE dim", "recall@10"], rows))
    return "\n".join(out)


if __name__ == "__main__":
    main()
