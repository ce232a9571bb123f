"""Which vectors should a new residual index's codebook be trained on? Recall of the default
index (res4 searched by its centroids, committed every 512 pages as ``latemm index`` commits)
when its codebook is trained on different draws of the same corpus.

Run: ``python -m experiments.codebook_draw [--sets mmlongbench vaswani]``. Writes
``results/codebook_draw.json``.

Draws (each trains the codebook before the build, ``IndexWriter.train_vectors_codebook``, except
``first``):

- ``first``: none; the build trains on the first ``INDEX_CODEBOOK_VECTORS`` vectors it adds (what
  a build did before any draw, and what a build still does when the draw finds bad input);
- ``pages``: whole pages at random until ``CODEBOOK_SAMPLE_VECTORS`` vectors, at most half of
  them (``latemm.index.pipeline.page_draw``: what an encoder's build draws, and what a build of
  precomputed vectors drew before ``token_sample``);
- ``tokens``: ``CODEBOOK_SAMPLE_VECTORS`` vectors drawn uniformly over every page
  (``latemm.index.pipeline.token_sample``: what a build of precomputed vectors draws now).

Reported: recall@10 against the exact float32 MaxSim top-10, nDCG@10 against the qrels, and the
build's seconds (the draw excluded).
"""

from __future__ import annotations

import argparse
import shutil
import time
from typing import Any

import numpy as np

from experiments import render
from experiments.codec_sets import mmlongbench_set
from experiments.common import CACHE, write_result
from experiments.residual_codec import _ndcg, _recall, exact_top10, vaswani_set
from experiments.residual_speed import COMMIT_EVERY
from index_store import Index, create
from latemm.index.pipeline import page_draw, resolve_config, token_sample
from latemm.retrieval.retriever import Retriever

DRAWS = ("first", "pages", "tokens")
BATCH = 64  # latemm index's --batch-size


def draw(data: dict[str, Any], how: str) -> np.ndarray | None:
    """The vectors ``how`` trains the codebook on (None: the build trains on its first ones)."""
    vectors, offsets = data["vectors"], data["offsets"]
    if how == "tokens":
        return token_sample([vectors])
    if how == "pages":

        def read(rows: np.ndarray) -> np.ndarray:
            return np.concatenate([vectors[offsets[r] : offsets[r + 1]] for r in rows])

        return page_draw(read, np.arange(len(data["ids"])), BATCH)
    return None


def measure(data: dict[str, Any], how: str, exact: list[set[str]]) -> dict[str, Any]:
    path = CACHE / f"codebook-draw-{data['set']}-{how}"
    shutil.rmtree(path, ignore_errors=True)
    config = resolve_config(path, dim=data["dim"], encoder=None)
    sample = draw(data, how)
    offsets, n = data["offsets"], len(data["ids"])
    start = time.perf_counter()
    with create(path, config) as writer:
        if sample is not None:
            writer.train_vectors_codebook(sample)
        for a in range(0, n, COMMIT_EVERY):
            b = min(a + COMMIT_EVERY, n)
            rows = data["vectors"][offsets[a] : offsets[b]]
            writer.add(data["ids"][a:b], rows, offsets=offsets[a : b + 1] - offsets[a])
            writer.commit(final=b == n)
    build_s = time.perf_counter() - start
    index = Index.open(path)
    result = Retriever(index).search_embeddings(
        data["query_vectors"], data["query_offsets"], k=10, query_ids=data["query_ids"]
    )
    row = {
        "draw": how,
        "sample_vectors": None if sample is None else int(len(sample)),
        "recall@10": _recall([list(r)[:10] for r in result.doc_ids], exact),
        "ndcg@10": _ndcg(result.to_run(), data["qrels"]),
        "build_s": build_s,
        "first_stage": index.config.first_stage,
        "dtype": index.config.dtype,
    }
    shutil.rmtree(path, ignore_errors=True)
    print(f"{data['set']:>18} {how:>7}: recall@10 {row['recall@10']:.3f}", flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sets", nargs="+", default=["mmlongbench", "vaswani"], choices=("vaswani", "mmlongbench")
    )
    parser.add_argument("--draws", nargs="+", default=list(DRAWS), choices=DRAWS)
    parser.add_argument("--name", default="codebook_draw", help="results file name")
    args = parser.parse_args(argv)
    sets = []
    for name in args.sets:
        data = vaswani_set(None) if name == "vaswani" else mmlongbench_set()
        exact = exact_top10(data)
        rows = [measure(data, how, exact) for how in args.draws]
        keys = ("set", "documents", "tokens", "dim")
        sets.append({key: data[key] for key in keys} | {"rows": rows})
        path = write_result(args.name, {"sets": sets})
    print(f"wrote {path}")


def table_codebook_draw(*runs: dict[str, Any]) -> str:
    """Section 5d: the default index's recall with its codebook trained on the first vectors
    added, on whole pages drawn at random, or on tokens drawn over every page
    (``experiments.codebook_draw``)."""
    out = []
    for r in runs:
        rows = [
            [
                block["set"],
                x["draw"],
                "-" if x["sample_vectors"] is None else f"{x['sample_vectors']:,}",
                f"{x['recall@10']:.3f}",
                f"{x['ndcg@10']:.4f}" if isinstance(x["ndcg@10"], float) else "-",
            ]
            for block in r["sets"]
            for x in block["rows"]
        ]
        header = ["set", "codebook trained on", "vectors drawn", "recall@10", "nDCG@10"]
        out.append(f"{render.provenance(r)}\n\n{render.table(header, rows)}")
    return "\n\n".join(out)


if __name__ == "__main__":
    main()
