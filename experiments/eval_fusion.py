"""Fusing a MiniLM multi-vector field with a BM25 field in one index, against each alone.

Run: ``python -m experiments.eval_fusion [--quick]``. Writes ``results/eval_fusion.json``.

UniDoc-Bench found text-image fusion ahead of text-only and image-only retrieval on real PDF
pages. Here the two fields are both text (page images need ColQwen2-class weights, not
available offline): MiniLM multi-vector (FDE + exact MaxSim) and BM25 (bm25s). Each data set
goes through the main job's functions: ``latemm ingest`` (MMLongBench-Doc), ``latemm index
--field text=MINILM --field bm25=bm25``, then ``latemm search`` with ``--fields bm25``,
``--fields text`` and both fused by RRF (k=60) and by weighted fusion (min-max normalised,
equal weights). The corpora and questions are eval_text's (same ingest, same filters).
Metrics and the paired two-sided t-test are ranx's (``ranx.compare``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from experiments.common import CACHE, RESULTS, minilm_path, shared_data_dir, write_result
from experiments.eval_text import TextBench, mmlongbench_files, vaswani_files
from latemm.field_search import search_fields_file
from latemm.fields import index_fields
from latemm.metrics import compare, evaluate, load_run

# Label -> search options. Weights are fixed in advance (equal), not tuned on the test queries.
SYSTEMS: dict[str, dict[str, Any]] = {
    "bm25": {"fields": ["bm25"]},
    "minilm-multivector": {"fields": ["text"]},
    "fusion-rrf": {"fields": ["text", "bm25"], "fusion": "rrf"},
    "fusion-weighted": {
        "fields": ["text", "bm25"],
        "fusion": "weighted",
        "weights": {"text": 0.5, "bm25": 0.5},
    },
}


def run_systems(name: str, bench: TextBench, work: Path, k: int = 100) -> dict[str, Any]:
    """Index both fields once, search each system, evaluate and compare."""
    index_dir = work / f"{name}-fields"
    t0 = time.perf_counter()
    # Small commits: an interrupted run resumes with little lost (re-running skips them).
    fields = {"text": minilm_path(), "bm25": "bm25"}
    counts = index_fields(bench.corpus, index_dir, fields, progress=False, commit_every=128)
    t_index = time.perf_counter() - t0
    print(f"  {name}: indexed {counts} in {t_index:.0f}s")
    runs, timings = {}, {}
    for label, options in SYSTEMS.items():
        out = work / f"{name}-{label}.run.parquet"
        t0 = time.perf_counter()
        search_fields_file(index_dir, bench.queries, out, k=k, progress=False, **options)
        timings[label] = time.perf_counter() - t0
        print(f"  {name} {label}: search {timings[label]:.1f}s")
        runs[label] = load_run(out)
    return {"fields": counts, "index_seconds": t_index, "search_seconds": timings, "runs": runs}


def evaluate_runs(
    runs: dict[str, Any], qrels: dict[str, dict[str, int]], metrics: list[str]
) -> dict[str, Any]:
    report = compare(runs, qrels, metrics)
    print(report)
    table = report.to_dict()
    return {
        "metrics": {label: evaluate(run, qrels, metrics) for label, run in runs.items()},
        "paired_t_test": table,
        "significant_vs": _significant(table, metrics[0]),
    }


def _significant(table: dict[str, Any], metric: str) -> dict[str, list[str]]:
    """Per fused system: the single-field systems it differs from at p < 0.05 on ``metric``."""
    out = {}
    for label in ("fusion-rrf", "fusion-weighted"):
        pvalues = table[label]["comparisons"]
        out[label] = [
            other
            for other in ("bm25", "minilm-multivector")
            if pvalues.get(other, {}).get(metric, 1.0) < 0.05
        ]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3,000 Vaswani abstracts, 8 PDFs")
    parser.add_argument("--data", default=None)
    parser.add_argument(
        "--only",
        choices=["mmlongbench", "vaswani"],
        default=None,
        help="run one data set and merge it into the result file (run both in parallel)",
    )
    args = parser.parse_args(argv)
    data = Path(args.data) if args.data else shared_data_dir()
    work = CACHE / ("eval_fusion" + ("_quick" if args.quick else ""))
    work.mkdir(parents=True, exist_ok=True)
    result_name = "eval_fusion" + ("_quick" if args.quick else "")
    results: dict[str, Any] = {"systems": SYSTEMS}
    for name, build, metrics in (
        ("mmlongbench", mmlongbench_files, ["ndcg@5", "recall@10", "ndcg@10", "mrr@10"]),
        ("vaswani", vaswani_files, ["ndcg@10", "recall@100", "mrr@10"]),
    ):
        if args.only is not None and name != args.only:
            continue
        bench = build(data, work, args.quick)
        done = run_systems(name + ("-quick" if args.quick else ""), bench, work)
        runs = done.pop("runs")
        results[name] = {
            "queries": len(bench.query_ids),
            **done,
            **evaluate_runs(runs, bench.qrels, metrics),
        }
    if args.only is not None:  # keep the other data set's results from its own run
        previous = RESULTS / f"{result_name}.json"
        if previous.is_file():
            old = json.loads(previous.read_text(encoding="utf-8"))
            results = {
                **{k: old[k] for k in ("mmlongbench", "vaswani") if k in old},
                **results,
            }
    path = write_result(result_name, results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
