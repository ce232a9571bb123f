"""Ingest throughput, peak memory and bytes per document of the on-disk index.

Run: ``python -m experiments.bench_index [--quick] [--sizes 10000 30000] [--baseline REV]``.
Each size runs in a fresh subprocess so its peak RSS is its own: ColPali-shaped synthetic pages
(1,030 x 128) are generated in batches and added through ``IndexWriter`` (no model), committing
every 512 pages. Generation is excluded from the throughput; both wall-clock and CPU seconds of
``add`` + ``commit`` are recorded (on a shared machine the CPU time is the steadier figure).

The baseline is the same child run on another commit's code (``git archive REV`` of ``fde``,
``index_store`` and ``experiments``, by default the commit before the ingest speed-ups), in the
same run, so the ratio compares like with like. Writes ``results/bench_index[_quick].json``
(``results/NAME.json`` with ``--name``: a re-check then leaves the recorded runs alone).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the child imports this file from the baseline's tree, which predates render
    from experiments.render import Sources

# The code before the ingest speed-ups of issue 14 (goal 5).
BASELINE_REV = "5ea98e8"
REPO = Path(__file__).resolve().parents[1]


def ingest(n_docs: int, dtype: str, directory: Path, commit_every: int = 512) -> dict[str, float]:
    from experiments.synthetic import SyntheticCorpus
    from index_store import Index, IndexConfig, create

    corpus = SyntheticCorpus()
    busy = cpu = 0.0
    with create(directory, IndexConfig(dim=corpus.dim, dtype=dtype)) as writer:
        for start, pages in corpus.batches(n_docs, batch=commit_every):
            t0, c0 = time.perf_counter(), time.process_time()
            ids = [f"p{start + i}" for i in range(len(pages))]
            writer.add(
                ids,
                pages.reshape(-1, corpus.dim),
                offsets=np.arange(len(pages) + 1) * corpus.tokens_per_page,
            )
            writer.commit()
            busy += time.perf_counter() - t0
            cpu += time.process_time() - c0
    stats = Index.open(directory, verify="none").stats()
    return {
        "documents": n_docs,
        "dtype": dtype,
        "docs_per_s": n_docs / busy,
        "ingest_seconds": busy,
        "cpu_seconds": cpu,
        "cpu_ms_per_doc": 1e3 * cpu / n_docs,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "disk_bytes": stats["disk_bytes"],
        "bytes_per_document": stats["bytes_per_document"],
        "segments": stats["segments"],
    }


def _child(n_docs: int, dtype: str) -> None:
    directory = Path(tempfile.mkdtemp(prefix="latemm-bench-index-"))
    try:
        print(json.dumps(ingest(n_docs, dtype, directory / "idx")))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def baseline_tree(rev: str, into: Path) -> Path:
    """The packages at ``rev`` (``git archive``), for a baseline child to import."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "fde", "index_store", "experiments"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def run_child(
    n_docs: int, dtype: str, code: Path = REPO, threads: int | None = None
) -> dict[str, float]:
    """One size in a fresh process importing the packages under ``code``."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(n_docs), dtype],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=code,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _line(label: str, row: dict[str, float]) -> str:
    return (
        f"{label:>24}: {row['docs_per_s']:.0f} docs/s wall, {row['cpu_ms_per_doc']:.2f} CPU ms/doc, "
        f"peak RSS {row['peak_rss_mb']:.0f} MB, {row['bytes_per_document'] / 1024:.0f} KiB/doc"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="sizes 2,000 and 10,000")
    parser.add_argument("--sizes", type=int, nargs="*", default=None)
    parser.add_argument("--baseline", default=BASELINE_REV, help="git revision of the baseline")
    parser.add_argument("--baseline-size", type=int, default=None, help="default: smallest size")
    parser.add_argument("--no-storage", action="store_true", help="skip the dtype table")
    parser.add_argument(
        "--dtype",
        default="float16",
        help="storage dtype of the baseline and growth runs (results/bench_index_<dtype>.json "
        "for any but float16)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch/OpenMP threads of every child (on a busy shared machine, 1 keeps the CPU "
        "time from counting idle spinning)",
    )
    parser.add_argument("--name", default=None, help="results file name (default as above)")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(int(args.child[0]), args.child[1])
        return
    from experiments.common import write_result

    load_before = os.getloadavg()
    sizes = args.sizes or ([2000, 10000] if args.quick else [10000, 100000])
    baseline_size = args.baseline_size or sizes[0]
    with tempfile.TemporaryDirectory(prefix="latemm-baseline-") as tmp:
        tree = baseline_tree(args.baseline, Path(tmp))
        baseline = run_child(baseline_size, args.dtype, tree, args.threads)
    print(_line(f"{baseline_size} baseline {args.baseline}", baseline))
    growth = []
    for n in sizes:
        row = run_child(n, args.dtype, threads=args.threads)
        growth.append(row)
        print(_line(f"{n} {args.dtype}", row))
    same = (
        next(r for r in growth if r["documents"] == baseline_size)
        if baseline_size in sizes
        else None
    )
    if same is None:
        same = run_child(baseline_size, args.dtype, threads=args.threads)
    storage = []
    for dtype in () if args.no_storage else ("float32", "float16", "int8", "binary"):
        row = run_child(1000, dtype, threads=args.threads)
        storage.append(row)
        print(_line(dtype, row))
    rss = [r["peak_rss_mb"] for r in growth]
    speedup = {
        "wall": same["docs_per_s"] / baseline["docs_per_s"],
        "cpu": baseline["cpu_ms_per_doc"] / same["cpu_ms_per_doc"],
    }
    print(f"speed-up over {args.baseline}: {speedup['wall']:.2f}x wall, {speedup['cpu']:.2f}x CPU")
    # Wall-clock figures are only as good as the machine was idle: record how busy it was.
    load = {"before": load_before, "after": os.getloadavg(), "cores": os.cpu_count()}
    print(f"load average (1, 5, 15 min) before {load['before']}, after {load['after']}")
    name = "bench_index" + ("" if args.dtype == "float16" else f"_{args.dtype}")
    write_result(
        args.name or name + ("_quick" if args.quick else ""),
        {
            "dtype": args.dtype,
            "threads": args.threads,
            "load_average": load,
            "baseline": {"revision": args.baseline, **baseline},
            "speedup_over_baseline": speedup,
            "growth": growth,
            "storage": storage,
            "peak_rss_ratio_largest_to_smallest": rss[-1] / rss[0],
            "size_ratio_largest_to_smallest": sizes[-1] / sizes[0],
        },
    )


# ------------------------------------------------------------------------------ report
def _index_repeats(r: dict[str, Any], results: Path) -> list[dict[str, Any]]:
    """``r`` and its repeats (``bench_index_repeat<N>.json``: same sizes and baseline)."""
    same = [
        json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(results.glob("bench_index_repeat*.json"))
    ]
    sizes = [g["documents"] for g in r["growth"]]
    return [r] + [
        x
        for x in same
        if [g["documents"] for g in x["growth"]] == sizes
        and x.get("baseline", {}).get("revision") == r.get("baseline", {}).get("revision")
    ]


def render_section(r: dict[str, Any], sources: Sources) -> str:
    """Section 2: one row per code and size, each run's pages/s and CPU ms/page side by side."""
    from experiments import render

    out = [
        "## 2. Ingest: throughput, memory, bytes per page",
        render.provenance(r, sources.optional_writeup("bench_index.provenance")),
        "",
    ]
    runs = _index_repeats(r, sources.results)
    rows = []
    for i, g in enumerate(r["growth"]):
        per_run = [x["growth"][i] for x in runs]
        rows.append(["this commit", g, per_run])
    if "baseline" in r:
        b = r["baseline"]
        rows.insert(0, [f"baseline {b['revision']}", b, [x["baseline"] for x in runs]])
    label = " / ".join(str(n) for n in range(1, len(runs) + 1))
    header = ["code", "pages (1,030 x 128)", f"pages/s (wall), runs {label}", "median"]
    header += [f"CPU ms/page, runs {label}", "peak RSS MB", "KiB/page on disk", "segments"]
    table = []
    for code, g, per_run in rows:
        rss = [x["peak_rss_mb"] for x in per_run]
        table.append(
            [
                code,
                g["documents"],
                " / ".join(render.fmt(x["docs_per_s"]) for x in per_run),
                render.fmt(float(statistics.median(x["docs_per_s"] for x in per_run))),
                " / ".join(f"{x.get('cpu_ms_per_doc', float('nan')):.2f}" for x in per_run),
                f"{min(rss):,.0f}-{max(rss):,.0f}",
                g["bytes_per_document"] / 1024,
                g["segments"],
            ]
        )
    out.append(render.table(header, table))
    if "speedup_over_baseline" in r:
        wall = " / ".join(f"{x['speedup_over_baseline']['wall']:.2f}x" for x in runs)
        cpu = " / ".join(f"{x['speedup_over_baseline']['cpu']:.2f}x" for x in runs)
        peak = [x["peak_rss_ratio_largest_to_smallest"] for x in runs]
        out.append(
            f"\nSame runs, same size: {wall} the baseline's pages/s, {cpu} less CPU per page. "
            f"Peak memory {min(peak):.2f}x-{max(peak):.2f}x while the corpus grew "
            f"{r['size_ratio_largest_to_smallest']:.0f}x."
        )
    goal = sources.optional_writeup("bench_index.goal5")
    if goal:
        out.append("\n" + goal)
    if r["storage"]:
        rows = [[s["dtype"], s["bytes_per_document"] / 1024, s["docs_per_s"]] for s in r["storage"]]
        header = ["storage", "KiB/page (vectors + FDE codes or index + metadata)", "pages/s"]
        out.append("\n" + render.table(header, rows))
    int8 = sources.optional_writeup("bench_index.int8")
    if int8:
        out.append("\n" + int8)
    return "\n".join(out)


if __name__ == "__main__":
    main()
