"""``latemm tune`` on real data: 5-fold cross-validated fusion of a MiniLM multi-vector field and
a BM25 field, against the default (``auto``) and each field alone (issue 31).

Run: ``python -m experiments.eval_tune [--quick] [--only vaswani|mmlongbench]``. Writes
``results/eval_tune.json``.

The indexes are ``experiments.eval_fusion``'s (``experiments/cache/eval_fusion``: Vaswani's
11,429 abstracts and MMLongBench-Doc's 46 PDFs as their text layers, ``--ocr never``; fields
``text`` = MiniLM and ``bm25``), built through the CLI if absent. ``latemm.api.tune`` then, over the fields ``text``
and ``bm25`` only: searches each query once per field (first phase, 512 candidates) and scores
the union exactly; ranks every setting of its grid (auto and RRF at k = 5, 10, 20, 60; min-max
weighted at MiniLM weight 0.1 .. 0.9; each field alone) by re-fusing those scores; per fold
(seed 0) picks the setting with the best mean metric on the other four folds and scores the
fold's own queries with it. The metric is nDCG@10 on Vaswani, nDCG@5 on MMLongBench-Doc (its
answerable questions). p-values are ranx's paired two-sided t-test over the held-out queries.
Nothing is written to the indexes (no ``--save``). As a check, the default and the chosen
setting are also searched for real (``FieldRetriever``): their means equal the re-fused ones.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from experiments import render
from experiments.common import CACHE, RESULTS, shared_data_dir, write_result
from experiments.eval_fusion import build_index, cli, mmlongbench_bench
from experiments.eval_text import vaswani_files
from latemm.runs import tune as tune_lib

METRICS = {"vaswani": "ndcg@10", "mmlongbench": "ndcg@5"}
FIELDS = ["text", "bm25"]
FOLDS = 5


def mmlongbench_text(data: Path, work: Path, quick: bool) -> Any:
    """``eval_fusion``'s MMLongBench-Doc bench over the PDFs' text layers: ingested with
    ``--ocr never`` (as section 4b was, before OCR at ingest became the default)."""
    pdfs = sorted((data / "mmlongbench" / "pdfs").glob("*.pdf"))[: 8 if quick else None]
    corpus = work / ("mmlongbench-text" + ("-quick" if quick else "") + ".parquet")
    if not corpus.is_file():
        cli("ingest", *pdfs, "--out", corpus, "--no-images", "--ocr", "never", "--quiet")
    return mmlongbench_bench(data, work, quick)


def tune_one(name: str, bench: Any, work: Path) -> dict[str, Any]:
    """Index (or reuse) the data set's fields, then ``latemm.api.tune`` over its queries."""
    from latemm.api import tune

    index_dir = work / f"{name}-fields"
    index_seconds = build_index(bench, index_dir)
    t0 = time.perf_counter()
    report = tune(
        index_dir, bench.queries, bench.qrels, folds=FOLDS, metric=METRICS[name.split("-")[0]],
        seed=0, fields=FIELDS,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    print("\n".join(report.lines()), flush=True)
    checks = {
        label: real_search(index_dir, bench, setting, report.metric)
        for label, setting in (("default", tune_lib.settings(FIELDS)[0]), ("chosen", report.chosen))
    }
    for label, check in checks.items():
        refused = report.settings[check["setting"]]
        check["refused_mean"] = refused
        print(f"  {label} ({check['setting']}): real search {check['mean']:.6f}, re-fused "
              f"{refused:.6f}, {check['seconds']:.0f} s", flush=True)  # fmt: skip
    return {
        "index_seconds": index_seconds,
        "tune_seconds": seconds,
        "real_search_checks": checks,
        **report.to_dict(),
    }


def real_search(index_dir: Path, bench: Any, setting: Any, metric: str) -> dict[str, Any]:
    """A real search of every judged query with ``setting`` (``FieldRetriever``): its mean
    ``metric``, to set beside the re-fused one ``tune`` computed, and its time."""
    from latemm.retrieval.field_search import FieldRetriever

    judged = [
        (q, t)
        for q, t in zip(bench.query_ids, bench.query_texts, strict=True)
        if any(r > 0 for r in bench.qrels.get(q, {}).values())
    ]
    ids, texts = [q for q, _ in judged], [t for _, t in judged]
    t0 = time.perf_counter()
    result = FieldRetriever(index_dir, **setting.options()).search(
        texts, k=tune_lib.metric_depth(metric), query_ids=ids
    )
    seconds = time.perf_counter() - t0
    scores = tune_lib.per_query({setting.label: result.doc_ids}, ids, bench.qrels, metric)
    return {"setting": setting.label, "mean": float(scores.mean()), "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3,000 Vaswani abstracts, 8 PDFs")
    parser.add_argument("--data", default=None)
    parser.add_argument(
        "--only",
        choices=["mmlongbench", "vaswani"],
        default=None,
        help="run one data set and merge it into the result file",
    )
    args = parser.parse_args(argv)
    data = Path(args.data) if args.data else shared_data_dir()
    work = CACHE / ("eval_fusion" + ("_quick" if args.quick else ""))
    work.mkdir(parents=True, exist_ok=True)
    result_name = "eval_tune" + ("_quick" if args.quick else "")
    results: dict[str, Any] = {"folds": FOLDS, "fields": FIELDS, "metrics": METRICS}
    for name, build in (("vaswani", vaswani_files), ("mmlongbench", mmlongbench_text)):
        if args.only is not None and name != args.only:
            continue
        bench = build(data, work, args.quick)
        results[name] = tune_one(name + ("-quick" if args.quick else ""), bench, work)
    if args.only is not None:  # keep the other data set's results from its own run
        previous = RESULTS / f"{result_name}.json"
        if previous.is_file():
            old = json.loads(previous.read_text(encoding="utf-8"))
            results = {**{k: old[k] for k in METRICS if k in old}, **results}
    path = write_result(result_name, results)
    print(f"wrote {path}")


def render_section(r: dict[str, Any], sources: render.Sources) -> str:
    """Section 4e: ``latemm tune``'s cross-validated fusion against the default and each
    field alone, with ranx's paired t-test over the held-out queries."""
    out = ["## 4e. Tuning the fusion on labelled queries (`latemm tune`)", render.provenance(r), ""]
    for name in ("vaswani", "mmlongbench"):
        block = r.get(name)
        if not block:
            continue
        metric = block["metric"]
        p = block["p_values_tuned_vs"]
        tuned = block["estimates"]["tuned (cross-validated)"]
        rows = [
            [label, f"{value:.4f}"]
            + (["", ""] if label not in p else [f"{tuned - value:+.4f}", f"{p[label]:.3g}"])
            for label, value in block["estimates"].items()
        ]
        checks = block.get("real_search_checks", {})
        check = "; ".join(
            f"{c['setting']}: real search {c['mean']:.4f}, re-fused {c['refused_mean']:.4f} "
            f"({c['seconds']:.0f} s a search)"
            for c in checks.values()
        )
        choices = ", ".join(f["chosen"] for f in block["folds"])
        out += [
            f"**{name}** ({block['queries']} queries, {len(block['folds'])}-fold CV on {metric}, "
            f"{len(block['settings'])} settings; tune took {block['tune_seconds']:.0f} s)\n",
            render.table(["system", metric, "tuned minus this", "p (tuned vs this)"], rows),
            "",
            f"Chosen per fold (on the other folds' queries): {choices}. Chosen on all queries: "
            f"{block['chosen']['label']} ({metric} {block['chosen_mean_all_queries']:.4f}, "
            "not cross-validated)." + (f" Searched for real as a check: {check}." if check else ""),
            "",
        ]
    return "\n".join(out)


if __name__ == "__main__":
    main()
