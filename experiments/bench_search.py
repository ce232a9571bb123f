"""Search benchmark: latemm (FDE + faiss, then exact MaxSim) against brute-force MaxSim and
fast-plaid, on ColPali-shaped synthetic pages and on MiniLM-embedded Vaswani.

Run: ``python -m experiments.bench_search [--quick] [--sizes 10000 30000 100000]``.
Writes ``results/bench_search.json`` and ``results/bench_search.png``.

For every corpus size, in one process and with the same threads (torch and faiss on all cores):
- exact top-10 for every query by brute force (one batched pass), the recall reference;
- brute-force latency: one query against the whole corpus (one matrix product per block of
  pages, a max per page, a sum per query; ``latemm.ranking.scoring.maxsim``), median of a few
  queries;
- latemm latency (one query per call) and throughput (all queries in one call) and recall@10 for
  several candidate counts C;
- fast-plaid (its own venv) on the same vectors where the corpus fits its in-memory build;
- the MaxSim kernel alone against this machine's matrix-product peak for the same shapes.
"""

from __future__ import annotations

import argparse
import re
import resource
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments import render
from experiments.common import CACHE, RESULTS, median_time, vaswani_minilm, write_result
from experiments.render import Sources
from experiments.synthetic import SyntheticCorpus
from index_store import Index, IndexConfig, create
from latemm.ranking.scoring import maxsim
from latemm.retrieval.retriever import Retriever

CANDIDATES = [64, 128, 256, 512, 1024]


def build_synthetic_index(n_docs: int, corpus: SyntheticCorpus) -> Path:
    path = CACHE / f"search-colpali-{n_docs}"
    if (path / "manifest.json").is_file() and len(Index.open(path, verify="none")) == n_docs:
        return path
    shutil.rmtree(path, ignore_errors=True)
    with create(path, IndexConfig(dim=corpus.dim)) as writer:
        for start, pages in corpus.batches(n_docs, batch=2048):
            ids = [f"p{start + i}" for i in range(len(pages))]
            writer.add(
                ids,
                pages.reshape(-1, corpus.dim),
                offsets=np.arange(len(pages) + 1) * corpus.tokens_per_page,
            )
            writer.commit()
            print(f"  built {start + len(pages)}/{n_docs}", flush=True)
    return path


def exact_topk(
    index: Index, q_flat: np.ndarray, q_off: np.ndarray, k: int
) -> tuple[list[list[str]], float]:
    """Exact top-k ids per query over the whole index, and the seconds the batched pass took."""
    start = time.perf_counter()
    best_ids: list[list[str]] = [[] for _ in range(q_off.size - 1)]
    best_scores = np.full((q_off.size - 1, 0), -np.inf, dtype=np.float32)
    for s, seg in enumerate(index.segments):
        rows = np.flatnonzero(seg.live)
        vectors, offsets = index.vectors(s, rows)
        scores = maxsim(q_flat, q_off, vectors, offsets)
        merged = np.concatenate([best_scores, scores], axis=1)
        ids = [b + list(seg.doc_ids[rows]) for b in best_ids]
        top = np.argsort(-merged, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(merged, top, 1)
        best_ids = [[ids[q][j] for j in top[q]] for q in range(len(ids))]
    return best_ids, time.perf_counter() - start


def brute_force_latency(index: Index, query: np.ndarray) -> float:
    """One query against every stored page, blocks of pages per matrix product."""
    offsets = np.array([0, len(query)])

    def run() -> None:
        for s, seg in enumerate(index.segments):
            vectors, doc_offsets = index.vectors(s, np.flatnonzero(seg.live))
            maxsim(query, offsets, vectors, doc_offsets)

    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def recall(found: np.ndarray, exact: list[list[str]]) -> float:
    return float(
        np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found.tolist(), exact, strict=True)])
    )


def evaluate_latemm(
    index: Index,
    queries: list[np.ndarray],
    exact: list[list[str]],
    candidates: list[int],
    k: int = 10,
) -> list[dict[str, float]]:
    retriever = Retriever(index)
    rows = []
    for c in candidates:
        retriever.search_embeddings(queries[:1], k=k, candidates=c)  # warm-up (faiss load)
        latencies = []
        for q in queries[: min(len(queries), 20)]:
            t0 = time.perf_counter()
            retriever.search_embeddings([q], k=k, candidates=c)
            latencies.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = retriever.search_embeddings(queries, k=k, candidates=c)
        batch = time.perf_counter() - t0
        rows.append(
            {
                "candidates": c,
                "recall@10": recall(result.doc_ids, exact),
                "latency_s_median": float(np.median(latencies)),
                "batch_queries_per_s": len(queries) / batch,
            }
        )
        print(
            f"    C={c:5d} recall@10={rows[-1]['recall@10']:.3f} latency={rows[-1]['latency_s_median'] * 1e3:.1f} ms batch={rows[-1]['batch_queries_per_s']:.1f} q/s"
        )
    return rows


def kernel_efficiency(n_pages: int = 500) -> dict[str, float]:
    """MaxSim throughput against the matrix product of the same shapes (the physical limit)."""
    corpus = SyntheticCorpus()
    pages = corpus.pages(0, n_pages).reshape(-1, corpus.dim)
    offsets = np.arange(n_pages + 1) * corpus.tokens_per_page
    query = corpus.queries(1, n_pages)[0][0]
    flops = 2.0 * pages.shape[0] * corpus.dim * len(query)
    t_kernel = median_time(lambda: maxsim(query, np.array([0, len(query)]), pages, offsets))
    t_kernel16 = median_time(
        lambda: maxsim(query, np.array([0, len(query)]), pages.astype(np.float16), offsets)
    )
    a, b = torch.from_numpy(pages), torch.from_numpy(query).T.contiguous()
    t_mm = median_time(lambda: a @ b)
    sq = torch.randn(2048, 2048)
    t_sq = median_time(lambda: sq @ sq)
    return {
        "pages": n_pages,
        "maxsim_gflops": flops / t_kernel / 1e9,
        "maxsim_float16_storage_gflops": flops / t_kernel16 / 1e9,
        "matmul_same_shape_gflops": flops / t_mm / 1e9,
        "matmul_2048_cubed_gflops": 2 * 2048**3 / t_sq / 1e9,
        "fraction_of_same_shape_peak": t_mm / t_kernel,
    }


def run_size(n_docs: int, n_queries: int, with_plaid: bool) -> dict[str, object]:
    corpus = SyntheticCorpus()
    print(f"[{n_docs} pages]", flush=True)
    path = build_synthetic_index(n_docs, corpus)
    index = Index.open(path, verify="none")
    q3, _ = corpus.queries(n_queries, n_docs)
    queries = list(q3)
    q_flat = q3.reshape(-1, corpus.dim)
    q_off = np.arange(n_queries + 1) * corpus.query_tokens
    exact, exact_seconds = exact_topk(index, q_flat, q_off, 10)
    bf = [brute_force_latency(index, queries[i]) for i in range(2 if n_docs >= 50000 else 3)]
    print(
        f"    brute force: {np.median(bf):.2f} s/query; batched ground truth {exact_seconds:.0f} s",
        flush=True,
    )
    rows = evaluate_latemm(index, queries, exact, CANDIDATES)
    for row in rows:
        row["speedup_vs_brute_force"] = float(np.median(bf)) / row["latency_s_median"]
    out: dict[str, object] = {
        "documents": n_docs,
        "queries": n_queries,
        "brute_force_latency_s": float(np.median(bf)),
        "brute_force_batched_s_per_query": exact_seconds / n_queries,
        "latemm": rows,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "index_disk_bytes": index.stats()["disk_bytes"],
    }
    if with_plaid:
        out["fast_plaid"] = fast_plaid(index, q_flat, q_off, exact, f"plaid-{n_docs}")
    return out


PLAID_SETTINGS = [
    {"n_ivf_probe": 8, "n_full_scores": 1024},
    {"n_ivf_probe": 16, "n_full_scores": 4096},
    {"n_ivf_probe": 32, "n_full_scores": 8192},
]


def fast_plaid(
    index: Index,
    q_flat: np.ndarray,
    q_off: np.ndarray,
    exact: list[list[str]] | None,
    name: str,
) -> dict[str, Any] | None:
    """fast-plaid (its own venv) over the index's stored vectors: build time, latency, queries/s
    and recall@10 against the same exact top-10 (None without one: bench_scale --no-exact),
    for each of ``PLAID_SETTINGS``."""
    from experiments.plaid_baseline import run_fastplaid

    # Hand the stored vectors over segment by segment, never all in memory at once.
    work = CACHE / name
    work.mkdir(parents=True, exist_ok=True)
    total = sum(int(np.diff(seg.offsets)[seg.live].sum()) for seg in index.segments)
    sink = np.lib.format.open_memmap(
        work / "doc_vectors.npy", mode="w+", dtype=np.float16, shape=(total, index.config.dim)
    )
    offsets, ids, at = [0], [], 0
    for s, seg in enumerate(index.segments):
        rows = np.flatnonzero(seg.live)
        vectors, seg_offsets = index.vectors(s, rows)
        sink[at : at + len(vectors)] = vectors
        offsets += list(at + seg_offsets[1:])
        ids += list(seg.doc_ids[rows])
        at += len(vectors)
        del vectors
    sink.flush()
    del sink
    plaid = run_fastplaid(
        work, None, np.array(offsets, dtype=np.int64), q_flat, q_off, settings=PLAID_SETTINGS
    )
    for run in (plaid or {}).get("runs", []):
        found = np.array([[ids[d] for d in top] for top in run.pop("top")], dtype=object)
        run["recall@10"] = recall(found, exact) if exact is not None else None
        got = "-" if exact is None else f"{run['recall@10']:.3f}"
        print(
            f"    fast-plaid {run['setting']}: recall@10={got} "
            f"latency={run['latency_s_median'] * 1e3:.1f} ms batch={run['batch_queries_per_s']:.1f} q/s",
            flush=True,
        )
    return plaid


def vaswani(with_plaid: bool = False) -> dict[str, object]:
    data = vaswani_minilm()
    path = CACHE / "search-vaswani-minilm"
    if not (path / "manifest.json").is_file():
        with create(path, IndexConfig(dim=384, dtype="float32")) as writer:
            writer.add(
                list(data["doc_ids"]),
                data["doc_vectors"].astype(np.float32),
                offsets=data["doc_offsets"],
            )
            writer.commit()
    index = Index.open(path, verify="none")
    q_off = data["query_offsets"]
    q_flat = data["query_vectors"].astype(np.float32)
    queries = [q_flat[q_off[i] : q_off[i + 1]] for i in range(q_off.size - 1)]
    exact, seconds = exact_topk(index, q_flat, q_off, 10)
    bf = [brute_force_latency(index, queries[i]) for i in range(5)]
    print(f"[vaswani] brute force {np.median(bf) * 1e3:.1f} ms/query")
    rows = evaluate_latemm(index, queries, exact, [32, 64, 128, 256, 512])
    for row in rows:
        row["speedup_vs_brute_force"] = float(np.median(bf)) / row["latency_s_median"]
    out: dict[str, object] = {
        "documents": len(index),
        "queries": len(queries),
        "brute_force_latency_s": float(np.median(bf)),
        "brute_force_batched_s_per_query": seconds / len(queries),
        "latemm": rows,
    }
    if with_plaid:
        out["fast_plaid"] = fast_plaid(index, q_flat, q_off, exact, "plaid-vaswani")
    return out


def plot(sizes: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Latency against corpus size, and recall against latency, of each ColPali size's run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    n = [r["documents"] for r in sizes]
    axes[0].plot(n, [r["brute_force_latency_s"] for r in sizes], "o-", label="brute-force MaxSim")
    for c in (256, 1024):
        axes[0].plot(
            n,
            [
                next(x["latency_s_median"] for x in r["latemm"] if x["candidates"] == c)
                for r in sizes
            ],
            "s-",
            label=f"latemm C={c}",
        )
    axes[0].set_xscale("log"), axes[0].set_yscale("log")
    (
        axes[0].set_xlabel("pages (1,030 x 128 each)"),
        axes[0].set_ylabel("seconds per query"),
        axes[0].legend(),
    )
    axes[0].set_title("latency growth (2 CPU cores)")
    for r in sizes:
        axes[1].plot(
            [x["latency_s_median"] for x in r["latemm"]],
            [x["recall@10"] for x in r["latemm"]],
            "o-",
            label=f"latemm {r['documents']}",
        )
        for run in (r.get("fast_plaid") or {}).get("runs", []):
            axes[1].plot(run["latency_s_median"], run["recall@10"], "x", color="k")
    (
        axes[1].set_xscale("log"),
        axes[1].set_xlabel("seconds per query"),
        axes[1].set_ylabel("recall@10 vs exact MaxSim"),
    )
    axes[1].set_title("recall / latency (x: fast-plaid)"), axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="sizes 2,000 and 10,000, 30 queries")
    parser.add_argument("--sizes", type=int, nargs="*", default=None)
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--no-plaid", action="store_true")
    parser.add_argument(
        "--plaid-max",
        type=int,
        default=None,
        help="largest size fast-plaid is built for (default: none with --quick, since its CPU "
        "build takes tens of minutes even at 2,000 pages; else 30,000)",
    )
    parser.add_argument(
        "--name", default=None, help="results file name (default bench_search[_quick])"
    )
    parser.add_argument("--no-vaswani", action="store_true")
    args = parser.parse_args(argv)
    sizes = args.sizes or ([2000, 10000] if args.quick else [10000, 30000, 100000])
    n_queries = args.queries or (30 if args.quick else 50)
    plaid_max = args.plaid_max if args.plaid_max is not None else (0 if args.quick else 30000)
    results: dict[str, object] = {"kernel": kernel_efficiency(200 if args.quick else 500)}
    print("kernel:", results["kernel"])
    if not args.no_vaswani:
        results["vaswani"] = vaswani(with_plaid=not args.no_plaid and plaid_max > 0)
    name = args.name or "bench_search" + ("_quick" if args.quick else "")
    done: list[dict[str, object]] = []
    results["colpali"] = done
    for n in sizes:  # written after every size, so a long run keeps what it finished
        done.append(run_size(n, n_queries, not args.no_plaid and n <= plaid_max))
        write_result(name, results)
        plot(done, RESULTS / f"{name}.png")


# ------------------------------------------------------------------------------ report
def _search_rows(size: dict[str, Any]) -> list[list[Any]]:
    """Table rows of one corpus size: latemm per candidate count, brute force, fast-plaid."""
    bf = size["brute_force_latency_s"]
    rows = [
        [
            size["documents"],
            f"latemm C={x['candidates']}",
            x["recall@10"],
            x["latency_s_median"] * 1e3,
            x["batch_queries_per_s"],
            x["speedup_vs_brute_force"],
        ]
        for x in size["latemm"]
    ]
    rows.append(
        [
            size["documents"],
            "brute-force MaxSim",
            1.0,
            bf * 1e3,
            1 / size["brute_force_batched_s_per_query"],
            1.0,
        ]
    )
    plaid = size.get("fast_plaid") or {}
    for run in plaid.get("runs", []):
        rows.append(
            [
                size["documents"],
                f"fast-plaid {run['setting']}",
                run["recall@10"],
                run["latency_s_median"] * 1e3,
                run["batch_queries_per_s"],
                bf / run["latency_s_median"],
            ]
        )
    if plaid.get("error"):
        rows.append([size["documents"], f"fast-plaid: {plaid['error'][:100]}", "", "", "", ""])
    return rows


def render_section(r: dict[str, Any], sources: Sources) -> str:
    out = ["## 3. Search against brute-force MaxSim and fast-plaid", render.provenance(r), ""]
    k = r.get("kernel", {})
    if k:
        out.append(
            f"MaxSim kernel: {k['maxsim_gflops']:.0f} GFLOP/s against {k['matmul_same_shape_gflops']:.0f} GFLOP/s for a bare "
            f"matrix product of the same shapes ({k['fraction_of_same_shape_peak']:.0%} of that limit; the 2048^3 product peaks at "
            f"{k['matmul_2048_cubed_gflops']:.0f} GFLOP/s). With float16 storage widened on the fly: {k['maxsim_float16_storage_gflops']:.0f} GFLOP/s.\n"
        )
    header = [
        "pages",
        "system",
        "recall@10 vs exact",
        "ms/query (one at a time)",
        "queries/s (batch)",
        "speed-up vs brute force",
    ]
    out.append(
        render.table(header, [row for size in r.get("colpali", []) for row in _search_rows(size)])
    )
    small = sources.load("bench_search_plaid", False)
    if small:
        out.append(
            "\nAgainst fast-plaid (LightOn's PLAID, its own venv, same threads) on corpora its CPU "
            "build finishes on here, and on MiniLM-embedded Vaswani, all systems in one run:\n"
            + render.provenance(small)
            + "\n"
        )
        sizes = list(small.get("colpali", []))
        asked = re.search(r"--sizes ([\d ]+)", small.get("command", ""))
        missing = sorted(
            set(int(n) for n in asked.group(1).split()) - {x["documents"] for x in sizes}
            if asked
            else set()
        )
        if missing:
            out.append(
                f"(The run was stopped before its {', '.join(f'{n:,}' for n in missing)}-page "
                "corpus finished: fast-plaid's index build alone takes tens of minutes there.)\n"
            )
        if small.get("vaswani"):
            sizes.append(
                {**small["vaswani"], "documents": f"Vaswani {small['vaswani']['documents']}"}
            )
        out.append(render.table(header, [row for size in sizes for row in _search_rows(size)]))
        if (sources.results / "bench_search_plaid.png").is_file():
            out.append("\n![latemm and fast-plaid](results/bench_search_plaid.png)")
    v = r.get("vaswani")
    if v:
        out.append(
            f"\nVaswani with MiniLM ({v['documents']} abstracts, {v['queries']} queries), brute force {v['brute_force_latency_s'] * 1e3:.0f} ms/query:\n"
        )
        out.append(
            render.table(
                ["C", "recall@10", "ms/query", "speed-up"],
                [
                    [
                        x["candidates"],
                        x["recall@10"],
                        x["latency_s_median"] * 1e3,
                        x["speedup_vs_brute_force"],
                    ]
                    for x in v["latemm"]
                ],
            )
        )
    if (sources.results / "bench_search.png").is_file():
        out.append("\n![latency growth and recall/latency](results/bench_search.png)")
    return "\n".join(out)


if __name__ == "__main__":
    main()
