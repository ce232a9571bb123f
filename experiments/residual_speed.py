"""Search speed of residual indexes against the float16 default, alternated in one process.

Run: ``python -m experiments.residual_speed [--sets vaswani mmlongbench] [--dtypes res4 res2]
[--depths 64 128] [--ks 10 100] [--rounds 5] [--docs N]``. Writes ``results/residual_speed.json``
(``_<set>`` for other sets, ``--name`` to choose).

Each set's indexes are built once through the API (one segment, as ``experiments.residual_codec``
builds them): float16 (the default index: 10,240-d FDE under PQ1280x4fs) and each residual dtype
(its default first stage, one index codebook). Then, for each k, every configuration searches the
whole query batch once per round, the configurations alternating inside each round: float16;
each residual dtype decoding every candidate (no depth); each residual dtype with
``refine_depth`` D, which decodes only each query's D best candidates by centroid interaction
(PLAID's pruning) and scores them in float32 with proven bounds before the exact pass; and,
with ``--centroids D ...``, the same depths over candidates found by the centroid first stage
(``--first-stage centroids``: PLAID's candidate generation) instead of the FDE. ``--dtypes
default float16-default float16-flat`` adds the index ``latemm index`` builds when given no
option (committed every 512 pages), the same with ``--dtype float16`` (the default before) and
``--dtype float16 --faiss Flat``, each searched with no option. Reported:
the median of the rounds' per-query times and its ratio to float16's in the same run, recall@10
against the exact float32 MaxSim top-10 over the unquantised vectors, nDCG@10 against the qrels,
and each index's bytes per page (every file).
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
from experiments.storage_quality import by_file
from index_store import Index, IndexConfig, create, default_fde_config
from index_store.codecs import is_residual
from latemm.index.pipeline import resolve_config, token_sample
from latemm.retrieval.retriever import Retriever

# What ``latemm index`` commits at (``index_corpus``'s commit_every).
COMMIT_EVERY = 512
# Indexes searched once, with no search option: what a user gets by default.
SEARCHED_AS_BUILT = ("default", "float16-default", "float16-flat")


def build(data: dict[str, Any], dtype: str) -> Index:
    """``dtype``'s index in one segment; ``default``: what ``latemm index`` builds when no
    option is given (``latemm.index.pipeline.resolve_config``), committed every ``COMMIT_EVERY``
    pages as it commits, and the same with ``--dtype float16`` (``float16-default``, the
    default before) and ``--dtype float16 --faiss Flat`` (``float16-flat``)."""
    path = CACHE / f"residual-speed-{data['set']}-{dtype}"
    shutil.rmtree(path, ignore_errors=True)
    if dtype in SEARCHED_AS_BUILT:  # as latemm index builds them
        named = {"default": "auto"}.get(dtype, "float16")
        factory = "Flat" if dtype == "float16-flat" else "auto"
        config = resolve_config(
            path, dim=data["dim"], encoder=None, dtype=named, faiss_factory=factory
        )
        every = COMMIT_EVERY
    else:
        config = IndexConfig(
            dim=data["dim"],
            dtype=dtype,
            fde=default_fde_config(data["dim"], dtype=dtype),
            residual_codebook="index" if is_residual(dtype) else "segment",
        )
        every = len(data["ids"])
    offsets = data["offsets"]
    with create(path, config) as writer:
        sample = token_sample([data["vectors"]]) if dtype == "default" else None
        if sample is not None:  # as latemm.index.pipeline.codebook_sample draws it from the file
            writer.train_vectors_codebook(sample)
        for a in range(0, len(data["ids"]), every):
            b = min(a + every, len(data["ids"]))
            rows = data["vectors"][offsets[a] : offsets[b]]
            writer.add(data["ids"][a:b], rows, offsets=offsets[a : b + 1] - offsets[a])
            writer.commit(final=b == len(data["ids"]))
    return Index.open(path)


def measure_set(
    data: dict[str, Any],
    dtypes: list[str],
    depths: list[int],
    ks: list[int],
    rounds: int,
    centroids: list[int] | None = None,
) -> dict[str, Any]:
    q, q_off = data["query_vectors"], data["query_offsets"]
    n_queries = q_off.size - 1
    exact = exact_top10(data)
    indexes = {dtype: build(data, dtype) for dtype in ["float16", *dtypes]}
    configs: dict[str, Retriever] = {"float16": Retriever(indexes["float16"])}
    for dtype in dtypes:
        # the search options of the rows below, named; the index's own defaults otherwise
        stage = None if dtype in SEARCHED_AS_BUILT else "fde"
        configs[dtype] = Retriever(indexes[dtype], first_stage=stage)
        if dtype in SEARCHED_AS_BUILT:
            continue
        for depth in depths:
            configs[f"{dtype} depth {depth}"] = Retriever(
                indexes[dtype], refine_depth=depth, first_stage="fde"
            )
        for depth in centroids or ():  # PLAID's candidate generation instead of the FDE
            configs[f"{dtype} centroids {depth}"] = Retriever(
                indexes[dtype], refine_depth=depth, first_stage="centroids"
            )
    by_k: dict[str, Any] = {}
    for k in ks:
        times: dict[str, list[float]] = {name: [] for name in configs}
        found: dict[str, Any] = {}
        for retriever in configs.values():  # warm-up: tables, page cache
            retriever.search_embeddings(q, q_off, k=k)
        for _ in range(rounds):
            for name, retriever in configs.items():
                start = time.perf_counter()
                result = retriever.search_embeddings(q, q_off, k=k, query_ids=data["query_ids"])
                times[name].append((time.perf_counter() - start) / n_queries)
                found[name] = result
        base = float(np.median(times["float16"]))
        rows = []
        for name, runs in times.items():
            result = found[name]
            median = float(np.median(runs))
            dtype = name.split()[0]
            config = indexes[dtype].config
            rows.append(
                {
                    "config": name,
                    "dtype": config.dtype,
                    "faiss_factory": config.faiss_factory,
                    "refine_depth": configs[name].refine_depth,
                    "first_stage": configs[name].first_stage,
                    "bytes_per_doc_all_files": sum(by_file(indexes[dtype].path).values())
                    / data["documents"],
                    "search_s_per_query": median,
                    "search_s_per_query_runs": runs,
                    "ratio_to_float16": median / base,
                    "recall@10": _recall([list(r)[:10] for r in result.doc_ids], exact),
                    "ndcg@10": _ndcg(result.to_run(), data["qrels"]),
                }
            )
            print(
                f"{data['set']:>16} k={k:<4} {name:>16}: {median * 1e3:7.2f} ms/query "
                f"({median / base:.2f}x float16), recall@10 {rows[-1]['recall@10']:.3f}",
                flush=True,
            )
        by_k[str(k)] = rows
    for index in indexes.values():
        shutil.rmtree(index.path, ignore_errors=True)
    keys = ("set", "documents", "tokens", "dim")
    return {key: data[key] for key in keys} | {"by_k": by_k}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sets", nargs="+", default=["vaswani"], choices=("vaswani", "mmlongbench")
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=["res4"],
        choices=("res1", "res2", "res4", *SEARCHED_AS_BUILT),
        help="besides float16: residual dtypes (searched decoding every candidate, then at "
        "each depth), or searched with no option: default (what latemm index builds, committed "
        "every 512 pages), float16-default (the same with --dtype float16, the default before) "
        "and float16-flat (--dtype float16 --faiss Flat)",
    )
    parser.add_argument("--depths", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--ks", nargs="+", type=int, default=[10, 100])
    parser.add_argument(
        "--centroids",
        nargs="+",
        type=int,
        default=[],
        help="depths searched with the centroid first stage (--first-stage centroids)",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--docs", type=int, default=None, help="first N Vaswani abstracts")
    parser.add_argument("--name", default=None, help="results file name")
    args = parser.parse_args(argv)
    name = args.name or "residual_speed" + "".join(
        f"_{s}" for s in args.sets if args.sets != ["vaswani"]
    )
    sets = []
    for set_name in args.sets:
        data = vaswani_set(args.docs) if set_name == "vaswani" else mmlongbench_set()
        sets.append(
            measure_set(data, args.dtypes, args.depths, args.ks, args.rounds, args.centroids)
        )
        path = write_result(
            name,
            {"sets": sets, "timings": "alternated within each round, one process, 2 cores"},
        )
    print(f"wrote {path}")


def table_residual_speed(r: dict[str, Any]) -> str:
    """Section 5d: residual searches with and without a refine depth against the float16
    default, alternated in one process (``experiments.residual_speed``)."""
    out = []
    for block in r["sets"]:
        rows = [
            [
                k,
                x["config"],
                f"{x['bytes_per_doc_all_files'] / 1024:.2f}",
                f"{x['search_s_per_query'] * 1e3:.2f}",
                f"{x['ratio_to_float16']:.2f}x",
                f"{x['recall@10']:.3f}",
                f"{x['ndcg@10']:.4f}" if isinstance(x["ndcg@10"], float) else "-",
            ]
            for k, xs in block["by_k"].items()
            for x in xs
        ]
        header = ["k", "search", "KiB/page", "ms/query", "vs float16", "recall@10", "nDCG@10"]
        out.append(f"{block['set']}: {block['documents']:,} pages.\n\n{render.table(header, rows)}")
    return f"{render.provenance(r)}\n\n" + "\n\n".join(out)


if __name__ == "__main__":
    main()
