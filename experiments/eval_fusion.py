"""Fusing a MiniLM multi-vector field with a BM25 field in one index, against each alone.

Run: ``python -m experiments.eval_fusion [--quick] [--only mmlongbench|vaswani]``. Writes
``results/eval_fusion.json``.

UniDoc-Bench found text-image fusion ahead of text-only and image-only retrieval on real PDF
pages. Here the two fields are both text (page images need ColQwen2-class weights, not
available offline): MiniLM multi-vector (FDE + exact MaxSim) and BM25 (bm25s). Each data set
goes through the main job's functions: ``latemm ingest`` (MMLongBench-Doc), ``latemm index
--field text=MINILM --field bm25=bm25``, then ``latemm search`` with ``--fields bm25``,
``--fields text`` and both fused. The corpora and questions are eval_text's (same ingest, same
filters). Metrics and the paired two-sided t-test are ranx's (``ranx.compare``).

Two BM25 fields: ``bm25`` (the default tokenizer: English stop words, Snowball stemmer) and
``bm25plain`` (stop words, no stemmer: what bm25 fields were before stemming became the
default), to show what the tokenizer does alone and in fusion. Fusion settings are fixed in
advance from the literature, never tuned on these queries: weighted = convex combination of
min-max normalised scores with equal weights (Bruch et al. 2023 find it ahead of RRF), z-score
the alternative normalisation they study, RRF with Cormack et al.'s k = 60. MMLongBench-Doc is
the development set on which the default was confirmed; Vaswani is reported with the same
settings.
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
SINGLE = ("bm25", "bm25-unstemmed", "minilm-multivector")
SYSTEMS: dict[str, dict[str, Any]] = {
    "bm25": {"fields": ["bm25"]},
    "bm25-unstemmed": {"fields": ["bm25plain"]},
    "minilm-multivector": {"fields": ["text"]},
    "fusion-weighted": {"fields": ["text", "bm25"], "fusion": "weighted"},
    "fusion-weighted-zscore": {
        "fields": ["text", "bm25"],
        "fusion": "weighted",
        "normalization": "zscore",
    },
    "fusion-rrf": {"fields": ["text", "bm25"], "fusion": "rrf"},
    "fusion-weighted-unstemmed": {"fields": ["text", "bm25plain"], "fusion": "weighted"},
    "fusion-rrf-unstemmed": {"fields": ["text", "bm25plain"], "fusion": "rrf"},
}


def run_systems(name: str, bench: TextBench, work: Path, k: int = 100) -> dict[str, Any]:
    """Index both fields once, search each system, evaluate and compare."""
    index_dir = work / f"{name}-fields"
    t0 = time.perf_counter()
    # Small commits: an interrupted run resumes with little lost (re-running skips them).
    fields = {"text": minilm_path(), "bm25": "bm25", "bm25plain": "bm25:stemmer=none"}
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


def _significant(table: dict[str, Any], metric: str) -> dict[str, dict[str, str]]:
    """Per fused system, against each single-field system on ``metric``: ``better`` or
    ``worse`` where ranx's paired test gives p < 0.05, ``same`` otherwise."""
    out = {}
    for label in (name for name in table if name.startswith("fusion")):
        row = table[label]
        out[label] = {}
        for other in SINGLE:
            p = row["comparisons"].get(other, {}).get(metric, 1.0)
            mine, theirs = row["scores"][metric], table[other]["scores"][metric]
            out[label][other] = "same" if p >= 0.05 else ("better" if mine > theirs else "worse")
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
