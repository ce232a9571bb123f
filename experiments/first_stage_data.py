"""FDE-only ColPali-shaped corpora for first-stage benchmarks, cached under ``experiments/cache``.

A first stage sees documents only through their FDEs, so a 100k-page benchmark needs the FDEs
(not the pages) plus, for recall, each query's exact MaxSim top-10 over all pages. Both are
computed here in one streaming pass over the regenerated pages (``experiments.synthetic``): page
batches are generated, encoded and scored against the queries, then dropped. The FDEs are kept as
float16 on disk (2 GB at 100k pages; the first stage only ever reads them to train and encode).

Run: ``python -m experiments.first_stage_data --pages 100000 --queries 20``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from pathlib import Path

import numpy as np

from experiments.common import CACHE
from experiments.synthetic import SyntheticCorpus
from fde import encode_documents, encode_queries
from index_store import default_fde_config
from latemm.ranking.scoring import maxsim


def cache_path(pages: int, queries: int) -> Path:
    return CACHE / f"first-stage-colpali-{pages}-{queries}"


def _pages(bounds: tuple[int, int]) -> np.ndarray:
    return SyntheticCorpus().pages(*bounds)


def build(
    pages: int, queries: int, *, batch: int = 250, device: str | None = None, workers: int = 1
) -> Path:
    """Write ``fde.npy`` (pages, D) float16, ``exact.npy`` (Q, pages) float32,
    ``query_fde.npy`` (Q, D) float32 and the query vectors; returns the folder."""
    out = cache_path(pages, queries)
    if (out / "done").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    corpus = SyntheticCorpus()
    config = default_fde_config(corpus.dim)
    q3, _ = corpus.queries(queries, pages)
    q_flat = q3.reshape(-1, corpus.dim)
    q_offsets = np.arange(queries + 1, dtype=np.int64) * corpus.query_tokens
    np.save(out / "query_vectors.npy", q3)
    np.save(out / "query_fde.npy", encode_queries(q_flat, config, offsets=q_offsets))
    fde = np.lib.format.open_memmap(
        out / "fde.npy", mode="w+", dtype=np.float16, shape=(pages, config.output_dimension)
    )
    exact = np.zeros((queries, pages), dtype=np.float32)
    start_time = time.perf_counter()
    bounds = [(start, min(pages, start + batch)) for start in range(0, pages, batch)]
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    blocks = pool.imap(_pages, bounds) if pool is not None else map(_pages, bounds)
    for (start, stop), block in zip(bounds, blocks, strict=True):
        flat = block.reshape(-1, corpus.dim)
        offsets = np.arange(stop - start + 1, dtype=np.int64) * corpus.tokens_per_page
        fde[start:stop] = encode_documents(flat, config, offsets=offsets, device=device).astype(
            np.float16
        )
        exact[:, start:stop] = maxsim(q_flat, q_offsets, flat, offsets, device=device)
        if (start // batch) % 20 == 0:
            rate = stop / (time.perf_counter() - start_time)
            print(f"  {stop} / {pages} pages ({rate:.0f} pages/s)", flush=True)
    if pool is not None:
        pool.close()
    fde.flush()
    np.save(out / "exact.npy", exact)
    (out / "done").write_text("ok\n")
    return out


def load(
    pages: int, queries: int, *, batch: int = 250, device: str | None = None, workers: int = 1
) -> dict[str, np.ndarray]:
    """The cached data (built first when missing, ``build``'s options); ``fde`` memory-mapped."""
    folder = build(pages, queries, batch=batch, device=device, workers=workers)
    return {
        "fde": np.load(folder / "fde.npy", mmap_mode="r"),
        "exact": np.load(folder / "exact.npy"),
        "query_fde": np.load(folder / "query_fde.npy"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--device", default=None, help="torch device for FDE and MaxSim")
    parser.add_argument("--workers", type=int, default=1, help="processes generating pages")
    args = parser.parse_args(argv)
    print(build(args.pages, args.queries, device=args.device, workers=args.workers))


if __name__ == "__main__":
    main()
