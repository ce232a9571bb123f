"""Evaluation of run files against qrels, with ranx (no hand-written metrics).

Runs: the Parquet run files ``latemm search`` writes, or TREC run files. Qrels: TREC qrels
(``qid 0 docid rel``), JSON ``{query: {doc: rel}}``, or Parquet (``query_id``, ``doc_id``,
``relevance``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from index_store.errors import InputError, require

DEFAULT_METRICS = ["ndcg@5", "ndcg@10", "recall@10", "recall@100", "mrr@10"]
# ranx's metrics (ranx.metrics.metric_switch), each optionally with a cutoff: ndcg@10, rbp.95.
METRIC_NAMES = (
    "hits hit_rate precision recall f1 r-precision mrr map dcg dcg_burges ndcg ndcg_burges bpref"
).split()
_METRIC = re.compile(
    r"^(?:" + "|".join(map(re.escape, METRIC_NAMES)) + r"|rbp\.\d+)(?:@[1-9]\d*)?$"
)


def check_metrics(metrics: list[str]) -> list[str]:
    """The metric names, or an ``InputError`` naming the unknown one and the known ones."""
    for metric in metrics:
        if not _METRIC.match(metric):
            raise InputError(
                f"unknown metric {metric!r}; known: {', '.join(METRIC_NAMES)}, rbp.P, each with an "
                "optional cutoff (ndcg@10)"
            )
    return metrics


def _grade(value: Any, where: str) -> int:
    """A relevance grade: an integer (or an integral float / numeric string)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or number != number or number != int(number):
        raise InputError(f"{where}: relevance {value!r} is not an integer grade (0, 1, 2, ...)")
    return int(number)


def _add(
    out: dict[str, dict[str, Any]], q: str, d: str, value: Any, where: str, seen: dict
) -> None:
    """One (query_id, doc_id) entry; a repeated pair is an error naming both places."""
    if (q, d) in seen:
        raise InputError(
            f"{where}: query_id {q!r} with doc_id {d!r} again (first at {seen[(q, d)]}); each "
            "pair must appear once (a repeated query_id would merge two queries' lists)"
        )
    seen[(q, d)] = where.rsplit(", ", 1)[-1]
    out.setdefault(q, {})[d] = value


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Qrels from TREC, JSON or Parquet; refuses malformed lines, non-integer grades and files
    with no judgements."""
    source = Path(path)
    if not source.is_file():
        raise InputError(f"qrels file {source} does not exist")
    out: dict[str, dict[str, int]] = {}
    if source.suffix == ".json":
        try:
            payload = json.loads(source.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{source}: not valid JSON ({exc})") from exc
        if not isinstance(payload, dict) or not all(isinstance(v, dict) for v in payload.values()):
            raise InputError(f"{source}: expected a JSON object {{query_id: {{doc_id: grade}}}}")
        for q, docs in payload.items():
            for d, r in docs.items():
                out.setdefault(str(q), {})[str(d)] = _grade(r, f"{source}, query {q!r}, doc {d!r}")
    elif source.suffix == ".parquet":
        table = _read_parquet(source, ["query_id", "doc_id", "relevance"], "qrels")
        for row, (q, d, r) in enumerate(
            zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True)
        ):
            out.setdefault(str(q), {})[str(d)] = _grade(r, f"{source}, row {row}")
    else:
        for number, parts in _lines(source):
            where = f"{source}, line {number}"
            if len(parts) != 4:
                raise InputError(
                    f"{where}: expected 'qid 0 docid relevance' (4 fields without spaces in "
                    f"ids), got {len(parts)} fields"
                )
            out.setdefault(parts[0], {})[parts[2]] = _grade(parts[3], where)
    if not out:
        raise InputError(f"{source} has no relevance judgements")
    return out


def _lines(source: Path) -> list[tuple[int, list[str]]]:
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{source}: not a UTF-8 text file ({exc})") from exc
    return [(n, line.split()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _read_parquet(source: Path, columns: list[str], what: str) -> pa.Table:
    try:
        names = pq.read_schema(source).names
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{source} is not a readable Parquet file ({exc})") from exc
    missing = [c for c in columns if c not in names]
    if missing:
        raise InputError(
            f"{source}: a {what} Parquet file needs the columns {', '.join(columns)}; "
            f"missing {', '.join(missing)} (has {', '.join(names)})"
        )
    table = pq.read_table(source, columns=columns)
    for column in columns:
        nulls = table.column(column).null_count
        if nulls:
            raise InputError(f"{source}: column {column!r} has {nulls} null value(s)")
    return table


def load_run(path: str | Path) -> dict[str, dict[str, float]]:
    """A run from a Parquet run file or a TREC run file; refuses missing scores, malformed lines
    and repeated (query_id, doc_id) pairs."""
    source = Path(path)
    if not source.is_file():
        raise InputError(f"run file {source} does not exist")
    out: dict[str, dict[str, float]] = {}
    seen: dict[tuple[str, str], str] = {}
    if source.suffix == ".parquet":
        table = _read_parquet(source, ["query_id", "doc_id", "score"], "run")
        for row, (q, d, s) in enumerate(
            zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True)
        ):
            _add(out, str(q), str(d), float(s), f"{source}, row {row}", seen)
        return out
    for number, parts in _lines(source):
        where = f"{source}, line {number}"
        if len(parts) not in (5, 6):
            raise InputError(
                f"{where}: expected 'qid Q0 docid rank score [tag]' (ids without spaces), got "
                f"{len(parts)} fields"
            )
        try:
            score = float(parts[4])
        except ValueError:
            raise InputError(f"{where}: score {parts[4]!r} is not a number") from None
        _add(out, parts[0], parts[2], score, where, seen)
    return out


def run_provenance(path: str | Path) -> dict[str, Any]:
    """How a Parquet run was made, as ``latemm search`` records it in the file's schema
    metadata: latemm version, index and generation, queries, k, candidates, where, encoder(s),
    fusion, reranker, batch size. Empty for runs written otherwise (TREC files, older runs)."""
    source = Path(path)
    if source.suffix != ".parquet":
        return {}
    try:
        metadata = pq.read_schema(source).metadata or {}
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{source} is not a readable Parquet file ({exc})") from exc
    record = metadata.get(b"latemm.run")
    return {} if record is None else dict(json.loads(record))


def _ranx_objects(
    run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]], name: str
) -> tuple[Any, Any]:
    """ranx Qrels and Run with every id replaced by a short integer string: ranx's numba code
    slows down and can crash on long ids. Metrics are means, so the mapping never shows."""
    ranx = require("ranx", "eval")
    judged = {q: docs for q, docs in qrels.items() if any(r > 0 for r in docs.values())}
    # Queries the run never answered score zero rather than being left out.
    filled = {q: run.get(q) or {"\x00no result": 0.0} for q in judged}
    codes: dict[str, str] = {}

    def code(key: str) -> str:
        return codes.setdefault(key, str(len(codes)))

    qrels_dict = {code(q): {code(d): r for d, r in docs.items()} for q, docs in judged.items()}
    run_dict = {code(q): {code(d): s for d, s in docs.items()} for q, docs in filled.items()}
    return ranx.Qrels.from_dict(qrels_dict), ranx.Run.from_dict(run_dict, name=name)


def _check_overlap(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> None:
    judged = [q for q, docs in qrels.items() if any(r > 0 for r in docs.values())]
    if not judged:
        raise InputError("the qrels judge no document relevant (every grade is 0 or less)")
    if not any(q in run for q in judged):
        raise InputError(
            f"no query_id of the run is in the qrels (run: {', '.join(list(run)[:3]) or 'empty'}; "
            f"qrels: {', '.join(judged[:3])}); are they for the same queries?"
        )


def evaluate(
    run: dict[str, dict[str, float]],
    qrels: dict[str, dict[str, int]],
    metrics: list[str] | None = None,
) -> dict[str, float]:
    """Mean of each metric over the queries with at least one relevant document."""
    ranx = require("ranx", "eval")
    check_metrics(metrics or DEFAULT_METRICS)
    _check_overlap(run, qrels)
    ranx_qrels, ranx_run = _ranx_objects(run, qrels, "run")
    scores = ranx.evaluate(ranx_qrels, ranx_run, metrics or DEFAULT_METRICS, make_comparable=True)
    if isinstance(scores, float):
        return {(metrics or DEFAULT_METRICS)[0]: scores}
    return {k: float(v) for k, v in scores.items()}


def compare(
    runs: dict[str, dict[str, dict[str, float]]],
    qrels: dict[str, dict[str, int]],
    metrics: list[str] | None = None,
    *,
    stat_test: str = "student",
    n_permutations: int = 1000,
    seed: int = 42,
) -> Any:
    """Side-by-side table with a paired two-sided test between runs (ranx's report): Student's
    t-test, or ranx's randomisation test (``stat_test="fisher"``; its p-value changes from run
    to run: ``compare_runs`` has a reproducible one)."""
    ranx = require("ranx", "eval")
    check_metrics(metrics or DEFAULT_METRICS)
    for run in runs.values():
        _check_overlap(run, qrels)
    objects = [_ranx_objects(run, qrels, name) for name, run in runs.items()]
    return ranx.compare(
        objects[0][0],
        runs=[o[1] for o in objects],
        metrics=metrics or DEFAULT_METRICS,
        stat_test=stat_test,
        n_permutations=n_permutations,
        random_seed=seed,
        make_comparable=True,
    )


STAT_TESTS = {
    "student": "paired two-sided Student's t-test",
    "fisher": "two-sided Fisher's randomization test",
    "tukey": "Tukey's HSD test",
}


def significance_legend(report: Any) -> str:
    """What ``compare``'s table marks mean, with every p-value: a score carries the letter of
    each run it beats significantly (the test, over the queries, at p < the threshold)."""
    names = list(report.model_names)
    letters = {name: chr(ord("a") + i) for i, name in enumerate(names)}
    test = STAT_TESTS.get(report.stat_test, str(report.stat_test))
    lines = [
        f"Superscript letters: a score marked with run X's letter is significantly higher than "
        f"run X's ({test} over the queries, p < {report.max_p}); no letter: no significant "
        "difference.",
        "p-values:",
    ]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    width = max(len(m) for m in report.metrics)
    for metric in report.metrics:
        cells = []
        for a, b in pairs:
            result = report.comparisons[a, b][metric]
            star = "*" if bool(result["significant"]) else ""
            cells.append(f"{letters[a]} vs {letters[b]} p={float(result['p_value']):.4f}{star}")
        lines.append(f"  {metric:<{width}}  " + "   ".join(cells))
    lines.append(f"  (* significant at p < {report.max_p})")
    return "\n".join(lines)


# -- Comparing runs the way papers do ------------------------------------------------------------

TESTS = {"student": "paired Student's t-test", "fisher": "Fisher's randomisation test"}
CORRECTIONS = {
    "holm": "Holm-Bonferroni",
    "bonferroni": "Bonferroni",
    "bh": "Benjamini-Hochberg",
    "none": "no",
}
_SUPERSCRIPT = str.maketrans("abcdefghijklmnoprstuvwxyz", "ᵃᵇᶜᵈᵉᶠᵍʰⁱʲᵏˡᵐⁿᵒᵖʳˢᵗᵘᵛʷˣʸᶻ")


def _adjust(p_values: list[float], correction: str) -> list[float]:
    """p-values adjusted for multiple comparisons (one family: every pair of runs on one
    metric): Holm's step-down and Bonferroni bound the family-wise error, Benjamini-Hochberg
    (scipy) the false discovery rate."""
    import numpy as np

    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    if correction == "none" or m == 0:
        return p.tolist()
    if correction == "bonferroni":
        return np.minimum(p * m, 1.0).tolist()
    if correction == "bh":
        from scipy.stats import false_discovery_control

        return false_discovery_control(p, method="bh").tolist()
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted.tolist()


@dataclass(frozen=True)
class Comparison:
    """Runs side by side: mean metrics, and for every pair of runs and metric the paired test's
    p-value (ranx's) and its adjusted value. Run ``i`` is labelled with letter ``i`` (a, b, ...).

    ``p_values[(a, b)][metric]`` with ``a`` before ``b`` in ``names``."""

    names: list[str]
    metrics: list[str]
    scores: dict[str, dict[str, float]]
    p_values: dict[tuple[str, str], dict[str, float]]
    adjusted: dict[tuple[str, str], dict[str, float]]
    test: str
    correction: str
    alpha: float
    queries: int

    def pairs(self) -> list[tuple[str, str]]:
        return list(self.p_values)

    def better_than(self, name: str, metric: str) -> list[int]:
        """Indices of the runs that ``name`` beats significantly on ``metric``."""
        beaten = []
        for j, other in enumerate(self.names):
            if other == name:
                continue
            pair = (name, other) if (name, other) in self.adjusted else (other, name)
            if (
                self.adjusted[pair][metric] < self.alpha
                and self.scores[name][metric] > self.scores[other][metric]
            ):
                beaten.append(j)
        return beaten

    def legend(self) -> str:
        families = len(self.pairs())
        return (
            f"Superscript letters: significantly better than the run with that letter "
            f"({TESTS[self.test]} over {self.queries} queries, {CORRECTIONS[self.correction]} "
            f"correction over the {families} pair(s) of each metric, adjusted p < {self.alpha:g})."
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": {chr(97 + i): name for i, name in enumerate(self.names)},
            "metrics": self.metrics,
            "test": self.test,
            "correction": self.correction,
            "alpha": self.alpha,
            "queries": self.queries,
            "scores": self.scores,
            "comparisons": [
                {
                    "runs": list(pair),
                    "p_value": self.p_values[pair],
                    "adjusted_p_value": self.adjusted[pair],
                }
                for pair in self.pairs()
            ],
        }

    def to_markdown(self, digits: int = 4) -> str:
        head = ["", "run", *self.metrics]
        rows = [head, ["---"] * len(head)]
        for i, name in enumerate(self.names):
            cells = []
            for metric in self.metrics:
                marks = "".join(chr(97 + j) for j in self.better_than(name, metric))
                cells.append(
                    f"{self.scores[name][metric]:.{digits}f}{marks.translate(_SUPERSCRIPT)}"
                )
            rows.append([chr(97 + i), name.replace("|", "\\|"), *cells])
        table = ["| " + " | ".join(r) + " |" for r in rows]
        pvals = [["pair", *self.metrics], ["---"] * (len(self.metrics) + 1)]
        for a, b in self.pairs():
            label = f"{chr(97 + self.names.index(a))} vs {chr(97 + self.names.index(b))}"
            pvals.append(
                [
                    label,
                    *(
                        f"{_p(self.p_values[(a, b)][m])} (adj. {_p(self.adjusted[(a, b)][m])})"
                        for m in self.metrics
                    ),
                ]
            )
        return "\n".join(
            [
                *table,
                "",
                self.legend(),
                "",
                "p-values (adjusted):",
                "",
                *("| " + " | ".join(r) + " |" for r in pvals),
            ]
        )

    def to_latex(self, digits: int = 4) -> str:
        def esc(text: str) -> str:
            for char in "\\&%$#_{}":
                text = text.replace(char, "\\" + char)
            return text

        lines = [
            "\\begin{tabular}{ll" + "r" * len(self.metrics) + "}",
            "\\toprule",
            " & Run & " + " & ".join(esc(m) for m in self.metrics) + " \\\\",
            "\\midrule",
        ]
        for i, name in enumerate(self.names):
            cells = []
            for metric in self.metrics:
                marks = "".join(chr(97 + j) for j in self.better_than(name, metric))
                value = f"{self.scores[name][metric]:.{digits}f}"
                cells.append(value + (f"$^{{{marks}}}$" if marks else ""))
            lines.append(f"{chr(97 + i)} & {esc(name)} & " + " & ".join(cells) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}", "% " + self.legend()]
        return "\n".join(lines)


def _per_query(
    runs: dict[str, dict[str, dict[str, float]]],
    qrels: dict[str, dict[str, int]],
    metrics: list[str],
) -> dict[str, dict[str, Any]]:
    """Each run's per-query scores (ranx), every run's arrays in the same query order."""
    ranx = require("ranx", "eval")
    out = {}
    for name, run in runs.items():
        ranx_qrels, ranx_run = _ranx_objects(run, qrels, name)
        scores = ranx.evaluate(
            ranx_qrels, ranx_run, metrics, return_mean=False, make_comparable=True
        )
        out[name] = {metrics[0]: scores} if len(metrics) == 1 else dict(scores)
    return out


def randomisation_test(control: Any, treatment: Any, permutations: int, seed: int) -> float:
    """Fisher's paired randomisation test, two-sided: the share of random sign flips of the
    per-query differences whose mean is at least as far from 0 as the observed one, counting
    the observed assignment (``(b + 1) / (n + 1)``, Phipson and Smyth 2010, never 0).

    A numpy ``Generator`` seeded with ``seed`` draws the flips, so a seed gives one p-value
    (ranx's version seeds numpy inside a parallel numba loop and varies between runs)."""
    import numpy as np

    diffs = np.asarray(control, dtype=np.float64) - np.asarray(treatment, dtype=np.float64)  # (Q,)
    observed = abs(diffs.mean())
    rng = np.random.default_rng(seed)
    signs = rng.integers(0, 2, size=(permutations, diffs.size), dtype=np.int8) * 2 - 1  # (n, Q)
    means = np.abs(signs @ diffs) / diffs.size  # (n,)
    hits = int(np.count_nonzero(means >= observed - 1e-12))
    return (hits + 1) / (permutations + 1)


def _p(value: float) -> str:
    return f"{value:.2e}" if value < 1e-3 else f"{value:.4f}"


def compare_runs(
    runs: dict[str, dict[str, dict[str, float]]],
    qrels: dict[str, dict[str, int]],
    metrics: list[str] | None = None,
    *,
    test: str = "student",
    correction: str = "holm",
    alpha: float = 0.05,
    permutations: int = 1000,
    seed: int = 42,
) -> Comparison:
    """Mean metrics (ranx) and paired two-sided tests between every pair of runs: ranx's
    t-test (``compare``), or Fisher's randomisation test (``randomisation_test`` over ranx's
    per-query scores, ``permutations`` sign flips drawn with ``seed``); the p-values are
    adjusted per metric over all pairs (``correction``)."""
    if len(runs) < 2:
        raise InputError(f"comparing runs needs at least two runs, got {len(runs)}")
    if test not in TESTS:
        raise InputError(f"unknown test {test!r}; known: {', '.join(TESTS)}")
    if correction not in CORRECTIONS:
        raise InputError(f"unknown correction {correction!r}; known: {', '.join(CORRECTIONS)}")
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be between 0 and 1, got {alpha}")
    if permutations < 1:
        raise InputError(f"permutations must be a positive integer, got {permutations}")
    metrics = check_metrics(metrics or DEFAULT_METRICS)
    report = compare(runs, qrels, metrics)  # means and t-test p-values: ranx's
    names = list(runs)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    if test == "student":
        p_values = {
            pair: {m: float(report.comparisons[pair[0], pair[1]][m]["p_value"]) for m in metrics}
            for pair in pairs
        }
    else:
        per_query = _per_query(runs, qrels, metrics)
        p_values = {
            (a, b): {
                m: randomisation_test(per_query[a][m], per_query[b][m], permutations, seed)
                for m in metrics
            }
            for a, b in pairs
        }
    adjusted: dict[tuple[str, str], dict[str, float]] = {pair: {} for pair in pairs}
    for m in metrics:
        for pair, value in zip(
            pairs, _adjust([p_values[pair][m] for pair in pairs], correction), strict=True
        ):
            adjusted[pair][m] = value
    judged = sum(1 for docs in qrels.values() if any(r > 0 for r in docs.values()))
    return Comparison(
        names=names,
        metrics=metrics,
        scores={n: {m: float(report.results[n][m]) for m in metrics} for n in names},
        p_values=p_values,
        adjusted=adjusted,
        test=test,
        correction=correction,
        alpha=alpha,
        queries=judged,
    )
