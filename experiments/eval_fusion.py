"""Fusing a MiniLM multi-vector field with a BM25 field in one index, against each alone.

Run: ``python -m experiments.eval_fusion [--quick] [--only mmlongbench|vaswani]``. Writes
``results/eval_fusion.json``.

UniDoc-Bench found text-image fusion ahead of text-only and image-only retrieval on real PDF
pages. Here the two fields are both text (page images need ColQwen2-class weights, not
available offline): MiniLM multi-vector (FDE + exact MaxSim) and BM25 (bm25s, English stop
words and Snowball stemming, the default). Each data set goes through the README's main job,
run as the CLI itself (``latemm.cli.main``): ``latemm ingest --no-images`` (MMLongBench-Doc's
PDFs), ``latemm index --field text=MINILM --field bm25=bm25 --field bm25plain=bm25:stemmer=none``,
then ``latemm search`` per system. Metrics and the paired two-sided t-test are ranx's
(``ranx.compare``).

Systems, every setting fixed before looking at these queries' results:

- ``bm25``, ``bm25-unstemmed``, ``minilm-multivector``: one field each.
- ``fusion-rrf``: the CLI's default (reciprocal rank fusion, Cormack et al.'s k = 60).
- ``fusion-weighted``: min-max normalised scores, equal weights (Bruch et al. 2023);
  ``fusion-weighted-unstemmed`` the same with the unstemmed BM25 field.
- ``fusion-weighted-cv``: the same with the weight of each field chosen by 5-fold
  cross-validation over the queries. The queries are shuffled once (seed 0) into 5 folds; for
  each fold the MiniLM weight ``w`` (BM25: ``1 - w``) is the one of 0, 0.1, ..., 1 with the best
  mean first metric on the *other four folds*, computed by re-fusing the per-field scores that
  ``fusion-weighted``'s run keeps for its candidates (``score_text``, ``score_bm25``); the fold's
  own queries are then searched by the CLI with ``--weights text=w,bm25=1-w``. No query's result
  depends on its own judgements. The chosen weights are printed and written per fold.

Everything lands in ``experiments/cache/eval_fusion``; a re-run skips pages already indexed and
run files already written (delete that folder to start afresh after changing the code).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from experiments import render
from experiments.common import (
    CACHE,
    RESULTS,
    minilm_path,
    mmlongbench_questions,
    shared_data_dir,
    write_result,
)
from experiments.eval_text import TextBench, vaswani_files
from experiments.render import Sources
from latemm.ranking import fusion
from latemm.runs.metrics import compare, evaluate, load_run

SINGLE = ("bm25", "bm25-unstemmed", "minilm-multivector")
FUSED = ("text", "bm25")
# Label -> `latemm search` flags. Nothing here is tuned on the test queries.
SYSTEMS: dict[str, list[str]] = {
    "bm25": ["--fields", "bm25"],
    "bm25-unstemmed": ["--fields", "bm25plain"],
    "minilm-multivector": ["--fields", "text"],
    "fusion-rrf": ["--fields", "text,bm25", "--fusion", "rrf"],
    # The CLI's default since #31: no fusion flag at all (``auto``).
    "fusion-auto": ["--fields", "text,bm25"],
    "fusion-weighted": ["--fields", "text,bm25", "--fusion", "weighted"],
    # What the earlier MMLongBench-Doc result used (before stemming became the default).
    "fusion-weighted-unstemmed": ["--fields", "text,bm25plain", "--fusion", "weighted"],
}
# MMLongBench-Doc with each question scoped to its own PDF (#31): the queries file's `where`
# column. A BM25 field keeps no metadata, so bm25-scoped takes it from the text field, which
# it rescores with weight 0 (the order is BM25's).
SCOPED: dict[str, list[str]] = {
    "bm25-scoped": ["--fields", "bm25", "--rescore-field", "text", "--fusion", "weighted"]
    + ["--weights", "bm25=1,text=0"],
    "minilm-multivector-scoped": ["--fields", "text"],
    "fusion-auto-scoped": ["--fields", "text,bm25"],
}
POOL = 512  # the CLI's default candidates; fusion-weighted keeps them all for the CV
GRID = tuple(round(0.1 * i, 1) for i in range(11))
FOLDS = 5
METRICS = {
    "mmlongbench": ["ndcg@5", "recall@10", "ndcg@10", "mrr@10"],
    "vaswani": ["ndcg@5", "ndcg@10", "recall@100", "mrr@10"],
}


def cli(*args: Any) -> None:
    """Run ``latemm ARGS`` in this process, as a user would from a shell."""
    from latemm.cli import main

    argv = [str(a) for a in args]
    print("  $ latemm " + " ".join(argv), flush=True)
    if main(argv) != 0:
        raise RuntimeError(f"latemm {' '.join(argv)} failed")


def mmlongbench_bench(data: Path, work: Path, quick: bool) -> TextBench:
    """MMLongBench-Doc's PDFs ingested by ``latemm ingest --no-images`` and its answerable
    questions about them, as Parquet files."""
    pdfs = sorted((data / "mmlongbench" / "pdfs").glob("*.pdf"))[: 8 if quick else None]
    corpus = work / ("mmlongbench-text" + ("-quick" if quick else "") + ".parquet")
    if not corpus.is_file():
        cli("ingest", *pdfs, "--out", corpus, "--no-images", "--quiet")
    query_ids, questions, qrels = mmlongbench_questions(data, pdfs={p.name for p in pdfs})
    queries = work / ("mmlongbench-queries" + ("-quick" if quick else "") + ".parquet")
    pq.write_table(pa.table({"query_id": query_ids, "text": questions}), queries)
    return TextBench(corpus, queries, qrels, query_ids, questions)


def build_index(bench: TextBench, index_dir: Path) -> float:
    """``latemm index`` with the three fields (re-running skips pages already indexed; small
    commits so an interrupted run loses little). Returns the seconds taken."""
    t0 = time.perf_counter()
    fields = [f"text={minilm_path()}", "bm25=bm25", "bm25plain=bm25:stemmer=none"]
    flags = [x for f in fields for x in ("--field", f)]
    cli("index", bench.corpus, "--index", index_dir, *flags, "--commit-every", 128, "--quiet")
    return time.perf_counter() - t0


# --cached-only: report the runs already in the cache, search nothing (a system without a run
# is left out, and the CV with it).
CACHED_ONLY = False


class NotCached(Exception):
    """A run --cached-only does not have."""


def search(index_dir: Path, queries: Path, out: Path, flags: list[str], k: int) -> float | None:
    """``latemm search`` into ``out``; the seconds it took, or None when a finished run was
    there already (then it is reused)."""
    if out.is_file():
        return None
    if CACHED_ONLY:
        raise NotCached(out)
    t0 = time.perf_counter()
    cli("search", index_dir, queries, "--out", out, "--k", k, "--quiet", *flags)
    return time.perf_counter() - t0


def scoped_queries(bench: TextBench, path: Path) -> Path:
    """The queries with a ``where`` column keeping each to its own PDF (the file its relevant
    pages, ``{pdf}#p{page}``, come from)."""
    wheres = []
    for q in bench.query_ids:
        pdfs = {d.rsplit("#p", 1)[0] for d in bench.qrels[q]}
        (pdf,) = pdfs  # every answerable question is about one PDF
        wheres.append("source = '" + pdf.replace("'", "''") + "'")
    table = {"query_id": bench.query_ids, "text": bench.query_texts, "where": wheres}
    pq.write_table(pa.table(table), path)
    return path


def pool_scores(run_file: Path) -> dict[str, tuple[list[str], np.ndarray]]:
    """query_id -> (doc ids, (2, C) scores of ``FUSED``'s fields) from a fused run file."""
    table = pq.read_table(run_file, columns=["query_id", "doc_id", *(f"score_{f}" for f in FUSED)])
    columns = table.to_pydict()
    out: dict[str, tuple[list[str], list[list[float]]]] = {}
    for i, q in enumerate(columns["query_id"]):
        docs, scores = out.setdefault(q, ([], [[] for _ in FUSED]))
        docs.append(columns["doc_id"][i])
        for row, field in zip(scores, FUSED, strict=True):
            row.append(columns[f"score_{field}"][i])
    return {q: (docs, np.array(scores, dtype=np.float64)) for q, (docs, scores) in out.items()}


def refuse(pools: dict[str, tuple[list[str], np.ndarray]], w: float) -> dict[str, Any]:
    """The run ``--fusion weighted --weights text=w,bm25=1-w`` gives over the same candidates
    (``latemm.ranking.fusion.weighted``, min-max per query over them)."""
    run = {}
    for q, (docs, scores) in pools.items():
        ids = np.array([docs], dtype=object)
        fused = fusion.weighted([s[None, :] for s in scores], ids, [w, 1.0 - w])[0]
        run[q] = dict(zip(docs, fused.tolist(), strict=True))
    return run


def folds_of(query_ids: list[str]) -> list[list[str]]:
    """``FOLDS`` disjoint folds of the queries, shuffled once with seed 0."""
    order = np.random.default_rng(0).permutation(len(query_ids))
    return [[query_ids[i] for i in sorted(part)] for part in np.array_split(order, FOLDS)]


def choose_weight(
    pools: dict[str, Any], qrels: dict[str, dict[str, int]], train: list[str], metric: str
) -> tuple[float, dict[float, float]]:
    """The grid weight of MiniLM with the best mean ``metric`` over the ``train`` queries (ties:
    the one nearest 0.5), and each weight's mean."""
    judged = [q for q in train if q in qrels and q in pools]
    sub_qrels = {q: qrels[q] for q in judged}
    means = {}
    for w in GRID:
        run = refuse({q: pools[q] for q in judged}, w)
        means[w] = evaluate(run, sub_qrels, [metric])[metric]
    best = max(GRID, key=lambda w: (round(means[w], 12), -abs(w - 0.5)))
    return best, means


def cv_run(
    name: str, index_dir: Path, bench: TextBench, work: Path, pools: dict[str, Any], k: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``fusion-weighted-cv``: per fold, the weight chosen on the other folds, then the CLI's
    search of the fold's queries with it. Returns the merged run and a record per fold."""
    metric, run, record = METRICS[name.removesuffix("-quick")][0], {}, []
    texts = dict(zip(bench.query_ids, bench.query_texts, strict=True))
    folds = folds_of(bench.query_ids)
    for i, held_out in enumerate(folds):
        train = [q for j, fold in enumerate(folds) if j != i for q in fold]
        w, means = choose_weight(pools, bench.qrels, train, metric)
        print(
            f"  {name} fold {i}: {len(held_out)} queries, MiniLM weight {w} (train {metric} "
            f"{means[w]:.4f}; equal weights {means[0.5]:.4f})",
            flush=True,
        )
        queries = work / f"{name}-cv-fold{i}-queries.parquet"
        pq.write_table(
            pa.table({"query_id": held_out, "text": [texts[q] for q in held_out]}), queries
        )
        weights = f"text={w},bm25={round(1.0 - w, 1)}"
        out = work / f"{name}-fusion-weighted-cv-fold{i}-w{w}.run.parquet"
        flags = ["--fields", "text,bm25", "--fusion", "weighted", "--weights", weights]
        seconds = search(index_dir, queries, out, flags, k)
        run.update(load_run(out))
        record.append(
            {
                "fold": i,
                "queries": len(held_out),
                "minilm_weight": w,
                "train_means": {str(g): float(m) for g, m in means.items()},
                "search_seconds": seconds,
            }
        )
    return run, record


def run_systems(name: str, bench: TextBench, work: Path, k: int = 100) -> dict[str, Any]:
    """Index once, search each system through the CLI, then the cross-validated fusion."""
    index_dir = work / f"{name}-fields"
    t_index = build_index(bench, index_dir)
    runs, timings = {}, {}
    # fusion-weighted first: its run keeps every candidate's field scores, which the CV and
    # the comparison of default fusions re-fuse; then the default and the fields alone.
    first = ("fusion-weighted", "fusion-auto", "minilm-multivector", "bm25")
    for label in sorted(SYSTEMS, key=lambda s: first.index(s) if s in first else len(first)):
        flags = SYSTEMS[label]
        depth = POOL if label == "fusion-weighted" else k  # every candidate, for the CV
        out = work / f"{name}-{label}-k{depth}.run.parquet"
        try:
            timings[label] = search(index_dir, bench.queries, out, flags, depth)
        except NotCached:
            print(f"  {name} {label}: no cached run, left out (--cached-only)", flush=True)
            continue
        print(f"  {name} {label}: search {timings[label]}s (None: reused)", flush=True)
        runs[label] = load_run(out)
    runs = {label: runs[label] for label in SYSTEMS if label in runs}
    if name.startswith("mmlongbench"):
        scoped = scoped_queries(bench, work / f"{name}-queries-scoped.parquet")
        for label, flags in SCOPED.items():
            out = work / f"{name}-{label}-k{k}.run.parquet"
            try:
                timings[label] = search(index_dir, scoped, out, flags, k)
            except NotCached:
                print(f"  {name} {label}: no cached run, left out (--cached-only)", flush=True)
                continue
            print(f"  {name} {label}: search {timings[label]}s (None: reused)", flush=True)
            runs[label] = load_run(out)
    pools = pool_scores(work / f"{name}-fusion-weighted-k{POOL}.run.parquet")
    try:
        runs["fusion-weighted-cv"], folds = cv_run(name, index_dir, bench, work, pools, k)
    except NotCached:
        folds = []
        print(f"  {name} fusion-weighted-cv: a fold has no cached run, left out", flush=True)
    defaults = compare_defaults(pools, bench.qrels, METRICS[name.removesuffix("-quick")][:2])
    return {
        "index_seconds": t_index,
        "search_seconds": timings,
        "cv_folds": folds,
        "default_candidates": defaults,
        "runs": runs,
    }


def _refused_run(pools: dict[str, Any], fuse: Any, depth: int = 100) -> dict[str, Any]:
    """The top ``depth`` of ``fuse(text, bm25, ids)`` ((1, C) each) over each query's pool."""
    run = {}
    for q, (docs, scores) in pools.items():
        ids = np.array([docs], dtype=object)
        fused = fuse(scores[0][None], scores[1][None], ids)[0]
        order = np.lexsort((np.array(docs, dtype=str), -fused))[:depth]
        run[q] = {docs[i]: float(fused[i]) for i in order}
    return run


def _agreement(text: np.ndarray, bm25: np.ndarray, ids: np.ndarray) -> list[np.ndarray]:
    """``auto``'s per-query weights from each field's top 10 over the pool."""
    lists = []
    for scores in (text, np.where(bm25 > 0, bm25, np.nan)):
        order = np.lexsort((ids[0].astype(str), -np.nan_to_num(scores[0], nan=-np.inf)))
        lists.append(np.array([[ids[0][i] if not np.isnan(scores[0][i]) else None for i in order]]))
    return fusion.agreement_weights(lists, [1.0, 1.0])


# Default fusions compared before choosing one (#31), each re-fused over the candidates and
# per-field scores of the fusion-weighted run: label -> fuse(text, bm25, ids). None is tuned.
DEFAULT_CANDIDATES: dict[str, Any] = {
    "text alone": lambda t, b, ids: t,
    "bm25 alone": lambda t, b, ids: b,
    "rrf k=60": lambda t, b, ids: fusion.rrf([t, np.where(b > 0, b, np.nan)], ids, [1, 1]),
    "rrf k=10": lambda t, b, ids: fusion.rrf([t, np.where(b > 0, b, np.nan)], ids, [1, 1], k=10),
    "rrf k=5": lambda t, b, ids: fusion.rrf([t, np.where(b > 0, b, np.nan)], ids, [1, 1], k=5),
    "auto (rrf k=10, agreement weights)": lambda t, b, ids: fusion.rrf(
        [t, np.where(b > 0, b, np.nan)], ids, _agreement(t, b, ids), k=fusion.AUTO_RRF_K
    ),
    "weighted min-max 0.5/0.5": lambda t, b, ids: fusion.weighted([t, b], ids, [0.5, 0.5]),
    "weighted z-score 0.5/0.5": lambda t, b, ids: fusion.weighted(
        [t, b], ids, [0.5, 0.5], normalization="zscore"
    ),
}


def compare_defaults(
    pools: dict[str, Any], qrels: dict[str, dict[str, int]], metrics: list[str]
) -> dict[str, Any]:
    """Each of ``DEFAULT_CANDIDATES`` over the same pools: metrics, and the paired t-test's p
    on ``metrics[0]`` against each field alone (ranked over the same pool)."""
    runs = {label: _refused_run(pools, fuse) for label, fuse in DEFAULT_CANDIDATES.items()}
    table = compare(runs, qrels, metrics).to_dict()
    return {
        label: {
            **{m: float(table[label]["scores"][m]) for m in metrics},
            **{
                f"p vs {other}": float(
                    table[label]["comparisons"].get(other, {}).get(metrics[0], 1.0)
                )
                for other in ("text alone", "bm25 alone")
                if other != label
            },
        }
        for label in runs
    }


def evaluate_runs(
    runs: dict[str, Any], qrels: dict[str, dict[str, int]], metrics: list[str]
) -> dict[str, Any]:
    """ranx's metrics and paired t-tests of every run, and the verdict of each fused one."""
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
    out: dict[str, dict[str, str]] = {}
    for label in (name for name in table if name.startswith("fusion")):
        row = table[label]
        out[label] = {}
        for other in (name for name in SINGLE if name in table):
            p = row["comparisons"].get(other, {}).get(metric, 1.0)
            mine, theirs = row["scores"][metric], table[other]["scores"][metric]
            out[label][other] = "same" if p >= 0.05 else ("better" if mine > theirs else "worse")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3,000 Vaswani abstracts, 8 PDFs")
    parser.add_argument("--data", default=None)
    parser.add_argument(
        "--cached-only",
        action="store_true",
        help="report the runs already in experiments/cache/eval_fusion; search nothing",
    )
    parser.add_argument(
        "--only",
        choices=["mmlongbench", "vaswani"],
        default=None,
        help="run one data set and merge it into the result file",
    )
    args = parser.parse_args(argv)
    global CACHED_ONLY
    CACHED_ONLY = args.cached_only
    data = Path(args.data) if args.data else shared_data_dir()
    work = CACHE / ("eval_fusion" + ("_quick" if args.quick else ""))
    work.mkdir(parents=True, exist_ok=True)
    result_name = "eval_fusion" + ("_quick" if args.quick else "")
    results: dict[str, Any] = {"systems": SYSTEMS, "cv": {"folds": FOLDS, "grid": GRID}}
    for name, build in (("vaswani", vaswani_files), ("mmlongbench", mmlongbench_bench)):
        if args.only is not None and name != args.only:
            continue
        bench = build(data, work, args.quick)
        done = run_systems(name + ("-quick" if args.quick else ""), bench, work)
        runs = done.pop("runs")
        results[name] = {
            "queries": len(bench.query_ids),
            **done,
            **evaluate_runs(runs, bench.qrels, METRICS[name]),
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


# ------------------------------------------------------------------------------ report
def render_section(r: dict[str, Any], sources: Sources) -> str:
    """Section 4b: each field alone and fused, per data set, with paired t-tests."""
    out = [
        "## 4b. Fusing a MiniLM field with a BM25 field in one index",
        render.provenance(r, sources.optional_writeup("eval_fusion.provenance")),
        "",
        sources.writeup("eval_fusion.intro"),
        "",
    ]
    for name in ("mmlongbench", "vaswani"):
        block = r.get(name)
        if block:
            out += [*_fusion_block(name, block), ""]
    return "\n".join(out)


def _fusion_block(name: str, block: dict[str, Any]) -> list[str]:
    """One data set's table of eval_fusion: metrics to 3 decimals, p-values to 3 digits."""
    metrics = block["metrics"]
    names = list(next(iter(metrics.values())))
    tests = block["paired_t_test"]
    rows = []
    for system, values in metrics.items():
        p = tests[system]["comparisons"]
        others = ("bm25", "minilm-multivector")
        rows.append(
            [system, *[f"{values[m]:.3f}" for m in names]]
            + ["" if o == system or o not in p else f"{p[o][names[0]]:.3g}" for o in others]
        )
    weights = [fold["minilm_weight"] for fold in block.get("cv_folds", [])]
    header = ["system", *names, f"p vs bm25 ({names[0]})", f"p vs minilm ({names[0]})"]
    out = [
        f"**{name}** ({block['queries']} queries; MiniLM weight per CV fold: {weights})\n",
        render.table(header, rows),
    ]
    candidates = block.get("default_candidates")
    if candidates:  # #31: the defaults compared over the same candidates
        cols = list(dict.fromkeys(c for values in candidates.values() for c in values))

        def cell(values: dict[str, float], col: str) -> str:
            if col not in values:
                return ""
            return f"{values[col]:.3g}" if col.startswith("p ") else f"{values[col]:.3f}"

        out += [
            f"\n*{name}: candidate defaults re-fused over the fusion-weighted run's 512 "
            "candidates and per-field scores (the fields alone ranked over the same pool)*\n",
            render.table(
                ["fusion", *cols],
                [[label, *[cell(v, c) for c in cols]] for label, v in candidates.items()],
            ),
        ]
    return out


if __name__ == "__main__":
    main()
