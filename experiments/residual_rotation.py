"""Does a rotation before the residual codec's per-dimension buckets help on real vectors?

Run: ``python -m experiments.residual_rotation [--docs 3000]``; writes
``results/residual_rotation_<N>docs.json``.

The first N Vaswani abstracts' MiniLM token vectors (384-d, ``experiments.common.vaswani_minilm``).
One k-means (``index_store.codecs.num_centroids`` centroids, ``RESIDUAL_NITER`` iterations, as the
residual codecs train) on all their tokens; then each token's residual to its centroid is coded
per dimension in quantile buckets (``train_residual``'s cutoffs and weights) in one of three ways:

- ``plain``: the residual's own dimensions, n bits each (what ``res1/res2/res4`` store);
- ``pca``: the residual rotated onto the principal axes of the training residuals first (an
  orthogonal d x d matrix, which a reader would apply to each query once), n bits each;
- ``pca-tiered``: the same rotation, with the same total bits spread over the axes by their
  variance (reverse water-filling rounded to 0, 1, 2, 4 or 8 bits per axis, so each tier still
  fills whole bytes).

Each is decoded (rotated back) and every document scored with exact MaxSim; recall@10 against
the exact float32 top-10 of the 93 queries over these documents (the codec's own loss: no first
stage), and the mean squared reconstruction error.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from experiments import render
from experiments.common import vaswani_minilm, write_result
from index_store.codecs import RESIDUAL_NITER, num_centroids
from latemm.ranking.scoring import maxsim

ALLOWED_BITS = np.array([0, 1, 2, 4, 8])


def bucket_code(train: np.ndarray, values: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Each column of ``values`` (n, d) coded in ``2^bits[j]`` quantile buckets of ``train``'s
    column j and decoded (a column with 0 bits becomes its median)."""
    out = np.empty_like(values)
    for j in range(values.shape[1]):
        levels = 1 << int(bits[j])
        if bits[j] == 0:
            out[:, j] = np.median(train[:, j])
            continue
        cutoffs = np.quantile(train[:, j], np.arange(1, levels) / levels)
        weights = np.quantile(train[:, j], (np.arange(levels) + 0.5) / levels)
        out[:, j] = weights[np.searchsorted(cutoffs, values[:, j], side="left")]
    return out


def tiered_bits(variances: np.ndarray, total: int) -> np.ndarray:
    """Bits per axis from ``ALLOWED_BITS`` summing to at least ``total`` (and as close as the
    search finds): ``b_j = mean + 1/2 log2(var_j / geometric mean)``, shifted up until it fills."""
    var = np.maximum(variances, 1e-12)
    ideal = 0.5 * np.log2(var / np.exp(np.mean(np.log(var))))
    bits = np.zeros_like(var, dtype=np.int64)
    for shift in np.linspace(-8.0, 16.0, 4801):
        target = ideal + shift
        bits = ALLOWED_BITS[np.argmin(np.abs(target[:, None] - ALLOWED_BITS[None, :]), axis=1)]
        if bits.sum() >= total:
            break
    return bits


def main(argv: list[str] | None = None) -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=3000)
    parser.add_argument("--bits", nargs="+", type=int, default=[2, 4])
    args = parser.parse_args(argv)
    data = vaswani_minilm()
    offsets = data["doc_offsets"][: args.docs + 1].astype(np.int64)
    x = data["doc_vectors"][: offsets[-1]].astype(np.float32)  # (N, d)
    q, q_off = data["query_vectors"].astype(np.float32), data["query_offsets"].astype(np.int64)
    n, dim = x.shape
    exact = maxsim(q, q_off, x, offsets)  # (Q, D)
    truth = [set(np.argsort(-row, kind="stable")[:10]) for row in exact]

    def recall(decoded: np.ndarray) -> float:
        scores = maxsim(q, q_off, decoded, offsets)
        found = [set(np.argsort(-row, kind="stable")[:10]) for row in scores]
        return float(np.mean([len(f & t) / 10 for f, t in zip(found, truth, strict=True)]))

    k = num_centroids(n, n)
    kmeans = faiss.Kmeans(dim, k, niter=RESIDUAL_NITER, seed=0, min_points_per_centroid=1)
    kmeans.train(x)
    centroids = np.asarray(kmeans.centroids, dtype=np.float16).astype(np.float32)  # (K, d)
    _, assigned = kmeans.index.search(x, 1)
    base = centroids[assigned[:, 0]]
    residuals = x - base  # (N, d)
    del kmeans
    variances, axes = np.linalg.eigh(np.cov(residuals.T))
    order = np.argsort(-variances)
    variances, axes = variances[order], axes[:, order].astype(np.float32)
    rotated = residuals @ axes  # (N, d)
    rows: list[dict[str, Any]] = []
    for nbits in args.bits:
        total = nbits * dim
        tiers = tiered_bits(variances, total)
        for name, decoded_residuals in (
            ("plain", lambda b=nbits: bucket_code(residuals, residuals, np.full(dim, b))),
            ("pca", lambda b=nbits: bucket_code(rotated, rotated, np.full(dim, b)) @ axes.T),
            ("pca-tiered", lambda t=tiers: bucket_code(rotated, rotated, t) @ axes.T),
        ):
            decoded = base + decoded_residuals()
            row = {
                "coding": name,
                "bits_per_dim": nbits,
                "bits_per_token": int(tiers.sum()) if name == "pca-tiered" else total,
                "tiers": {str(b): int((tiers == b).sum()) for b in ALLOWED_BITS}
                if name == "pca-tiered"
                else None,
                "recall@10_codec_only": recall(decoded),
                "mse": float(((x - decoded) ** 2).sum(axis=1).mean()),
            }
            del decoded
            rows.append(row)
            print(row, flush=True)
            path = write_result(
                f"residual_rotation_{args.docs}docs",
                {
                    "documents": args.docs,
                    "tokens": n,
                    "dim": dim,
                    "centroids": k,
                    "residual_variance_top5": variances[:5].tolist(),
                    "residual_variance_total": float(variances.sum()),
                    "rows": rows,
                },
            )
    print(f"wrote {path}")


def table_residual_rotation(r: dict[str, Any]) -> str:
    """Section 5d: the residual's quantile buckets on its own axes, on principal axes, and on
    principal axes with bits spread by variance (the codec's own loss, no first stage)."""
    rows = [
        [
            x["coding"],
            x["bits_per_dim"],
            x["bits_per_token"],
            ", ".join(f"{n} x {b}" for b, n in (x["tiers"] or {}).items() if n) or "-",
            f"{x['recall@10_codec_only']:.3f}",
            f"{x['mse']:.4f}",
        ]
        for x in r["rows"]
    ]
    header = ["coding", "bits/dim", "bits/token", "axes x bits", "recall@10 codec only", "MSE"]
    return (
        f"{render.provenance(r)}\n\nFirst {r['documents']:,} Vaswani abstracts, {r['tokens']:,} "
        f"tokens, {r['centroids']:,} centroids.\n\n{render.table(header, rows)}"
    )


if __name__ == "__main__":
    main()
