"""Encode + index on Ray against the in-process pipeline, and a plan for 10M ColPali pages.

Run: ``python -m experiments.bench_ray [--quick]``. MiniLM (real weights) on Vaswani abstracts:
the in-process ``index_corpus`` (torch on all cores) and ``latemm.runs.distributed.index_ray`` with
1 and 2 encoder actors (one torch thread each) on a local Ray cluster over this machine's cores,
into a 2-shard index, all in the same run; each job is timed end to end (model loading
included; the cluster's start-up is reported apart). Then the search overhead of serving the
shards from Ray actors against searching them in-process, and the agreement of the top-10s.

The 10M-page plan is computed from ``results/bench_index.json`` (bytes per page, float16) and
``results/bench_search.json`` (per-index latency and batch throughput at each measured size):
the shard size that costs the fewest core-seconds per query, nodes of ``--node-cores`` cores
with 2 cores per shard actor (as measured). Writes ``results/bench_ray.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from experiments import render
from experiments.common import (
    RESULTS,
    minilm_path,
    read_trec_docs,
    read_trec_topics,
    shared_data_dir,
    write_result,
)
from experiments.render import Sources


def _corpus(path: Path, n_docs: int) -> list[str]:
    ids, texts = read_trec_docs(shared_data_dir() / "vaswani" / "doc-text.trec")
    pq.write_table(pa.table({"doc_id": ids[:n_docs], "text": texts[:n_docs]}), path)
    return ids[:n_docs]


def _in_process(corpus: Path, out: Path) -> dict[str, Any]:
    import torch

    from latemm.encoders import load_encoder
    from latemm.index.pipeline import index_corpus

    start = time.perf_counter()
    encoder = load_encoder(minilm_path())
    report = index_corpus(corpus, out, encoder=encoder, progress=False)
    seconds = time.perf_counter() - start
    return {
        "system": "in-process index_corpus",
        "workers": 1,
        "torch_threads_per_worker": torch.get_num_threads(),
        "seconds": seconds,
        "docs_per_s": report.documents / seconds,
    }


def _on_ray(corpus: Path, out: Path, workers: int, shards: int) -> dict[str, Any]:
    import ray

    from latemm.runs.distributed import _workers, index_ray

    _, _, cpus = _workers(ray, workers)
    start = time.perf_counter()
    report = index_ray(
        corpus, out, encoder=minilm_path(), num_shards=shards, workers=workers, batch_size=64
    )
    seconds = time.perf_counter() - start
    return {
        "system": f"Ray Data, {workers} encoder actor(s), {shards} shards",
        "workers": workers,
        "cpus_per_actor": cpus,
        "torch_threads_per_worker": max(1, round(cpus)),
        "seconds": seconds,
        "docs_per_s": report.documents / seconds,
    }


def _search_overhead(single: Path, sharded: Path, repeats: int) -> dict[str, Any]:
    """Queries/s of one in-process index against the same corpus's shards on Ray actors."""
    from latemm.encoders import load_encoder
    from latemm.retrieval.field_search import OneFieldRetriever
    from latemm.retrieval.retriever import Retriever
    from latemm.runs.jobs import open_retriever

    _, topics = read_trec_topics(shared_data_dir() / "vaswani" / "query-text.trec")
    queries = load_encoder(minilm_path()).encode_queries(topics)
    one = Retriever(single)
    local = OneFieldRetriever(sharded)
    actors = open_retriever(sharded, ray="local")
    out: dict[str, Any] = {"queries": len(topics)}
    results = {}
    for name, retriever in (
        ("one index", one),
        ("shards in-process", local),
        ("shards on Ray actors", actors),
    ):
        retriever.search_embeddings(queries.vectors, queries.offsets, k=10)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            results[name] = retriever.search_embeddings(queries.vectors, queries.offsets, k=10)
        out[name] = {"batch_queries_per_s": repeats * len(topics) / (time.perf_counter() - start)}
        single_start = time.perf_counter()
        for q in range(min(20, len(topics))):
            vectors = queries.vectors[queries.offsets[q] : queries.offsets[q + 1]]
            retriever.search_embeddings([vectors], k=10)
        out[name]["ms_per_query_one_at_a_time"] = (
            (time.perf_counter() - single_start) / min(20, len(topics)) * 1e3
        )
    actors.close()
    base = results["one index"].doc_ids
    out["top10_agreement_with_one_index"] = {
        name: float(
            np.mean([len(set(a) & set(b)) / 10 for a, b in zip(r.doc_ids, base, strict=True)])
        )
        for name, r in results.items()
    }
    return out


def plan_10m(
    node_cores: int = 32, pages: int = 10_000_000, cores_per_shard: int = 2
) -> dict[str, Any]:
    """Shards, nodes, RAM, disk and queries/s for ``pages`` ColPali pages, from the committed
    single-machine measurements (2 cores per index there, so 2 cores per shard actor here)."""
    from index_store import default_fde_config

    index = json.loads((RESULTS / "bench_index.json").read_text(encoding="utf-8"))
    search = json.loads((RESULTS / "bench_search.json").read_text(encoding="utf-8"))
    bytes_per_page = max(
        g["bytes_per_document"] for g in index["growth"] if g["dtype"] == "float16"
    )
    fde_bytes = default_fde_config(128).output_dimension * 4  # Flat faiss index: float32 FDEs
    options = []
    for size in search["colpali"]:
        exact = next(x for x in size["latemm"] if x["candidates"] == 512)
        core_s = cores_per_shard / exact["batch_queries_per_s"]  # per query, per shard
        shards = math.ceil(pages / size["documents"])
        options.append(
            {
                "shard_pages": size["documents"],
                "shards": shards,
                "recall@10_at_C512": exact["recall@10"],
                "shard_latency_s": exact["latency_s_median"],
                "core_seconds_per_query": core_s * shards,
            }
        )
    best = min(options, key=lambda o: o["core_seconds_per_query"])
    per_node = node_cores // cores_per_shard
    nodes = math.ceil(best["shards"] / per_node)
    shard_disk = best["shard_pages"] * bytes_per_page
    return {
        "pages": pages,
        "dtype": "float16",
        "bytes_per_page": bytes_per_page,
        "fde_bytes_per_page": fde_bytes,
        "options": options,
        "shard_pages": best["shard_pages"],
        "shards": best["shards"],
        "node_cores": node_cores,
        "shards_per_node": per_node,
        "nodes": nodes,
        "disk_per_node_gb": per_node * shard_disk / 1e9,
        "disk_total_tb": pages * bytes_per_page / 1e12,
        # Resident: each shard's FDE index (faiss Flat is read into memory); the vectors are
        # memory-mapped and only the candidates' pages are touched (512 x 264 KB per query).
        "ram_fde_per_node_gb": per_node * best["shard_pages"] * fde_bytes / 1e9,
        "expected_latency_s": best["shard_latency_s"],
        "expected_queries_per_s": nodes * node_cores / best["core_seconds_per_query"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="400 abstracts instead of 3,000")
    parser.add_argument("--docs", type=int, default=None)
    parser.add_argument("--node-cores", type=int, default=32)
    args = parser.parse_args(argv)
    n_docs = args.docs or (400 if args.quick else 3000)
    try:
        import ray
    except ImportError:
        print("bench_ray: Ray is not installed (pip install 'latemm[ray]'); skipped")
        return

    cores = os.cpu_count() or 1
    start = time.perf_counter()
    # A small object store, and no OOM killer: this machine's memory is shared with other
    # jobs whose usage would otherwise get Ray workers killed mid-run.
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    ray.init(
        num_cpus=cores,
        object_store_memory=1_000_000_000,
        include_dashboard=False,
        log_to_driver=False,
    )
    startup = time.perf_counter() - start
    tmp = Path(tempfile.mkdtemp(prefix="latemm-bench-ray-"))
    try:
        corpus = tmp / "corpus.parquet"
        _corpus(corpus, n_docs)
        rows = [_in_process(corpus, tmp / "single")]
        print(rows[-1], flush=True)
        for workers in (1, 2):
            rows.append(_on_ray(corpus, tmp / f"ray-{workers}", workers, shards=2))
            print(rows[-1], flush=True)
        base = rows[0]["docs_per_s"]
        for row in rows:
            row["throughput_vs_in_process"] = row["docs_per_s"] / base
        search = _search_overhead(tmp / "single", tmp / "ray-2", repeats=1 if args.quick else 3)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    payload = {
        "documents": n_docs,
        "cores": cores,
        "ray_cluster_start_s": startup,
        "note": "Every job timed end to end, model loading included. In-process: one process, "
        "torch on all cores. Ray: a local cluster over the same cores; each encoder actor gets "
        "(cores - 1) / workers CPUs and one torch thread, the index tasks one CPU each.",
        "encode_index": rows,
        "search": search,
        "plan_10m_colpali": plan_10m(args.node_cores),
    }
    print(json.dumps(payload["plan_10m_colpali"], indent=1))
    write_result("bench_ray_quick" if args.quick else "bench_ray", payload)


# ------------------------------------------------------------------------------ report
def render_section(r: dict[str, Any], sources: Sources) -> str:
    out = [
        "## 7b. Beyond one machine: Ray, and a plan for 10M ColPali pages",
        render.provenance(r),
        "",
    ]
    out.append(
        f"Encode + index of {r['documents']:,} Vaswani abstracts with MiniLM, each job end to end "
        f"(model loading included) on this {r['cores']}-core machine; the local Ray cluster took "
        f"{r['ray_cluster_start_s']:.1f} s to start (not included). {r['note']}\n"
    )
    out.append(
        render.table(
            ["system", "torch threads per worker", "docs/s", "throughput vs in-process"],
            [
                [
                    x["system"],
                    x["torch_threads_per_worker"],
                    x["docs_per_s"],
                    x["throughput_vs_in_process"],
                ]
                for x in r["encode_index"]
            ],
        )
    )
    s = r["search"]
    names = [n for n in s if isinstance(s[n], dict) and "batch_queries_per_s" in s[n]]
    out.append(
        f"\nSearch of the {s['queries']} Vaswani queries (k=10, default candidates) over the same "
        "corpus: one index, its 2 shards in-process, its 2 shards on Ray actors:\n"
    )
    out.append(
        render.table(
            [
                "search",
                "queries/s (batch)",
                "ms/query (one at a time)",
                "top-10 agreement with one index",
            ],
            [
                [
                    n,
                    s[n]["batch_queries_per_s"],
                    s[n]["ms_per_query_one_at_a_time"],
                    s["top10_agreement_with_one_index"][n],
                ]
                for n in names
            ],
        )
    )
    out.append(
        "\nEach shard rescores its own default 512 candidates, so 2 shards do up to twice the "
        "MaxSim work of one index (and see more candidates: agreement below 1 is the one index "
        "missing a document, not the shards); in-process the shards run one after the other, on "
        "Ray side by side. The encode figures share 2 cores with other jobs: a Ray actor's single "
        "torch thread fared better than the in-process job's two, so read the ratios as rough."
    )
    p = r["plan_10m_colpali"]
    out.append(
        f"\n**Plan for {p['pages']:,} ColPali pages** ({p['dtype']}, {p['bytes_per_page'] / 1024:.0f} KiB/page "
        f"from section 2; per-index latency and throughput at 512 candidates from section 3, measured "
        "with 2 cores per index, so each shard actor gets 2 cores). Core-seconds per query for "
        "the whole corpus at each measured shard size:\n"
    )
    out.append(
        render.table(
            [
                "shard size (pages)",
                "shards",
                "recall@10 per shard",
                "shard latency ms",
                "core-s per query",
            ],
            [
                [
                    o["shard_pages"],
                    o["shards"],
                    o["recall@10_at_C512"],
                    o["shard_latency_s"] * 1e3,
                    o["core_seconds_per_query"],
                ]
                for o in p["options"]
            ],
        )
    )
    out.append(
        f"\nWith the cheapest, {p['shards']} shards of {p['shard_pages']:,} pages on "
        f"{p['node_cores']}-core nodes ({p['shards_per_node']} shards per node): **{p['nodes']} nodes**, "
        f"each with {p['disk_per_node_gb']:,.0f} GB of index on local disk ({p['disk_total_tb']:.1f} TB "
        f"in all) and {p['ram_fde_per_node_gb']:.0f} GB of resident FDE indexes (faiss Flat, "
        f"{p['fde_bytes_per_page'] / 1024:.0f} KiB/page) plus page cache for the memory-mapped vectors "
        f"(a query touches 512 candidates per shard). Every query visits every shard, so the "
        f"expected latency is one shard's, ~{p['expected_latency_s'] * 1e3:.0f} ms plus the scatter/merge "
        f"overhead above, and the cluster answers ~{p['expected_queries_per_s']:.0f} queries/s "
        "(CPU-bound; replicate the shard set for more). Encoding 10M pages is GPU work that was "
        "not measured here (no GPU was lent): `latemm index --ray` runs one ColPali replica per GPU."
    )
    return "\n".join(out)


if __name__ == "__main__":
    main()
