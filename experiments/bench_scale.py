"""Scale benchmark (issue #14 goals 4 and 6): build N ColPali-shaped pages straight into an
index with the index's default configuration, then measure latency, throughput and recall@10
against exact MaxSim, with brute force and fast-plaid where they finish.

Run: ``python -m experiments.bench_scale --pages 100000`` (or ``--pages 1000000``).
Writes ``results/bench_scale_<pages>.json`` (after every phase, so a long run keeps what it
finished); ``python -m experiments.report`` renders it into RESULTS.md.

- The index config is what ``latemm index`` gives a new index of 128-d vectors unless ``--dtype``
  / ``--faiss`` override it, so the run measures whatever the defaults are when it runs; the
  JSON records the config used.
- Disk: two small probe indexes (same config) give bytes per page and a fixed part; the run
  refuses to start when the estimate for N pages does not fit the free space of ``--dir``.
- Build: seeded ``experiments.synthetic`` pages (1,030 x 128) are generated in batches, one batch
  ahead on a background thread, and added through ``IndexWriter`` with a commit every
  ``--commit-every`` pages; the corpus is never held whole, nor written anywhere else. Reports
  wall time, time inside ``add``/``commit`` (ingest pages/s), bytes of every file the manifest
  lists (by file name) and on disk, and the process's resident memory sampled every 0.25 s
  (total, and anonymous: memory-mapped index files are page cache, not heap).
- Exact top-10 for the first ``--recall-queries`` queries: the corpus is regenerated from the
  seed in chunks and each chunk is scored with ``latemm.ranking.scoring.maxsim`` in float32 (all
  sample queries in one product per block), keeping a running top-10. The same pass times brute
  force: the batched pass per query, and one query alone against every chunk (vectors already in RAM
  as float32, generation excluded: a lower bound for a brute force that reads them from disk).
- latemm: for each ``--candidates`` count, every query one at a time (p50/p95 ms), then all in
  batches of ``--batch-size`` (queries/s), and recall@10 of the sample against the exact top-10.
- fast-plaid (its own venv, ``experiments.plaid_baseline``) when N <= ``--plaid-max``; its CPU
  build took 30 minutes at 2,000 pages here, so the default cap is 2,000.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments import render
from experiments.bench_search import fast_plaid, recall
from experiments.common import REPO, write_result
from experiments.render import Sources
from experiments.synthetic import SyntheticCorpus
from index_store import Index, IndexConfig, create
from index_store.first_stage import MIN_TRAIN_DOCUMENTS
from latemm.index.pipeline import new_index_config
from latemm.ranking.scoring import maxsim
from latemm.retrieval.retriever import Retriever

CANDIDATES = [64, 128, 256, 512, 1024]
DEFAULT_DIR = REPO.parent / "tmp"
FLOAT16_PAGE_BYTES = 1030 * 128 * 2  # what fast-plaid's hand-over file costs per page


# ------------------------------------------------------------------------------- memory
def rss_bytes() -> tuple[int, int]:
    """(resident, anonymous resident) bytes of this process, from /proc/self/status."""
    values = {"VmRSS": 0, "RssAnon": 0}
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            key = line.split(":", 1)[0]
            if key in values:
                values[key] = int(line.split()[1]) * 1024
    return values["VmRSS"], values["RssAnon"]


class MemoryMonitor:
    """Samples ``rss_bytes`` every ``interval`` seconds on a thread; peaks per named phase."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.phase = "start"
        self.peaks: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemoryMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> tuple[int, int]:
        rss, anon = rss_bytes()
        peak = self.peaks.setdefault(self.phase, {"peak_rss_mb": 0.0, "peak_anon_mb": 0.0})
        peak["peak_rss_mb"] = max(peak["peak_rss_mb"], rss / 2**20)
        peak["peak_anon_mb"] = max(peak["peak_anon_mb"], anon / 2**20)
        return rss, anon

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


# ------------------------------------------------------------------------------- disk
def index_bytes(path: Path) -> dict[str, Any]:
    """Bytes of every file the manifest lists (total, and by file name across segments), plus
    the manifest itself, and the blocks the whole folder occupies on disk."""
    index = Index.open(path, verify="none")
    by_name: dict[str, int] = {}
    for _, entry in index.manifest.files():
        key = entry.file.split("-g")[0] if entry.file.startswith("deleted") else entry.file
        by_name[key] = by_name.get(key, 0) + entry.size
    manifest = sum(p.stat().st_size for p in path.glob("manifest*.json"))
    allocated = sum(
        os.stat(os.path.join(root, f)).st_blocks * 512
        for root, _, files in os.walk(path)
        for f in files
    )
    total = sum(by_name.values()) + manifest
    return {
        "manifest_files_bytes": total,
        "bytes_per_page": total / max(1, len(index)),
        "by_file": by_name,
        "allocated_bytes": allocated,
        "segments": len(index.segments),
    }


def estimate_index_bytes(
    corpus: SyntheticCorpus, config: IndexConfig, n_pages: int, workdir: Path
) -> dict[str, float]:
    """Bytes of an ``n_pages`` index, from two probe indexes (one commit each, same config): the
    slope per page and the fixed part (codebooks, trained indexes). Both probes hold enough
    pages to train the first stage's codebook, as a large index does: below that, a commit
    keeps a Flat first stage of 40 KB per page, which made the old 128/384-page probes estimate
    57 KB per pq1 page instead of 17."""
    sizes = (MIN_TRAIN_DOCUMENTS, MIN_TRAIN_DOCUMENTS + 512)
    measured = []
    for n in sizes:
        probe = Path(tempfile.mkdtemp(prefix="bench-scale-probe-", dir=workdir))
        try:
            with create(probe / "idx", config) as writer:
                pages = corpus.pages(0, n)
                writer.add(
                    [f"p{i}" for i in range(n)],
                    pages.reshape(-1, corpus.dim),
                    offsets=np.arange(n + 1) * corpus.tokens_per_page,
                )
                writer.commit()
            measured.append(index_bytes(probe / "idx"))
        finally:
            shutil.rmtree(probe, ignore_errors=True)
    span = sizes[1] - sizes[0]
    totals = [m["manifest_files_bytes"] for m in measured]
    per_page = (totals[1] - totals[0]) / span
    fixed = max(0.0, totals[0] - per_page * sizes[0])
    by_file = {
        name: (size - measured[0]["by_file"].get(name, 0)) / span
        for name, size in measured[1]["by_file"].items()
    }
    faiss_per_page = sum(v for name, v in by_file.items() if "faiss" in name)
    return {
        "probe_bytes_per_page": per_page,
        "probe_fixed_bytes": fixed,
        "probe_bytes_per_page_by_file": by_file,
        "estimated_bytes": fixed + per_page * n_pages,
        "estimated_faiss_bytes": faiss_per_page * n_pages,
    }


def memory_available() -> int:
    """MemAvailable of /proc/meminfo in bytes."""
    with open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def check_memory(faiss_bytes: float, factory: str) -> None:
    """Refuse when the first-stage (faiss) files, which searches load into memory, would not
    fit the memory available now."""
    available = memory_available()
    if faiss_bytes > 0.8 * available:
        raise SystemExit(
            f"bench_scale: the first-stage faiss files ({factory!r}) would take about "
            f"{faiss_bytes / 2**30:.1f} GiB in memory at search time but {available / 2**30:.1f} "
            "GiB is available; use a compressed first stage (e.g. --faiss with PQ) or fewer --pages"
        )


def check_disk(directory: Path, needed: float, what: str) -> dict[str, float]:
    """Refuse (SystemExit with the numbers and the fix) when ``needed`` bytes plus a 10% and
    2 GiB margin do not fit the free space of ``directory``."""
    free = shutil.disk_usage(directory).free
    margin = 1.1 * needed + 2 * 2**30
    if margin > free:
        raise SystemExit(
            f"bench_scale: {what} needs about {needed / 2**30:.1f} GiB (+10% and 2 GiB margin = "
            f"{margin / 2**30:.1f} GiB) but {directory} has {free / 2**30:.1f} GiB free; "
            "free space, choose another --dir, lower --pages, or lower --plaid-max"
        )
    return {"free_bytes_before": free, "needed_bytes_with_margin": margin}


# ------------------------------------------------------------------------------- build
def prefetched(batches: Iterator[tuple[int, np.ndarray]]) -> Iterator[tuple[int, np.ndarray]]:
    """``batches`` generated one ahead on a background thread (numpy's generator releases the
    GIL), so generation overlaps the writer on a second core; at most two batches exist."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(next, batches, None)
        while (item := pending.result()) is not None:
            pending = pool.submit(next, batches, None)
            yield item


def build(
    path: Path,
    corpus: SyntheticCorpus,
    config: IndexConfig,
    n_pages: int,
    *,
    commit_every: int,
    monitor: MemoryMonitor,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate ``n_pages`` pages straight into a new index at ``path``; timings and memory."""
    start = time.perf_counter()
    busy, since_commit, commits = 0.0, 0, 0
    rss_at: list[dict[str, float]] = []
    batch = min(commit_every, 256)
    with create(path, config) as writer:
        for first, pages in prefetched(corpus.batches(n_pages, batch=batch)):
            t0 = time.perf_counter()
            writer.add(
                [f"p{first + i}" for i in range(len(pages))],
                pages.reshape(-1, corpus.dim),
                offsets=np.arange(len(pages) + 1) * corpus.tokens_per_page,
            )
            since_commit += len(pages)
            done = first + len(pages)
            if since_commit >= commit_every or done == n_pages:
                writer.commit()
                commits += 1
                since_commit = 0
                rss, anon = monitor.sample()
                rss_at.append({"pages": done, "rss_mb": rss / 2**20, "anon_mb": anon / 2**20})
                if progress:
                    print(
                        f"  built {done}/{n_pages} pages, {time.perf_counter() - start:.0f} s, "
                        f"RSS {rss / 2**20:.0f} MB (anon {anon / 2**20:.0f} MB)",
                        flush=True,
                    )
            busy += time.perf_counter() - t0
    wall = time.perf_counter() - start
    return {
        "pages": n_pages,
        "commit_every": commit_every,
        "commits": commits,
        "wall_s": wall,
        "pages_per_s_wall": n_pages / wall,
        "writer_s": busy,
        "pages_per_s_writer": n_pages / busy,
        "rss_after_commits": _thin(rss_at, 20),
    }


def _thin(rows: list[dict[str, float]], keep: int) -> list[dict[str, float]]:
    """At most ``keep`` evenly spaced rows, the last always kept."""
    if len(rows) <= keep:
        return rows
    picks = sorted({round(i * (len(rows) - 1) / (keep - 1)) for i in range(keep)})
    return [rows[i] for i in picks]


# ------------------------------------------------------------------------------- exact
def merge_top(
    best: np.ndarray, best_scores: np.ndarray, scores: np.ndarray, first: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The running top-``k`` (page numbers, scores) merged with the (Q, n) ``scores`` of pages
    ``first:first + n``: best first, ties by page number."""
    ids = np.concatenate(
        [best, np.broadcast_to(first + np.arange(scores.shape[1]), scores.shape)], 1
    )
    merged = np.concatenate([best_scores, scores], axis=1)
    order = np.lexsort((ids, -merged), axis=1)[:, :k]
    return np.take_along_axis(ids, order, 1), np.take_along_axis(merged, order, 1)


def exact_topk_streaming(
    corpus: SyntheticCorpus,
    n_pages: int,
    q_flat: np.ndarray,
    q_off: np.ndarray,
    *,
    k: int = 10,
    chunk: int = 256,
    progress: bool = True,
    checkpoint: Path | None = None,
    checkpoint_every: int = 40,
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Exact float32 MaxSim top-``k`` (page numbers, scores; best first, ties by page number)
    of every query over the regenerated corpus, streamed once in chunks of ``chunk`` pages.

    Also times brute force: the batched products, and the first query alone on every chunk.
    With ``checkpoint``, the running top-``k`` and timings are saved there every
    ``checkpoint_every`` chunks (written whole, then renamed), and a later call with the same
    corpus, size and queries resumes from it: at 1M pages the pass takes over an hour."""
    n_q = q_off.size - 1
    best = np.full((n_q, 0), -1, dtype=np.int64)
    best_scores = np.full((n_q, 0), -np.inf, dtype=np.float32)
    one = (q_flat[q_off[0] : q_off[1]], np.array([0, q_off[1] - q_off[0]]))
    key = json.dumps(
        {
            "corpus": corpus.__dict__,
            "pages": n_pages,
            "k": k,
            "queries": hashlib.sha256(np.ascontiguousarray(q_flat).tobytes()).hexdigest(),
        },
        sort_keys=True,
    )
    done, times = 0, {"batched_s": 0.0, "single_s": 0.0, "wall_s": 0.0}
    if checkpoint is not None and checkpoint.exists():
        with np.load(checkpoint, allow_pickle=False) as saved:
            if str(saved["key"]) != key:
                raise SystemExit(f"{checkpoint} is another exact pass's checkpoint; remove it")
            best, best_scores = saved["best"], saved["best_scores"]
            done, times = int(saved["done"]), json.loads(str(saved["times"]))
        if progress:
            print(f"  exact pass resumed at {done}/{n_pages} pages from {checkpoint}", flush=True)
    resumed_at = done
    start = time.perf_counter()

    def save() -> None:
        assert checkpoint is not None
        wall = times["wall_s"] + time.perf_counter() - start
        partial = checkpoint.with_name(checkpoint.name + ".tmp.npz")
        np.savez(
            partial,
            key=np.array(key),
            best=best,
            best_scores=best_scores,
            done=np.array(done),
            times=np.array(json.dumps({**times, "wall_s": wall})),
        )
        os.replace(partial, checkpoint)

    for first, pages in prefetched(corpus.batches(n_pages, batch=chunk, start=done)):
        flat = pages.reshape(-1, corpus.dim)
        offsets = np.arange(len(pages) + 1) * corpus.tokens_per_page
        t0 = time.perf_counter()
        scores = maxsim(q_flat, q_off, flat, offsets)
        t1 = time.perf_counter()
        maxsim(one[0], one[1], flat, offsets)
        times["single_s"] += time.perf_counter() - t1
        times["batched_s"] += t1 - t0
        best, best_scores = merge_top(best, best_scores, scores, first, k)
        done = first + len(pages)
        step = (first - resumed_at) // chunk
        if checkpoint is not None and step % checkpoint_every == checkpoint_every - 1:
            save()
        if progress and step % 40 == 39:
            print(f"  exact pass {done}/{n_pages} pages", flush=True)
    stats = {
        "wall_s": times["wall_s"] + time.perf_counter() - start,
        "brute_force_batched_s_per_query": times["batched_s"] / n_q,
        "brute_force_single_query_s": times["single_s"],
        "queries": n_q,
    }
    if resumed_at:
        stats["resumed_at_page"] = resumed_at
    return best, best_scores, stats


# ------------------------------------------------------------------------------- latemm
def evaluate_latemm(
    index: Index,
    queries: np.ndarray | Sequence[np.ndarray],
    exact_ids: list[list[str]] | None,
    candidates: list[int],
    *,
    batch_size: int,
    k: int = 10,
    progress: bool = True,
    warm: bool = False,
    refine_depths: list[int] | None = None,
    first_stage: str | None = None,
) -> list[dict[str, Any]]:
    """Per candidate count: one query at a time (p50/p95), batches (queries/s), and recall@10
    of the first ``len(exact_ids)`` queries (from the batched results). With ``warm``, every
    query is searched once at the largest count first, so that the pages they touch are in
    the page cache (a server's steady state; without it an index larger than what the page
    cache keeps is read from disk on first touch). For an index with a refine copy, each of
    ``refine_depths`` (default: the index's) is measured at every count."""
    rows: list[dict[str, Any]] = []
    depths: list[int | None] = [None]
    if refine_depths:
        depths = list(refine_depths)
    for depth in depths:
        retriever = Retriever(index, refine_depth=depth, first_stage=first_stage)
        if warm:
            for q in queries:
                retriever.search_embeddings([q], k=k, candidates=max(candidates))
        rows += _sweep(retriever, queries, exact_ids, candidates, batch_size, k, progress)
        for row in rows[-len(candidates) :]:
            row["refine_depth"] = retriever.refine_depth
            row["first_stage"] = retriever.first_stage
    return rows


def _sweep(
    retriever: Retriever,
    queries: np.ndarray | Sequence[np.ndarray],
    exact_ids: list[list[str]] | None,
    candidates: list[int],
    batch_size: int,
    k: int,
    progress: bool,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for c in candidates:
        retriever.search_embeddings(list(queries[:1]), k=k, candidates=c)  # warm-up
        latencies = []
        for q in queries:
            t0 = time.perf_counter()
            retriever.search_embeddings([q], k=k, candidates=c)
            latencies.append(time.perf_counter() - t0)
        found = []
        t0 = time.perf_counter()
        for at in range(0, len(queries), batch_size):
            found.append(
                retriever.search_embeddings(list(queries[at : at + batch_size]), k=k, candidates=c)
            )
        batch_s = time.perf_counter() - t0
        doc_ids = np.concatenate([r.doc_ids for r in found])[: len(exact_ids or [])]
        row = {
            "candidates": c,
            "p50_ms": float(np.percentile(latencies, 50) * 1e3),
            "p95_ms": float(np.percentile(latencies, 95) * 1e3),
            "batch_queries_per_s": len(queries) / batch_s,
            "recall@10": recall(doc_ids, exact_ids) if exact_ids is not None else None,
        }
        rows.append(row)
        if progress:
            got = "-" if row["recall@10"] is None else f"{row['recall@10']:.3f}"
            print(
                f"  C={c:5d} recall@10={got} p50={row['p50_ms']:.1f} ms "
                f"p95={row['p95_ms']:.1f} ms batched={row['batch_queries_per_s']:.1f} q/s",
                flush=True,
            )
    return rows


def against_targets(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's goal 4 (p50 <= 50 ms at recall@10 >= 0.95): the fastest candidate count
    that reaches the recall, and whether its p50 meets the bar."""
    good = [r for r in result["latemm"] if (r["recall@10"] or 0.0) >= 0.95]
    best = min(good, key=lambda r: r["p50_ms"]) if good else None
    return {
        "recall_target": 0.95,
        "p50_target_ms": 50.0,
        "fastest_at_recall": best,
        "meets_latency_target": bool(best and best["p50_ms"] <= 50.0),
        "speedup_vs_650ms": 650.0 / best["p50_ms"] if best else None,
    }


# ------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, required=True, help="e.g. 100000 or 1000000")
    parser.add_argument("--queries", type=int, default=100, help="latency/throughput queries")
    parser.add_argument(
        "--recall-queries", type=int, default=50, help="queries in the exact recall sample"
    )
    parser.add_argument("--candidates", type=int, nargs="+", default=CANDIDATES)
    parser.add_argument("--batch-size", type=int, default=32, help="queries per batched call")
    parser.add_argument("--commit-every", type=int, default=2048)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where the index goes")
    parser.add_argument("--keep", action="store_true", help="keep the index afterwards")
    parser.add_argument(
        "--index",
        type=Path,
        default=None,
        help="build the index at this path and keep it, with the exact top-10 beside it; when it "
        "already holds --pages pages of this config (an earlier run), search it without "
        "rebuilding or recomputing the exact pass (to re-measure search after a code change)",
    )
    parser.add_argument("--dtype", default=None, help="override IndexConfig.dtype")
    parser.add_argument("--faiss", default=None, help="override IndexConfig.faiss_factory")
    parser.add_argument("--refine", default=None, help="IndexConfig.refine (int8 or float16)")
    parser.add_argument(
        "--refine-depth",
        type=int,
        nargs="+",
        default=None,
        help="with --refine: candidates per query rescored from the copy (each is measured)",
    )
    parser.add_argument(
        "--first-stage",
        default=None,
        choices=("fde", "centroids"),
        help="the searches' first stage (default: the index's recorded one)",
    )
    parser.add_argument("--plaid-max", type=int, default=2000, help="largest N for fast-plaid")
    parser.add_argument("--name", default=None, help="result name (default bench_scale_<pages>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--exact-only",
        action="store_true",
        help="only compute (or resume) the exact top-10 beside --index, which need not be built "
        "yet: run it alongside a long build",
    )
    parser.add_argument(
        "--no-exact",
        action="store_true",
        help="skip the exact pass (latency, throughput, size and memory only; recall@10 is "
        "left out); a later run with --index measures recall, resuming an exact pass cut short",
    )
    parser.add_argument(
        "--warm",
        action="store_true",
        help="search every query once before timing, so their pages are in the page cache",
    )
    return parser.parse_args(argv)


def make_config(
    corpus: SyntheticCorpus, dtype: str | None, faiss: str | None, refine: str | None = None
) -> IndexConfig:
    """What ``latemm index`` gives a new index of ``corpus.dim`` dimensions
    (``latemm.index.pipeline.new_index_config``), with only the given fields overridden."""
    return new_index_config(
        corpus.dim, dtype=dtype or "auto", faiss_factory=faiss or "auto", refine=refine
    )


def recall_sample(
    args: argparse.Namespace, corpus: SyntheticCorpus
) -> tuple[np.ndarray, np.ndarray]:
    """(all queries, the recall sample): the first ``--recall-queries`` of them."""
    queries, _ = corpus.queries(max(args.queries, args.recall_queries), args.pages)
    return queries, queries[: args.recall_queries]


def run(args: argparse.Namespace) -> dict[str, Any]:
    corpus = SyntheticCorpus(seed=args.seed)
    if args.exact_only:
        if args.index is None:
            raise SystemExit("bench_scale: --exact-only needs --index (the top-10 goes beside it)")
        _, stats = cached_exact(
            args.index, corpus, args.pages, recall_sample(args, corpus)[1], keep=True
        )
        print(f"  exact top-10 of {stats['queries']} queries: {stats}", flush=True)
        return {"exact": stats}
    config = make_config(corpus, args.dtype, args.faiss, args.refine)
    name = args.name or f"bench_scale_{args.pages}"
    args.dir.mkdir(parents=True, exist_ok=True)
    estimate = estimate_index_bytes(corpus, config, args.pages, args.dir)
    plaid = 0 < args.pages <= args.plaid_max
    needed = estimate["estimated_bytes"] + (2 * FLOAT16_PAGE_BYTES * args.pages if plaid else 0)
    result: dict[str, Any] = {
        "pages": args.pages,
        "corpus": {**corpus.__dict__},
        "index_config": config.to_dict(),
        "torch_threads": torch.get_num_threads(),
        "disk": {**estimate, **check_disk(args.dir, needed, f"{args.pages} pages")},
    }
    check_memory(estimate["estimated_faiss_bytes"], config.faiss_factory)
    print(f"[{args.pages} pages] config {config.to_dict()}", flush=True)
    print(f"  estimated index size {estimate['estimated_bytes'] / 2**30:.2f} GiB", flush=True)
    if args.index is not None:
        with MemoryMonitor() as monitor:
            _measure(args, corpus, config, args.index, monitor, result, name, plaid)
        return result
    work = Path(tempfile.mkdtemp(prefix=f"bench-scale-{args.pages}-", dir=args.dir))
    try:
        with MemoryMonitor() as monitor:
            _measure(args, corpus, config, work / "index", monitor, result, name, plaid)
    finally:
        if args.keep:
            print(f"  kept {work / 'index'}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return result


def _measure(
    args: argparse.Namespace,
    corpus: SyntheticCorpus,
    config: IndexConfig,
    path: Path,
    monitor: MemoryMonitor,
    result: dict[str, Any],
    name: str,
    plaid: bool,
) -> None:
    """The phases in order, writing the JSON after each (a long run keeps what it finished);
    the machine's load averages at the start are recorded too (this machine is shared)."""
    result["load_average"] = os.getloadavg()
    monitor.phase = "build"
    if reusable(path, config, args.pages):
        result["build"] = {"reused": str(path)}
    else:
        result["build"] = build(
            path, corpus, config, args.pages, commit_every=args.commit_every, monitor=monitor
        )
    result["disk"].update(index_bytes(path))
    result["memory"] = monitor.peaks
    write_result(name, result)
    q3, sample = recall_sample(args, corpus)
    exact: list[list[str]] | None = None
    if args.no_exact:
        result["exact"] = {"skipped": "--no-exact: latency only, recall not measured"}
    else:
        monitor.phase = "exact"
        top, stats = cached_exact(path, corpus, args.pages, sample, keep=args.index is not None)
        exact = [[f"p{i}" for i in row] for row in top]
        result["exact"] = stats
    write_result(name, result)
    stats = result["exact"]
    if "brute_force_single_query_s" in stats:  # not when a GPU computed the exact pass
        print(
            f"  brute force: {stats['brute_force_single_query_s']:.2f} s for one query, "
            f"{stats['brute_force_batched_s_per_query']:.2f} s/query batched "
            f"(exact pass {stats['wall_s']:.0f} s)",
            flush=True,
        )
    monitor.phase = "search"
    index = Index.open(path, verify="none")
    result["latemm"] = evaluate_latemm(
        index,
        q3[: args.queries],
        exact,
        args.candidates,
        batch_size=args.batch_size,
        warm=args.warm,
        refine_depths=args.refine_depth,
        first_stage=args.first_stage,
    )
    result["warm"] = args.warm
    result["targets"] = against_targets(result)
    write_result(name, result)
    if plaid:
        monitor.phase = "fast_plaid"
        q_flat = sample.reshape(-1, corpus.dim)
        q_off = np.arange(len(sample) + 1) * corpus.query_tokens
        result["fast_plaid"] = fast_plaid(index, q_flat, q_off, exact, path.parent.name + "-plaid")
        shutil.rmtree(_plaid_work(path.parent.name + "-plaid"), ignore_errors=True)
    else:
        result["fast_plaid"] = {"skipped": f"{args.pages} pages > --plaid-max {args.plaid_max}"}
    write_result(name, result)


def reusable(path: Path, config: IndexConfig, n_pages: int) -> bool:
    """Whether ``path`` holds a finished index of ``n_pages`` pages built with ``config``."""
    if not (path / "manifest.json").exists():
        return False
    index = Index.open(path, verify="none")
    # The settings an index keeps (IndexConfig.differences; the refine depth is a search's).
    same = not index.config.differences(config) and len(index) == n_pages
    if not same:
        raise SystemExit(
            f"{path} holds another index ({len(index)} pages, config {index.config.to_dict()}); "
            f"remove it or pass another --index"
        )
    return True


def exact_cache(path: Path, corpus: SyntheticCorpus, n_pages: int, sample: np.ndarray) -> Path:
    """Where the exact top-10 of ``sample`` over the index at ``path`` is kept: beside it, named
    by the corpus, its size and a digest of the queries (``experiments.bench_gpu`` writes one
    computed on a GPU under the same name)."""
    digest = hashlib.sha256(np.ascontiguousarray(sample).tobytes()).hexdigest()[:12]
    return path.parent / f"{path.name}-exact-s{corpus.seed}-n{n_pages}-q{len(sample)}-{digest}.npz"


def cached_exact(
    path: Path, corpus: SyntheticCorpus, n_pages: int, sample: np.ndarray, *, keep: bool
) -> tuple[np.ndarray, dict[str, Any]]:
    """The exact top-10 page numbers of the ``sample`` queries, and the brute-force timings;
    read from beside the index when an earlier run with the same corpus, size and queries left
    them there, and left there when ``keep``. The file name holds a digest of the queries: the
    sample depends on ``--queries`` too (``corpus.queries`` draws all targets first)."""
    cache = exact_cache(path, corpus, n_pages, sample)
    if cache.exists():
        with np.load(cache, allow_pickle=False) as data:
            top, stats = data["top"], json.loads(str(data["stats"]))
        # Written on another machine (bench_gpu): its pages must be the ones indexed here.
        made = stats.get("first_pages_sha256")
        if made is not None and made != first_pages_sha256(corpus):
            raise SystemExit(
                f"{cache} was computed over other pages than this machine generates (first "
                "pages' sha256 differs: another numpy or generator); remove it to recompute"
            )
        return top, {**stats, "cached": str(cache)}
    checkpoint = cache.with_name(cache.stem + ".partial.npz") if keep else None
    top, _, stats = exact_topk_streaming(
        corpus,
        n_pages,
        sample.reshape(-1, corpus.dim),
        np.arange(len(sample) + 1) * corpus.query_tokens,
        checkpoint=checkpoint,
    )
    if keep:
        np.savez(cache, top=top, stats=np.array(json.dumps(stats)))
        assert checkpoint is not None
        checkpoint.unlink(missing_ok=True)
    return top, stats


def first_pages_sha256(corpus: SyntheticCorpus) -> str:
    """A digest of the corpus's first two pages: whether two machines generate the same pages."""
    return hashlib.sha256(corpus.pages(0, 2).tobytes()).hexdigest()


def _plaid_work(name: str) -> Path:
    from experiments.common import CACHE

    return CACHE / name


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    targets = result.get("targets", {})
    print(f"  targets: {targets}")


# ------------------------------------------------------------------------------ report
def render_section(records: list[dict[str, Any]], sources: Sources) -> str:
    """Issue #14 goals 4 and 6: one ``bench_scale_<pages>.json`` per corpus size."""
    out = ["## 3b. Scale: 100k and 1M ColPali-shaped pages (issue #14 goals 4 and 6)", ""]
    for r in records:
        out.append(render.provenance(r))
        c, load = r["index_config"], r.get("load_average")
        out.append(
            f"Index config (the defaults then): dtype `{c['dtype']}`, faiss `{c['faiss_factory']}`."
            + (f" Load average at the start: {load[0]:.1f} on 2 cores." if load else "")
        )
    out.append("")
    build_rows = []
    for r in records:
        b, d, m = r["build"], r["disk"], r.get("memory", {})
        build_rows.append(
            [
                r["pages"],
                b["wall_s"],
                b["pages_per_s_wall"],
                b["pages_per_s_writer"],
                d["manifest_files_bytes"] / 2**30,
                d["bytes_per_page"] / 1024,
                d["segments"],
                m.get("build", {}).get("peak_rss_mb", float("nan")),
                m.get("build", {}).get("peak_anon_mb", float("nan")),
            ]
        )
    out.append(
        render.table(
            [
                "pages",
                "build s",
                "pages/s (wall, with generation)",
                "pages/s (writer)",
                "GiB on disk (every file)",
                "KiB/page",
                "segments",
                "peak RSS MB",
                "peak anon MB",
            ],
            build_rows,
        )
    )
    out.append("")
    rows = []
    for r in records:
        e = r.get("exact")
        if e:
            rows.append(
                [
                    r["pages"],
                    "brute force (float32, in RAM)",
                    1.0,
                    e["brute_force_single_query_s"] * 1e3,
                    "",
                    1 / e["brute_force_batched_s_per_query"],
                ]
            )
        for x in r.get("latemm", []):
            rows.append(
                [
                    r["pages"],
                    f"latemm C={x['candidates']}",
                    x["recall@10"],
                    x["p50_ms"],
                    x["p95_ms"],
                    x["batch_queries_per_s"],
                ]
            )
        for x in (r.get("fast_plaid") or {}).get("runs", []):
            rows.append(
                [
                    r["pages"],
                    f"fast-plaid {x['setting']}",
                    x["recall@10"],
                    x["latency_s_median"] * 1e3,
                    "",
                    x["batch_queries_per_s"],
                ]
            )
    out.append(
        render.table(
            ["pages", "system", "recall@10 vs exact", "p50 ms", "p95 ms", "queries/s (batched)"],
            rows,
        )
    )
    for r in records:
        t = r.get("targets") or {}
        best = t.get("fastest_at_recall")
        if best:
            out.append(
                f"\n{r['pages']:,} pages: fastest C with recall@10 >= 0.95 is C={best['candidates']}, "
                f"p50 {best['p50_ms']:.0f} ms (650 ms / p50 = {t['speedup_vs_650ms']:.2f}x; target <= 50 ms at 100k: "
                f"{'met' if t['meets_latency_target'] else 'not met'})."
            )
        elif t:
            out.append(f"\n{r['pages']:,} pages: no candidate count reached recall@10 >= 0.95.")
        skipped = (r.get("fast_plaid") or {}).get("skipped")
        if skipped:
            out.append(f"fast-plaid not run at {r['pages']:,} pages ({skipped}).")
    return "\n".join(out)


def table_int8_in_place(
    a: dict[str, Any], b: dict[str, Any], c: dict[str, Any], decode: dict[str, Any]
) -> str:
    """Section 3b (cont. 2): three searches of one 100k int8 index (a: after profiling, b: cold
    page cache, c: ``--warm``) and the float16-decode pass's p50 where it measured the same C."""
    before = {x["candidates"]: x for x in decode["latemm"]}
    rows = []
    for xa, xb, xc in zip(a["latemm"], b["latemm"], c["latemm"], strict=True):
        old = before.get(xa["candidates"])
        rows.append(
            [
                xa["candidates"],
                xa["recall@10"],
                render.sig3(xa["p50_ms"]),
                render.sig3(xb["p50_ms"]),
                render.sig3(xc["p50_ms"]),
                render.sig3(xc["p95_ms"]),
                f"{xc['batch_queries_per_s']:.1f}",
                render.sig3(old["p50_ms"]) if old else "",
            ]
        )
    header = ["C", "recall@10", "p50 ms (a)", "p50 ms (b) cold", "p50 ms (c) warm", "p95 ms (c)"]
    header += ["queries/s batched (c)", "p50 ms, float16-decode pass (3b cont., other sample)"]
    return render.table(header, rows)


def _scale_row(x: dict[str, Any]) -> list[Any]:
    """A bench_scale search row: depth, C, recall@10, p50, p95, batched queries/s."""
    return [
        x["refine_depth"],
        x["candidates"],
        f"{x['recall@10']:.3f}",
        render.sig3(x["p50_ms"]),
        render.sig3(x["p95_ms"]),
        f"{x['batch_queries_per_s']:.1f}",
    ]


def table_refine_scale(r: dict[str, Any]) -> str:
    """Section 5c: 100k ColPali-shaped pages, pq1 codes with an int8 copy, per depth and C."""
    rows = [_scale_row(x) for x in r["latemm"]]
    header = ["depth", "C", "recall@10", "p50 ms", "p95 ms", "queries/s batched"]
    return render.table(header, rows)


def table_plan_10m(int8: dict[str, Any], refined: dict[str, Any]) -> str:
    """Section 7b (cont.): 10M ColPali pages as 100 shards of 100k, from today's 100k runs:
    int8 storage (C=320) and pq1 codes with an int8 copy (C=384, depth 128), 2 cores per shard
    on 32-core nodes (16 shards a node)."""
    shards, per_node = 100, 16
    nodes = math.ceil(shards / per_node)
    rows = []
    for label, r, pick in (
        ("int8 (C=320)", int8, lambda x: x["candidates"] == 320),
        (
            "pq1 + int8 copy (C=384, depth 128)",
            refined,
            lambda x: x["candidates"] == 384 and x["refine_depth"] == 128,
        ),
    ):
        (x,) = [x for x in r["latemm"] if pick(x)]
        disk = r["disk"]["by_file"]
        copy = disk.get("refine-vectors.npy", 0) + disk.get("refine-scales.npy", 0)
        resident = (r["disk"]["manifest_files_bytes"] - copy) * per_node / 1e9
        rows.append(
            [
                label,
                f"{x['recall@10']:.2f}",
                render.sig3(x["p50_ms"]),
                f"{shards * 2 * x['p50_ms'] / 1e3:.1f}",
                nodes,
                f"{r['disk']['manifest_files_bytes'] * per_node / 1e9:.0f}",
                f"{resident:.0f}",
                f"{x['batch_queries_per_s']:.0f}",
            ]
        )
    header = ["storage", "recall@10 per shard", "shard p50 ms", "core-s per query", "nodes"]
    header += ["GB on disk per node", "GB to keep in memory per node", "queries/s (batched)"]
    return render.table(header, rows)


def table_scale_residual(*runs: dict[str, Any]) -> str:
    """Section 5d: the 100k ColPali-shaped latency runs on the default index (res4 searched by
    its centroids, ``experiments.bench_scale``): the build's run, then searches of the same
    index with other depths or first stages, per candidate count."""
    r = runs[0]
    disk, build, exact = r["disk"], r["build"], r["exact"]
    head = (
        f"{r['pages']:,} pages, {disk['bytes_per_page'] / 1024:.1f} KiB per page every file "
        f"counted ({disk['manifest_files_bytes'] / 2**30:.2f} GiB), built at "
        f"{build['pages_per_s_wall']:.1f} pages/s; brute force "
        f"{exact['brute_force_single_query_s']:.1f} s for one query (float32 in RAM)."
    )
    rows = [[x.get("first_stage", "-"), *_scale_row(x)] for run in runs for x in run["latemm"]]
    header = [
        "first stage",
        "depth",
        "C",
        "recall@10",
        "p50 ms",
        "p95 ms",
        "queries/s batched",
    ]
    provenance = "\n\n".join(render.provenance(run) for run in runs)
    return f"{provenance}\n\n{head}\n\n{render.table(header, rows)}"


if __name__ == "__main__":
    main()
