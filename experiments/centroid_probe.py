"""How many centroids per query token the centroid first stage should probe, and what its
candidates keep: recall@10 against the exact float32 MaxSim top-10 of a res4 index searched with
``--first-stage centroids`` at several probes (``latemm.retrieval.retriever.CENTROID_PROBE`` is the
default) and depths, beside the same depths over every page (probing every centroid) and over
the FDE's default 512 candidates. Recall only, no timings (``experiments.residual_speed`` times
the searches).

Run: ``python -m experiments.centroid_probe [--sets mmlongbench vaswani] [--probes 1 2 4 8]
[--depths 64 128 256]``. Writes ``results/centroid_probe.json``.
"""

from __future__ import annotations

import argparse
import shutil
from typing import Any

from experiments import render
from experiments.codec_sets import mmlongbench_set
from experiments.common import write_result
from experiments.residual_codec import _recall, exact_top10, vaswani_set
from experiments.residual_speed import build
from latemm.retrieval.retriever import (
    DEFAULT_CANDIDATES,
    Retriever,
    centroid_first_stage,
    doc_ids_of,
    first_stage_queries,
    gather,
    rescore,
    top_k,
)

ALL = 1 << 30  # probes: every centroid, so every page is a candidate


def measure(data: dict[str, Any], probes: list[int], depths: list[int]) -> dict[str, Any]:
    exact = exact_top10(data)
    index = build(data, "res4")
    flat, offsets = data["query_vectors"], data["query_offsets"]
    retriever = Retriever(index)
    allowed = retriever._allowed(None)
    rows: list[dict[str, Any]] = []
    for depth in depths:
        fde = Retriever(index, refine_depth=depth).search_embeddings(flat, offsets, k=10)
        found = [list(r) for r in fde.doc_ids]
        rows.append({"first_stage": "fde", "probe": None, "depth": depth, "candidates": 512})
        rows[-1]["recall@10"] = _recall(found, exact)
        for probe in [*probes, ALL]:
            queries = first_stage_queries(index, flat, offsets, centroids=True)
            cands = centroid_first_stage(index, queries, depth, allowed, probe=probe)
            scores = rescore(index, flat, offsets, cands, k=10, refine_depth=depth)
            ids = doc_ids_of(index, cands)
            picks = top_k(ids, scores, 10)
            found = [list(r) for r in gather(ids, picks, fill=None)]
            rows.append(
                {
                    "first_stage": "centroids",
                    "probe": "all" if probe == ALL else probe,
                    "depth": depth,
                    "candidates": depth,
                    "recall@10": _recall(found, exact),
                }
            )
            print(f"{data['set']} depth {depth} probe {rows[-1]['probe']}: "
                  f"recall@10 {rows[-1]['recall@10']:.3f}", flush=True)  # fmt: skip
    shutil.rmtree(index.path, ignore_errors=True)
    keys = ("set", "documents", "tokens", "dim")
    return {key: data[key] for key in keys} | {"fde_candidates": DEFAULT_CANDIDATES, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sets", nargs="+", default=["mmlongbench"], choices=("vaswani", "mmlongbench")
    )
    parser.add_argument("--probes", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--depths", nargs="+", type=int, default=[64, 128, 256])
    args = parser.parse_args(argv)
    sets = []
    for name in args.sets:
        data = vaswani_set(None) if name == "vaswani" else mmlongbench_set()
        sets.append(measure(data, args.probes, args.depths))
        path = write_result("centroid_probe", {"sets": sets})
    print(f"wrote {path}")


def table_centroid_probe(r: dict[str, Any]) -> str:
    """Section 5d: recall@10 of the centroid first stage by probes and depth, beside the FDE's
    default candidates at the same depths (``experiments.centroid_probe``)."""
    rows = [
        [
            block["set"],
            x["first_stage"],
            "-" if x["probe"] is None else x["probe"],
            x["depth"],
            x["candidates"],
            f"{x['recall@10']:.3f}",
        ]
        for block in r["sets"]
        for x in block["rows"]
    ]
    header = ["set", "first stage", "probes", "depth", "candidates", "recall@10"]
    return f"{render.provenance(r)}\n\n{render.table(header, rows)}"


if __name__ == "__main__":
    main()
