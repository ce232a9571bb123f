"""The residual codebook's k-means: latemm's (``index_store.codecs.kmeans``) against faiss's
``Kmeans``, over several seeds, on the default index of Vaswani's or MMLongBench's MiniLM
vectors.

Run: ``python -m experiments.kmeans_seeds [--set vaswani|mmlongbench] [--seeds 0 1 2]
[--kmeans latemm faiss] [--iterations 4] [--docs N]``. Writes ``results/kmeans_seeds.json``
(``kmeans_seeds_mmlongbench.json``). ``--iterations 4 10`` builds with each count of Lloyd
iterations (the codec's is ``codecs.RESIDUAL_NITER``); a k-means run at another count than the
codec's is named with it (``latemm@10``).

For each seed and each k-means, the default index (``residual_speed.build``: what ``latemm
index`` builds with no option, res4 under one index codebook, committed every 512 pages) is
built with that k-means in place of the codec's, then searched as built: build seconds,
recall@10 against the exact float32 MaxSim top 10, and nDCG@10 against the qrels. Both run
faiss's algorithm (random start, 4 Lloyd iterations, empty clusters split); latemm's assigns
with ``codecs.nearest_centroids``. Builds alternate between the two, one process. One seed's
recall says little: the codebook's random start moves recall@10 by about 0.01 either way.
"""

from __future__ import annotations

import argparse
import shutil
import time
from typing import Any

import numpy as np

from experiments import render
from experiments.codec_sets import mmlongbench_set
from experiments.common import write_result
from experiments.residual_codec import _ndcg, _recall, exact_top10, vaswani_set
from experiments.residual_speed import build
from index_store import codecs
from latemm.retrieval.retriever import Retriever

LATEMM_KMEANS = codecs.kmeans


def faiss_kmeans(
    sample: np.ndarray, k: int, iterations: int, *, seed: int = 0, start: Any = None
) -> np.ndarray:
    """faiss's ``Kmeans``, as the codec trained its centroids before ``codecs.kmeans``."""
    import faiss

    if start is not None:
        raise ValueError("faiss_kmeans starts at random points only")
    km = faiss.Kmeans(
        sample.shape[1], k, niter=iterations, seed=seed, min_points_per_centroid=1, verbose=False
    )
    km.train(sample)
    return np.asarray(km.centroids, dtype=np.float32)


def measure(
    data: dict[str, Any], name: str, seed: int, lloyd: int, exact: list[set[str]]
) -> dict[str, Any]:
    """Build the default index with ``name``'s k-means at ``seed``, ``lloyd`` Lloyd
    iterations, and search it as built."""
    chosen = {"latemm": LATEMM_KMEANS, "faiss": faiss_kmeans}[name]

    def kmeans(sample: np.ndarray, k: int, iterations: int, **options: Any) -> np.ndarray:
        return chosen(sample, k, lloyd, **{**options, "seed": seed})

    codecs.kmeans = kmeans  # what train_residual calls
    try:
        start = time.perf_counter()
        index = build(data, "default")
        build_s = time.perf_counter() - start
    finally:
        codecs.kmeans = LATEMM_KMEANS
    result = Retriever(index).search_embeddings(
        data["query_vectors"], data["query_offsets"], k=10, query_ids=data["query_ids"]
    )
    shutil.rmtree(index.path, ignore_errors=True)
    return {
        "kmeans": name if lloyd == codecs.RESIDUAL_NITER else f"{name}@{lloyd}",
        "seed": seed,
        "build_s": build_s,
        "recall@10": _recall([list(r)[:10] for r in result.doc_ids], exact),
        "ndcg@10": _ndcg(result.to_run(), data["qrels"]),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", default="vaswani", choices=("vaswani", "mmlongbench"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="(default: 0 1 2)")
    parser.add_argument(
        "--kmeans",
        nargs="+",
        default=["latemm", "faiss"],
        choices=("latemm", "faiss"),
        help="the k-means to compare (default: latemm faiss)",
    )
    parser.add_argument(
        "--iterations",
        nargs="+",
        type=int,
        default=[codecs.RESIDUAL_NITER],
        help=f"Lloyd iterations, each built in turn (default: {codecs.RESIDUAL_NITER})",
    )
    parser.add_argument("--docs", type=int, default=None, help="first N Vaswani abstracts")
    parser.add_argument("--name", default=None, help="results file name")
    args = parser.parse_args(argv)
    data = vaswani_set(args.docs) if args.set == "vaswani" else mmlongbench_set()
    exact = exact_top10(data)
    runs = []
    for seed in args.seeds:
        for iterations in args.iterations:
            for name in args.kmeans:
                runs.append(measure(data, name, seed, iterations, exact))
                print(runs[-1], flush=True)
    summary = {
        name: {
            key: float(np.mean([r[key] for r in runs if r["kmeans"] == name]))
            for key in ("build_s", "recall@10", "ndcg@10")
        }
        for name in dict.fromkeys(r["kmeans"] for r in runs)
    }
    print(f"means over seeds {args.seeds}: {summary}")
    name = args.name or "kmeans_seeds" + ("" if args.set == "vaswani" else f"_{args.set}")
    path = write_result(name, {"set": data["set"], "runs": runs, "means": summary})
    print(f"wrote {path}")


def table_kmeans_seeds(*runs: dict[str, Any]) -> str:
    """Section 5d: the default index with latemm's k-means and with faiss's, over seeds, one
    table per set (``experiments.kmeans_seeds``)."""
    out = []
    for r in runs:
        rows = [
            [x["seed"], x["kmeans"], f"{x['build_s']:.0f}", f"{x['recall@10']:.3f}"]
            + [f"{x['ndcg@10']:.4f}"]
            for x in r["runs"]
        ]
        rows += [
            ["mean", name, f"{m['build_s']:.0f}", f"{m['recall@10']:.3f}", f"{m['ndcg@10']:.4f}"]
            for name, m in r["means"].items()
        ]
        header = ["seed", "k-means", "build s", "recall@10", "nDCG@10"]
        out.append(f"{render.provenance(r)} {r['set']}:\n\n{render.table(header, rows)}")
    return "\n\n".join(out)


if __name__ == "__main__":
    main()
