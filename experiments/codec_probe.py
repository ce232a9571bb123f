"""Codec probe for issue #14 goal 1 (<= 20 KB per ColPali-shaped page at recall@10 >= 0.95):
which faiss token codecs at 16-18 bytes per 128-d token keep the exact MaxSim top-10?

Run: ``python -m experiments.codec_probe [--pages 1000] [--queries 50]``; writes
``results/codec_probe.json``.

Data: seeded ``experiments.synthetic`` pages (1,030 x 128) and queries. Every codec is trained
on the same 200,000 sampled tokens and applied to every token; each query then scores every
page with exact MaxSim (``latemm.ranking.scoring.maxsim``, float64 products) over the decoded
tokens, and recall@10 is measured against the top-10 over the original float32 tokens. No first
stage: this is the codec's own loss, the ceiling of any index that stores it. 20 KB per page leaves
at most ~19 bytes per token.

Then a bound for codecs not tried: recall@10 against the root-mean-square error per token when
every token gets isotropic Gaussian error of that size (``--errors``), next to each codec's own
(error, recall); and the least error any code of R bits per token can have on this generator
(Shannon's lower bound, computed from the generator's noise alone: a token is
normalise(direction + n), n ~ N(0, noise^2 / d I), so even with its direction given for free
the tangential noise, ~N(0, s^2) in each of d - 1 dimensions with s^2 = noise^2 / (d (1 +
noise^2)), costs MSE >= (d - 1) s^2 2^(-2 R / (d - 1)) at R bits). Where the measured codecs
lie on or below the random-error curve, the curve read at that bound is what a code of that
size can hope for.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from experiments import render
from experiments.bench_search import recall
from experiments.common import write_result
from experiments.synthetic import SyntheticCorpus
from latemm.ranking.scoring import maxsim


def codecs(train: np.ndarray) -> dict[str, tuple[int, Callable[[np.ndarray], np.ndarray]]]:
    """name -> (bytes per token, encode-then-decode)."""
    import faiss

    dim = train.shape[1]

    def pq(m: int, nbits: int, sample: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        # Typed as the Quantizer it is: faiss's stub gives ProductQuantizer the SWIG
        # decode(code, x) -> None, but what runs is the wrapper faiss installs on every
        # quantizer (class_wrappers), Quantizer's decode(codes) -> vectors.
        quantizer: faiss.Quantizer = faiss.ProductQuantizer(dim, m, nbits)
        quantizer.train(np.ascontiguousarray(sample))
        return lambda x: quantizer.decode(quantizer.compute_codes(np.ascontiguousarray(x)))

    def residual(k: int, m: int, nbits: int) -> Callable[[np.ndarray], np.ndarray]:
        # PLAID-style: a coarse centroid per token (2 bytes for k <= 65,536), the residual
        # product-quantised.
        kmeans = faiss.Kmeans(dim, k, niter=12, seed=1)
        kmeans.train(train)
        trained = kmeans.centroids
        assert trained is not None  # set by train
        _, near = kmeans.index.search(train, 1)
        inner = pq(m, nbits, train - trained[near[:, 0]])

        def code(x: np.ndarray) -> np.ndarray:
            _, assigned = kmeans.index.search(x, 1)
            centroids = trained[assigned[:, 0]]
            return centroids + inner(x - centroids)

        return code

    def rq(m: int, nbits: int) -> Callable[[np.ndarray], np.ndarray]:
        quantizer = faiss.ResidualQuantizer(dim, m, nbits)
        quantizer.max_beam_size = 4
        quantizer.train(train)
        return lambda x: quantizer.decode(quantizer.compute_codes(np.ascontiguousarray(x)))

    return {
        "pq 32x4 (= pq1)": (16, pq(32, 4, train)),
        "pq 16x8": (16, pq(16, 8, train)),
        "rq 16x8 (beam 4)": (16, rq(16, 8)),
        "coarse 4096 + residual pq 16x8": (18, residual(4096, 16, 8)),
        "coarse 4096 + residual pq 32x4": (18, residual(4096, 32, 4)),
        "pq 32x8 (2 bits/dim, for scale)": (32, pq(32, 8, train)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--train", type=int, default=200_000, help="tokens to train on")
    parser.add_argument(
        "--errors",
        type=float,
        nargs="*",
        default=[0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.46],
        help="RMS error per token of the random-error sweep",
    )
    args = parser.parse_args(argv)
    corpus = SyntheticCorpus()
    tokens = corpus.pages(0, args.pages).reshape(-1, corpus.dim)
    queries, _ = corpus.queries(args.queries, args.pages)
    rng = np.random.default_rng(0)
    train = tokens[rng.choice(len(tokens), min(args.train, len(tokens)), replace=False)]
    q_flat = queries.reshape(-1, corpus.dim)
    q_offsets = np.arange(len(queries) + 1) * queries.shape[1]
    d_offsets = np.arange(args.pages + 1) * corpus.tokens_per_page

    def top10(vectors: np.ndarray) -> np.ndarray:
        scores = maxsim(q_flat, q_offsets, vectors, d_offsets, float64=True)
        return np.argsort(-scores, axis=1, kind="stable")[:, :10]

    exact = top10(tokens).tolist()
    rows: list[dict[str, Any]] = []
    for name, (size, code) in codecs(train).items():
        start = time.perf_counter()
        decoded = np.ascontiguousarray(code(tokens), dtype=np.float32)
        found = top10(decoded)
        rows.append(
            {
                "codec": name,
                "bytes_per_token": size,
                "kib_per_page_tokens": size * corpus.tokens_per_page / 1024,
                "rms_error": rms(decoded - tokens),
                "recall@10": recall(found, exact),
                "seconds": time.perf_counter() - start,
            }
        )
        print(
            f"  {name:<34} {size:3d} B/token  RMS error {rows[-1]['rms_error']:.3f}  "
            f"recall@10 {rows[-1]['recall@10']:.3f}",
            flush=True,
        )
    random_error = []
    for size in args.errors:
        noise = rng.standard_normal(tokens.shape, dtype=np.float32) * (size / np.sqrt(corpus.dim))
        random_error.append({"rms_error": size, "recall@10": recall(top10(tokens + noise), exact)})
        print(f"  random error {size:.3f}: recall@10 {random_error[-1]['recall@10']:.3f}")
    bound = [
        {"bytes_per_token": size, "rms_error_at_least": shannon_rms(corpus, 8 * size)}
        for size in (16, 18, 19, 32, 64)
    ]
    for row in bound:
        print(
            f"  Shannon: {row['bytes_per_token']} B/token -> RMS error >= {row['rms_error_at_least']:.3f}"
        )
    write_result(
        "codec_probe",
        {
            "pages": args.pages,
            "queries": args.queries,
            "rows": rows,
            "random_error": random_error,
            "shannon_bound": bound,
        },
    )


def rms(error: np.ndarray) -> float:
    """Root-mean-square over tokens of each token's error norm."""
    return float(np.sqrt(np.mean(np.sum(error.astype(np.float64) ** 2, axis=1))))


def shannon_rms(corpus: SyntheticCorpus, bits: float) -> float:
    """Least RMS error per token of any code of ``bits`` bits per token on ``corpus``'s pages,
    even told each token's direction: Shannon's lower bound on the Gaussian tangential noise
    (module docstring)."""
    d = corpus.dim
    per_dim = corpus.noise**2 / (d * (1.0 + corpus.noise**2))
    return float(np.sqrt((d - 1) * per_dim * 2.0 ** (-2.0 * bits / (d - 1))))


def table_codecs(r: dict[str, Any]) -> str:
    """Section 5b: each faiss codec's size and recall with every page rescored."""
    rows = [
        [x["codec"], x["bytes_per_token"], x["kib_per_page_tokens"], f"{x['recall@10']:.3f}"]
        for x in r["rows"]
    ]
    header = ["codec", "bytes/token", "KiB/page (tokens only)", "recall@10 (every page rescored)"]
    return render.table(header, rows)


def table_shannon(r: dict[str, Any]) -> str:
    """Section 5b: Shannon's least RMS error of any code of a given size on the generator."""
    bound = r["shannon_bound"]
    return render.table(
        ["bytes per token", *[str(x["bytes_per_token"]) for x in bound]],
        [
            [
                "least RMS error of any code (Shannon)",
                *[f"{x['rms_error_at_least']:.3f}" for x in bound],
            ]
        ],
    )


if __name__ == "__main__":
    main()
