"""Search and build speed at three page shapes, each against exact brute force in the same run,
and optionally against a checkout of another commit (same-run A/B), so that a regression on one
shape shows before it lands (issue 33).

    python -m experiments.bench_shapes                          # the three shapes, this checkout
    python -m experiments.bench_shapes --against 50894ce        # A/B, alternating, 2 rounds
    python -m experiments.bench_shapes --shapes long --long-pages 10000
    python -m experiments.bench_shapes --shapes short --short-shards 3 --against HEAD~1
    python -m experiments.bench_shapes --colpali-pages 100000   # the large ColPali option

Shapes:

- ``short``: Vaswani's 11,429 abstracts as real MiniLM token vectors (~48 x 384 each,
  ``experiments.common.vaswani_minilm``, cached under ``experiments/cache/``) and its 93
  queries repeated 5 times (465 queries), through the CLI as a user runs it: ``latemm index
  corpus.parquet`` (build, whole process) and ``latemm search`` of all 465 queries (whole
  process; ms/query is the process's wall time over 465, and the marginal cost per query once
  a 1-query run's time, the process start, is taken off).
- ``long``: synthetic long text pages, ``--long-pages`` x 700 x 384 float16
  (``experiments.synthetic.SyntheticCorpus`` with text-like settings: 384-d concepts, 12 topics
  a page, 30% background tokens, 20-token queries aimed at one page each), built and searched
  through the Python API, one query per call.
- ``colpali``: ColPali-shaped synthetic pages (1,030 x 128, the generator's defaults),
  ``--colpali-pages`` of them, through the Python API, one query per call.

For every shape and checkout: build seconds; per query p50 and mean; recall@10 against exact
MaxSim top-10 over the same stored (float16) vectors, computed in this run by brute force (one
float32 matrix product per block of pages for all queries, a max per page, a sum per query,
on all threads); and the speedup against that brute force's time per query, and against the
same products for one query at a time (the median of ``ONE_AT_A_TIME`` queries: the brute
force issue 33 measured, what a search of one query is up against). The in-process
shapes report the first pass over the queries (the index's files were just written, so they are
in the page cache: not a cold-disk figure) and the median of ``--passes`` repeated passes
(warm); with ``--cold`` (root only), one more pass at the first candidate count after
``sync; echo 3 > /proc/sys/vm/drop_caches``, every candidate read from disk.

``--against COMMIT`` checks the commit out into a temporary git worktree and runs the same
workers with ``PYTHONPATH`` at each checkout, alternating A and B for ``--rounds`` rounds (the
short shape builds anew each round; the others build once per checkout, then alternate their
search passes). Timings on a loaded machine are noise in absolute terms; read the ratios.
Writes ``results/bench_shapes[_NAME].json``; RESULTS.md renders the newest.

The worker half of this file (``worker``) imports only numpy, ``index_store`` and ``latemm``,
whichever checkout ``PYTHONPATH`` names, so that it runs unchanged against an older commit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

K = 10
REPEATS = 5  # Vaswani's 93 queries, each 5 times (465, as issue 33 measured)
LONG = {"dim": 384, "tokens_per_page": 700, "topics_per_page": 12, "background_share": 0.3}
LONG_QUERY_TOKENS = 20


# ------------------------------------------------------------------------------------ worker
def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Build (unless the index exists) and search one shape with this process's checkout."""
    from index_store import Index, IndexConfig, create
    from latemm.retrieval.retriever import Retriever

    data = Path(spec["data"])
    out: dict[str, Any] = {}
    index_path = Path(spec["index"])
    if not (index_path / "manifest.json").is_file():
        pages = np.load(data / "pages.npy", mmap_mode="r")  # (n, T, d) float16
        n, width, dim = pages.shape
        start = time.perf_counter()
        with create(index_path, IndexConfig(dim=dim, dtype=spec.get("dtype", "float16"))) as writer:
            for first in range(0, n, 512):
                block = np.asarray(pages[first : first + 512], dtype=np.float32)
                writer.add(
                    [f"p{first + i}" for i in range(len(block))],
                    block.reshape(-1, dim),
                    offsets=np.arange(len(block) + 1) * width,
                )
                writer.commit()
        out["build_s"] = time.perf_counter() - start
    queries = np.load(data / "queries.npy").astype(np.float32)  # (Q, Tq, d)
    retriever = Retriever(Index.open(index_path, verify="none"))
    out["by_candidates"] = {}
    for candidates in spec["candidates"]:
        passes, ids = [], None
        for _ in range(spec["passes"]):
            times = []
            found = []
            for query in queries:
                start = time.perf_counter()
                result = retriever.search_embeddings([query], k=K, candidates=candidates)
                times.append(time.perf_counter() - start)
                found.append([d for d in result.doc_ids[0] if d is not None])
            passes.append(times)
            ids = found
        out["by_candidates"][str(candidates)] = {"passes_s": passes, "ids": ids}
    if spec.get("cold"):
        # One pass more at the first candidate count with the page cache dropped (root only):
        # every candidate read comes from disk.
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n", encoding="utf-8")
        times = []
        for query in queries:
            start = time.perf_counter()
            retriever.search_embeddings([query], k=K, candidates=spec["candidates"][0])
            times.append(time.perf_counter() - start)
        out["cold_s"] = times
    return out


# ------------------------------------------------------------------------------------ driver
ONE_AT_A_TIME = 10  # queries timed one by one against every page (the median is reported),
ONE_AT_A_TIME_BUDGET_S = 60.0  # or fewer once this many seconds are spent on them
RESIDENT_BYTES = 4 << 30  # brute force holds pages in float32 up to this size
BLOCK_TOKENS = 1 << 16  # page tokens per brute-force product


def _exact(
    pages: np.ndarray, offsets: np.ndarray, queries: list[np.ndarray], ids: list[str]
) -> tuple[list[list[str]], float, dict[str, float]]:
    """Exact top-K doc ids per query by brute force; the seconds per query it took with all
    queries' tokens against one block of pages per float32 product (torch, all threads); and
    the median seconds of one query at a time (``ONE_AT_A_TIME`` queries: what a search of one
    query is up against) through the same torch products and through numpy (``torch`` and
    ``numpy``: issue 33 measured against "exact numpy brute force"). Pages
    whose float32 copy fits ``RESIDENT_BYTES`` are widened once, before any timing, as a brute
    force that holds its corpus in memory would keep them; larger ones are widened per block."""
    if pages.dtype != np.float32 and pages.size * 4 <= RESIDENT_BYTES:
        pages = np.asarray(pages, dtype=np.float32)
    start = time.perf_counter()
    scores = _brute_scores(pages, offsets, queries)
    seconds = (time.perf_counter() - start) / len(queries)
    one: dict[str, list[float]] = {"torch": [], "numpy": []}
    for query in queries[:ONE_AT_A_TIME]:
        for name, times in one.items():
            if sum(times) > ONE_AT_A_TIME_BUDGET_S:  # 100k ColPali pages: ~30 s a query
                continue
            start = time.perf_counter()
            if name == "torch":
                _brute_scores(pages, offsets, [query])
            else:
                _numpy_scores(pages, offsets, query)
            times.append(time.perf_counter() - start)
    names = np.array(ids)
    # Best first, ties by doc_id like the retriever.
    order = [np.lexsort((names, -row))[:K] for row in scores]
    medians = {name: float(np.median(times)) for name, times in one.items()}
    return [list(names[o]) for o in order], seconds, medians


def _numpy_scores(pages: np.ndarray, offsets: np.ndarray, query: np.ndarray) -> np.ndarray:
    """(n,) exact MaxSim of one query against every page with numpy: one float32 product per
    block of pages, each page's maxima by ``np.maximum.reduceat`` (issue 33's "exact numpy
    brute force"; section 3's brute force is this too)."""
    n = offsets.size - 1
    out = np.empty(n, dtype=np.float32)
    q = np.asarray(query, dtype=np.float32).T  # (d, Tq)
    first = 0
    while first < n:
        stop = int(np.searchsorted(offsets, offsets[first] + BLOCK_TOKENS, side="right")) - 1
        stop = min(max(stop, first + 1), n)
        block = np.asarray(pages[offsets[first] : offsets[stop]], dtype=np.float32)
        starts = offsets[first:stop] - offsets[first]
        out[first:stop] = np.maximum.reduceat(block @ q, starts, axis=0).sum(axis=1)
        first = stop
    return out


def _brute_scores(pages: np.ndarray, offsets: np.ndarray, queries: list[np.ndarray]) -> np.ndarray:
    """(Q, n) exact MaxSim of every query against every page, one float32 product per block of
    pages for all the queries' tokens at once."""
    import torch

    q_flat = torch.from_numpy(np.concatenate(queries).astype(np.float32))  # (Nq, d)
    q_lengths = [len(q) for q in queries]
    n = offsets.size - 1
    scores = np.empty((len(queries), n), dtype=np.float32)
    first = 0
    while first < n:
        stop = int(np.searchsorted(offsets, offsets[first] + BLOCK_TOKENS, side="right")) - 1
        stop = min(max(stop, first + 1), n)
        block = torch.from_numpy(np.asarray(pages[offsets[first] : offsets[stop]], np.float32))
        sim = block @ q_flat.T  # (Nb, Nq)
        lengths = torch.from_numpy(np.diff(offsets[first : stop + 1]))
        owner = torch.repeat_interleave(torch.arange(stop - first), lengths)
        best = torch.full((stop - first, sim.shape[1]), -torch.inf)
        best.scatter_reduce_(0, owner[:, None].expand_as(sim), sim, reduce="amax")  # (nb, Nq)
        per_query = torch.split(best, q_lengths, dim=1)
        scores[:, first:stop] = torch.stack([b.sum(dim=1) for b in per_query]).numpy()
        first = stop
    return scores


def _recall(found: list[list[str]], exact: list[list[str]]) -> float:
    return float(
        np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)])
    )


def _env(checkout: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(checkout)
    return env


def _timed(command: list[str], checkout: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=checkout, env=_env(checkout), capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed in {checkout}:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def _latemm() -> str:
    return str(Path(sys.executable).with_name("latemm"))


def prepare_short(cache: Path) -> dict[str, Any]:
    """Vaswani's corpus and 465 queries as Parquet files with an ``embedding`` column, the
    stored float16 vectors, and the exact top-K."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from experiments.common import vaswani_minilm

    data = vaswani_minilm()
    folder = cache / "short"
    folder.mkdir(parents=True, exist_ok=True)
    doc_ids = [str(d) for d in data["doc_ids"]]
    vectors, offsets = data["doc_vectors"], data["doc_offsets"].astype(np.int64)
    q_vectors, q_offsets = data["query_vectors"], data["query_offsets"].astype(np.int64)
    base = [q_vectors[q_offsets[i] : q_offsets[i + 1]] for i in range(q_offsets.size - 1)]
    queries = [q for _ in range(REPEATS) for q in base]
    query_ids = [f"{data['query_ids'][i]}-{r}" for r in range(REPEATS) for i in range(len(base))]

    def table(ids: list[str], sets: list[np.ndarray], id_name: str) -> pa.Table:
        lengths = np.array([len(s) for s in sets])
        flat = np.concatenate(sets).astype(np.float32)
        inner = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1])
        outer = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(lengths)])), inner)
        return pa.table({id_name: pa.array(ids), "embedding": outer})

    corpus, questions, one = (folder / n for n in ("corpus.parquet", "q.parquet", "q1.parquet"))
    if not corpus.is_file():
        sets = [vectors[offsets[i] : offsets[i + 1]] for i in range(offsets.size - 1)]
        pq.write_table(table(doc_ids, sets, "doc_id"), corpus)
    pq.write_table(table(query_ids, queries, "query_id"), questions)
    pq.write_table(table(query_ids[:1], queries[:1], "query_id"), one)
    exact, brute, single = _exact(vectors, offsets, queries, doc_ids)
    return {
        "folder": folder,
        "query_ids": query_ids,
        "exact": exact,
        "brute_force_s_per_query": brute,
        "brute_force_one_query_s": single["torch"],
        "brute_force_numpy_one_query_s": single["numpy"],
        "documents": len(doc_ids),
        "queries": len(queries),
        "tokens_per_page": float(np.diff(offsets).mean()),
        "tokens_per_query": float(np.mean([len(q) for q in queries])),
        "dim": int(vectors.shape[1]),
    }


def run_short(
    prep: dict[str, Any],
    checkout: Path,
    work: Path,
    tag: str,
    shards: int | None = None,
    candidates: int | None = None,
) -> dict[str, Any]:
    """One round of the CLI on one checkout: build (``--shards N`` with ``shards``), search all
    queries (``--candidates`` with ``candidates``), search one."""
    import pyarrow.parquet as pq

    folder = prep["folder"]
    index = work / f"short-{tag}"
    run = work / f"short-{tag}.parquet"
    subprocess.run(["rm", "-rf", str(index)], check=True)
    latemm = _latemm()
    sharding = [] if shards is None else ["--shards", str(shards)]
    build = _timed(
        [latemm, "index", str(folder / "corpus.parquet"), "--index", str(index), *sharding],
        checkout,
    )
    chosen = [] if candidates is None else ["--candidates", str(candidates)]
    search = _timed(
        [
            *[latemm, "search", str(index), str(folder / "q.parquet"), "--out", str(run)],
            *["--k", str(K), *chosen],
        ],
        checkout,
    )
    one = _timed(
        [latemm, "search", str(index), str(folder / "q1.parquet"), "--out", str(run) + "1"],
        checkout,
    )
    table = pq.read_table(run).to_pylist()
    found: dict[str, list[str]] = {q: [] for q in prep["query_ids"]}
    for row in sorted(table, key=lambda r: (r["query_id"], r["rank"])):
        found[row["query_id"]].append(row["doc_id"])
    n = prep["queries"]
    recall = _recall([found[q] for q in prep["query_ids"]], prep["exact"])
    disk = sum(f.stat().st_size for f in index.rglob("*") if f.is_file())
    subprocess.run(["rm", "-rf", str(index)], check=True)
    return {
        "disk_mib": disk / 2**20,
        "build_s": build,
        "search_s": search,
        "search_one_s": one,
        "ms_per_query": 1e3 * search / n,
        "marginal_ms_per_query": 1e3 * (search - one) / (n - 1),
        "recall@10": recall,
        "speedup_vs_brute_force": prep["brute_force_s_per_query"] / (search / n),
        "speedup_vs_one_query_brute_force": prep["brute_force_one_query_s"] / (search / n),
        "speedup_vs_numpy_brute_force": prep["brute_force_numpy_one_query_s"] / (search / n),
    }


def prepare_synthetic(
    cache: Path, name: str, n_pages: int, n_queries: int, **settings: Any
) -> dict[str, Any]:
    """The shape's pages as one (n, T, d) float16 ``pages.npy`` (what the index stores), its
    queries, and the exact top-K over the stored values."""
    from experiments.synthetic import SyntheticCorpus

    query_tokens = settings.pop("query_tokens", 24)
    corpus = SyntheticCorpus(**settings, query_tokens=query_tokens)
    folder = cache / f"{name}-{n_pages}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pages.npy"
    if not path.is_file():
        shape = (n_pages, corpus.tokens_per_page, corpus.dim)
        tmp = folder / "pages.tmp.npy"
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
        for first, pages in corpus.batches(n_pages, batch=512):
            out[first : first + len(pages)] = pages.astype(np.float16)
        out.flush()
        del out
        tmp.replace(path)
    queries, targets = corpus.queries(n_queries, n_pages)
    np.save(folder / "queries.npy", queries)
    pages = np.load(path, mmap_mode="r")
    flat = pages.reshape(-1, corpus.dim)
    offsets = np.arange(n_pages + 1, dtype=np.int64) * corpus.tokens_per_page
    ids = [f"p{i}" for i in range(n_pages)]
    exact, brute, single = _exact(flat, offsets, list(queries), ids)
    return {
        "folder": folder,
        "exact": exact,
        "brute_force_s_per_query": brute,
        "brute_force_one_query_s": single["torch"],
        "brute_force_numpy_one_query_s": single["numpy"],
        "target_first": float(
            np.mean([e[0] == f"p{t}" for e, t in zip(exact, targets, strict=True)])
        ),
        "documents": n_pages,
        "queries": n_queries,
        "tokens_per_page": corpus.tokens_per_page,
        "tokens_per_query": query_tokens,
        "dim": corpus.dim,
    }


def run_synthetic(
    prep: dict[str, Any],
    checkout: Path,
    index: Path,
    passes: int,
    candidates: list[int | None],
    cold: bool = False,
    dtype: str = "float16",
) -> dict[str, Any]:
    """The worker in a fresh process of ``checkout``: build (once per index) and search at
    each candidate count (None: the retriever's default); the first count's figures are the
    row's, the others go under ``by_candidates``."""
    spec = {"data": str(prep["folder"]), "index": str(index), "passes": passes}
    spec["candidates"] = candidates
    spec["cold"] = cold
    spec["dtype"] = dtype
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", fh.name],
        cwd=checkout,
        env=_env(checkout),
        capture_output=True,
        text=True,
    )
    os.unlink(fh.name)
    if done.returncode:
        raise RuntimeError(f"worker failed in {checkout}:\n{done.stderr[-3000:]}")
    got = json.loads(done.stdout.strip().splitlines()[-1])
    rows = {count: _timings(run, prep) for count, run in got["by_candidates"].items()}
    out: dict[str, Any] = dict(rows[str(candidates[0])])
    if len(rows) > 1:
        out["by_candidates"] = rows
    if "build_s" in got:
        out["build_s"] = got["build_s"]
    if "cold_s" in got:
        out["cold_p50_ms"] = 1e3 * float(np.median(got["cold_s"]))
        out["cold_mean_ms"] = 1e3 * float(np.mean(got["cold_s"]))
    return out


def _timings(run: dict[str, Any], prep: dict[str, Any]) -> dict[str, float]:
    """First pass and warm (later passes) per-query times of one candidate count, and recall."""
    first, rest = run["passes_s"][0], run["passes_s"][1:] or run["passes_s"][:1]
    out = {
        "first_pass_p50_ms": 1e3 * float(np.median(first)),
        "first_pass_mean_ms": 1e3 * float(np.mean(first)),
        "p50_ms": 1e3 * float(np.median([np.median(p) for p in rest])),
        "mean_ms": 1e3 * float(np.mean([np.mean(p) for p in rest])),
        "recall@10": _recall(run["ids"], prep["exact"]),
    }
    out["speedup_vs_brute_force"] = prep["brute_force_s_per_query"] * 1e3 / out["p50_ms"]
    out["speedup_vs_one_query_brute_force"] = prep["brute_force_one_query_s"] * 1e3 / out["p50_ms"]
    out["speedup_vs_numpy_brute_force"] = (
        prep["brute_force_numpy_one_query_s"] * 1e3 / out["p50_ms"]
    )
    return out


def _summary(rounds: list[dict[str, Any]]) -> dict[str, float]:
    """Median over rounds of every numeric field."""
    keys = sorted({k for r in rounds for k in r})
    numeric = [k for k in keys if all(isinstance(r.get(k, 0.0), float | int) for r in rounds)]
    return {k: float(np.median([r[k] for r in rounds if k in r])) for k in numeric}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--shapes", nargs="+", default=["short", "long", "colpali"])
    parser.add_argument("--long-pages", type=int, default=10_000)
    parser.add_argument("--long-queries", type=int, default=30)
    parser.add_argument("--colpali-pages", type=int, default=5_000)
    parser.add_argument("--colpali-queries", type=int, default=30)
    parser.add_argument(
        "--colpali-dtype",
        default="float16",
        help="what the ColPali-shaped index stores (int8 keeps 100k pages in 24 GB of page cache)",
    )
    parser.add_argument(
        "--share-index",
        action="store_true",
        help="with --against, both checkouts search one index per in-process shape, built by "
        "this one (format-compatible commits; 100k ColPali pages do not fit twice on disk)",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        nargs="+",
        default=[None],
        help="candidate counts searched by the in-process shapes (default: the retriever's); "
        "the first is each row's, all are recorded; the short shape's CLI searches use the first",
    )
    parser.add_argument(
        "--short-shards",
        type=int,
        default=None,
        help="the short shape indexed with `latemm index --shards N` (a sharded index's search)",
    )
    parser.add_argument("--passes", type=int, default=3, help="search passes per worker")
    parser.add_argument("--against", help="a commit to A/B against (git worktree, temp dir)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--ab-shapes",
        nargs="+",
        default=["short", "colpali"],
        help="shapes run on both checkouts with --against (long builds take minutes each)",
    )
    parser.add_argument("--name", default="", help="results/bench_shapes_NAME.json")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="in-process shapes: one more pass at the first candidate count after dropping the "
        "page cache (needs root; it empties every process's cache, so run it once)",
    )
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.worker).read_text(encoding="utf-8"))
        print(json.dumps(worker(spec)))
        return
    from experiments.common import CACHE, REPO

    cache = CACHE / "bench_shapes"
    checkouts: dict[str, Path] = {"head": REPO}
    cache.mkdir(parents=True, exist_ok=True)
    # Indexes and the other checkout live outside the repository (linters and git stay clear).
    work = Path(tempfile.mkdtemp(prefix="bench-shapes-"))
    if args.against:
        other = work / "against"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(other), args.against],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        checkouts["against"] = other
    shapes: dict[str, Any] = {}
    try:
        for shape in args.shapes:
            print(f"[{shape}] preparing", flush=True)
            if shape == "short":
                prep = prepare_short(cache)
            elif shape == "long":
                prep = prepare_synthetic(
                    cache,
                    "long",
                    args.long_pages,
                    args.long_queries,
                    **LONG,
                    query_tokens=LONG_QUERY_TOKENS,
                )
            elif shape == "colpali":
                prep = prepare_synthetic(cache, "colpali", args.colpali_pages, args.colpali_queries)
            else:
                raise SystemExit(f"unknown shape {shape!r}: short, long or colpali")
            print(
                f"[{shape}] brute force {prep['brute_force_s_per_query'] * 1e3:.1f} ms/query "
                f"batched, {prep['brute_force_one_query_s'] * 1e3:.1f} ms one query at a time, "
                f"{prep['brute_force_numpy_one_query_s'] * 1e3:.1f} ms one query with numpy",
                flush=True,
            )
            pair = checkouts if shape in args.ab_shapes else {"head": REPO}
            runs: dict[str, list[dict[str, Any]]] = {tag: [] for tag in pair}
            for r in range(args.rounds if len(pair) > 1 or shape == "short" else 1):
                for tag, checkout in pair.items():
                    if shape == "short":
                        got = run_short(
                            prep, checkout, work, tag, args.short_shards, args.candidates[0]
                        )
                    else:
                        index = work / (shape if args.share_index else f"{shape}-{tag}")
                        got = run_synthetic(
                            prep,
                            checkout,
                            index,
                            args.passes,
                            args.candidates,
                            args.cold,
                            args.colpali_dtype if shape == "colpali" else "float16",
                        )
                    runs[tag].append(got)
                    print(f"[{shape}] round {r + 1} {tag}: {json.dumps(got)}", flush=True)
                    # Written after every run, so that a long benchmark cut short keeps its rounds.
                    shapes[shape] = {
                        **{
                            k: v
                            for k, v in prep.items()
                            if k not in ("folder", "exact", "query_ids")
                        },
                        "runs": runs,
                        "median": {t: _summary(rows) for t, rows in runs.items() if rows},
                    }
                    _write(args, shapes)
    finally:
        if args.against:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(checkouts["against"])],
                cwd=REPO,
                capture_output=True,
            )
        subprocess.run(["rm", "-rf", str(work)], check=False)
    print(f"wrote {_write(args, shapes)}")


def _write(args: argparse.Namespace, shapes: dict[str, Any]) -> Path:
    from experiments.common import write_result

    name = "bench_shapes" + (f"_{args.name}" if args.name else "")
    record = {"against": args.against, "rounds": args.rounds, "shapes": shapes}
    if args.short_shards is not None:
        record["short_shards"] = args.short_shards
    if "short" in shapes and args.candidates[0] is not None:
        record["short_candidates"] = args.candidates[0]
    return write_result(name, record)


def render_section(r: dict[str, Any], sources: Any) -> str:
    """Issue 33: build and search at three page shapes, against brute force in the same run
    and, with ``--against``, a checkout of another commit run alternately; then every named
    run (``bench_shapes_<name>.json``, e.g. one shape at another size) the same way. (Imports
    the report's helpers here: a checkout under test runs this file's worker without them.)"""
    from experiments import render
    from experiments.common import RESULTS

    lines = [
        "## 9. Speed at three page shapes (issue 33)",
        "",
        "`experiments/bench_shapes.py`: Vaswani's real MiniLM token vectors through the CLI "
        "(whole process: `latemm index`, then `latemm search` of 465 queries), synthetic long "
        "text pages and ColPali-shaped pages through the Python API (one query per call). "
        "Recall@10 is against exact MaxSim top-10 over the same stored vectors, and the speedups "
        "are per query against three brute forces timed in the same run: all queries at once "
        "(one float32 torch product per block of pages), one query at a time with the same "
        "products, and one query at a time with numpy (issue 33's measure); with `--against` "
        "the other commit ran alternately with this one. Medians over rounds; absolute times "
        "on a loaded machine are noise, read the ratios.",
    ]
    named = sorted(RESULTS.glob("bench_shapes_*.json"))
    for record in [r] + [json.loads(p.read_text(encoding="utf-8")) for p in named]:
        lines += ["", render.provenance(record), *_shape_blocks(record)]
    return "\n".join(lines)


def _shape_blocks(r: dict[str, Any]) -> list[str]:
    """One table per shape of a ``bench_shapes`` record (and its candidate counts, if several)."""
    from experiments import render

    names = {"head": f"`{r.get('commit')}`", "against": f"`{r.get('against')}`"}
    lines = []
    for shape, block in r["shapes"].items():
        lines += [
            "",
            f"**{shape}**"
            + (f" ({r['short_shards']} shards)" if shape == "short" and "short_shards" in r else "")
            + (
                f" (--candidates {r['short_candidates']})"
                if shape == "short" and "short_candidates" in r
                else ""
            )
            + f": {block['documents']:,} pages of {block['tokens_per_page']:.0f} tokens "
            f"on average, {block['queries']} queries of {block['tokens_per_query']:.0f} tokens, "
            f"d = {block['dim']}; brute force {block['brute_force_s_per_query'] * 1e3:.0f} ms "
            "per query batched"
            + (
                f", {block['brute_force_one_query_s'] * 1e3:.0f} ms one query at a time"
                + (
                    f", {block['brute_force_numpy_one_query_s'] * 1e3:.0f} ms one query with numpy."
                    if "brute_force_numpy_one_query_s" in block
                    else "."
                )
                if "brute_force_one_query_s" in block
                else "."
            ),
            "",
        ]
        if shape == "short":
            header = ["checkout", "build s", "ms/query (whole)", "ms/query (marginal)"]
            keys = ["build_s", "ms_per_query", "marginal_ms_per_query"]
            if any("disk_mib" in row for row in block["median"].values()):
                header.append("MiB on disk")
                keys.append("disk_mib")
        else:
            header = ["checkout", "build s", "first pass p50 ms", "warm p50 ms", "warm mean ms"]
            keys = ["build_s", "first_pass_p50_ms", "p50_ms", "mean_ms"]
            if any("cold_p50_ms" in row for row in block["median"].values()):
                header.append("cold p50 ms")
                keys.append("cold_p50_ms")
        header += ["recall@10", "x brute force (batched)"]
        keys += ["recall@10", "speedup_vs_brute_force"]
        for key, title in (
            ("speedup_vs_one_query_brute_force", "x brute force (one query)"),
            ("speedup_vs_numpy_brute_force", "x numpy brute force (one query)"),
        ):
            if any(key in row for row in block["median"].values()):
                header.append(title)
                keys.append(key)
        rows = [
            [names[tag]] + [row.get(k, float("nan")) for k in keys]
            for tag, row in block["median"].items()
        ]
        lines.append(render.table(header, rows))
        by = block["runs"]["head"][0].get("by_candidates")
        if by and len(block["runs"]) == 1:
            lines += [
                "",
                render.table(
                    ["candidates", "first pass p50 ms", "warm p50 ms", "recall@10"],
                    [
                        [int(c), v["first_pass_p50_ms"], v["p50_ms"], v["recall@10"]]
                        for c, v in by.items()
                    ],
                ),
            ]
        elif by:  # an A/B: each checkout's warm p50 per count, median over its rounds
            tags = list(block["runs"])
            lines += [
                "",
                render.table(
                    ["candidates", "recall@10"] + [f"warm p50 ms {names[t]}" for t in tags],
                    [
                        [int(c), v["recall@10"]]
                        + [
                            float(np.median([run["by_candidates"][c]["p50_ms"] for run in runs]))
                            for runs in block["runs"].values()
                        ]
                        for c, v in by.items()
                    ],
                ),
            ]
    return lines


if __name__ == "__main__":
    main()
