"""latemm.runs.metrics' run comparison: ``latemm eval A B C --format ...`` prints ranx's numbers and
p-values, with a multiple-comparison correction checked against its definition."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ranx = pytest.importorskip("ranx")

from latemm.cli import main  # noqa: E402
from latemm.runs.metrics import (  # noqa: E402
    _adjust,
    compare_runs,
    load_qrels,
    load_run,
    randomisation_test,
)

QUERIES, DOCS = 40, 30
METRICS = ["ndcg@10", "recall@10", "mrr@10"]


@pytest.fixture(scope="module")
def runs_and_qrels(tmp_path_factory):
    """Three Parquet runs of increasing quality over the same judged queries, and qrels."""
    root = tmp_path_factory.mktemp("compare")
    rng = np.random.default_rng(7)
    qrels_lines, truth = [], {}
    for q in range(QUERIES):
        relevant = rng.choice(DOCS, size=3, replace=False)
        truth[q] = set(relevant.tolist())
        qrels_lines += [f"query-{q} 0 doc-{d} {1 + (d % 2)}" for d in relevant]
    (root / "qrels.txt").write_text("\n".join(qrels_lines) + "\n")
    paths = []
    for name, signal in (("weak", 0.2), ("mid", 1.0), ("strong", 2.5)):
        rows = {"query_id": [], "doc_id": [], "score": []}
        for q in range(QUERIES):
            scores = rng.normal(size=DOCS) + signal * np.isin(np.arange(DOCS), list(truth[q]))
            for d in np.argsort(-scores)[:20]:
                rows["query_id"].append(f"query-{q}")
                rows["doc_id"].append(f"doc-{d}")
                rows["score"].append(float(scores[d]))
        path = root / f"{name}.parquet"
        pq.write_table(pa.table(rows), path)
        paths.append(path)
    return paths, root / "qrels.txt"


def _ranx_report(paths, qrels_path, stat_test="student"):
    """ranx's own compare over the same files, ids as they are (no latemm code in between)."""
    qrels = ranx.Qrels.from_dict(load_qrels(qrels_path))
    runs = [ranx.Run.from_dict(load_run(p), name=p.stem) for p in paths]
    return ranx.compare(qrels, runs=runs, metrics=METRICS, stat_test=stat_test, max_p=0.05)


def test_json_numbers_and_p_values_equal_ranx_compare(runs_and_qrels, capsys):
    test = "student"
    paths, qrels = runs_and_qrels
    argv = [*map(str, paths), "--qrels", str(qrels), "--metrics", *METRICS, "--format", "json"]
    assert main(["eval", *argv, "--test", test, "--correction", "none"]) == 0
    got = json.loads(capsys.readouterr().out)
    report = _ranx_report(paths, qrels, test).to_dict()
    for name in ("weak", "mid", "strong"):
        for metric in METRICS:
            assert got["scores"][name][metric] == pytest.approx(report[name]["scores"][metric])
    assert len(got["comparisons"]) == 3
    for pair in got["comparisons"]:
        a, b = pair["runs"]
        for metric in METRICS:
            expected = report[a]["comparisons"][b][metric]
            assert pair["p_value"][metric] == pytest.approx(expected, rel=1e-12, abs=1e-15)
            assert pair["adjusted_p_value"][metric] == pair["p_value"][metric]  # no correction


def test_markdown_table_shows_ranx_numbers_markers_and_legend(runs_and_qrels, capsys):
    paths, qrels = runs_and_qrels
    assert (
        main(["eval", *map(str, paths), str(qrels), "--metrics", *METRICS, "--format", "markdown"])
        == 0
    )
    out = capsys.readouterr().out
    report = _ranx_report(paths, qrels).to_dict()
    rows = {line.split("|")[2].strip(): line for line in out.splitlines() if line.startswith("| ")}
    for name in ("weak", "mid", "strong"):
        cells = [c.strip() for c in rows[name].split("|")[3:-1]]
        for metric, cell in zip(METRICS, cells, strict=True):
            assert cell.startswith(f"{report[name]['scores'][metric]:.4f}")
    # strong beats weak on nDCG@10 by a wide margin: its cell carries weak's letter, a
    assert re.search(r"\| c \| strong \| \d\.\d{4}ᵃ", out)
    assert "paired Student's t-test over 40 queries, Holm-Bonferroni correction" in out
    p = report["strong"]["comparisons"]["weak"]["ndcg@10"]
    assert f"{p:.2e}" if p < 1e-3 else f"{p:.4f}" in out


def test_latex_table(runs_and_qrels, capsys):
    paths, qrels = runs_and_qrels
    assert main(["eval", *map(str, paths), "--qrels", str(qrels), "--format", "latex"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("\\begin{tabular}{llrrrrr}")
    assert "ndcg@10" in out and "$^{a" in out and "% Superscript letters" in out


def test_corrections_match_their_definitions():
    p = [0.01, 0.04, 0.03, 0.005]
    assert _adjust(p, "bonferroni") == pytest.approx([0.04, 0.16, 0.12, 0.02])
    # Holm by definition: sorted p_(i) * (m - i), made monotone, capped at 1
    ordered = sorted(range(4), key=lambda i: p[i])
    holm, running = [0.0] * 4, 0.0
    for rank, i in enumerate(ordered):
        running = max(running, min(1.0, p[i] * (4 - rank)))
        holm[i] = running
    assert _adjust(p, "holm") == pytest.approx(holm)
    # Benjamini-Hochberg: p_(i) * m / i, made monotone from the largest down
    bh = [0.0] * 4
    running = 1.0
    for rank, i in reversed(list(enumerate(ordered, start=1))):
        running = min(running, p[i] * 4 / rank)
        bh[i] = running
    assert _adjust(p, "bh") == pytest.approx(bh)
    assert _adjust(p, "none") == p


def test_comparison_refuses_bad_options(runs_and_qrels, capsys):
    paths, qrels = runs_and_qrels
    runs = {p.stem: load_run(p) for p in paths}
    with pytest.raises(ValueError, match="at least two runs"):
        compare_runs({"weak": runs["weak"]}, load_qrels(qrels))
    with pytest.raises(ValueError, match="alpha must be between 0 and 1"):
        compare_runs(runs, load_qrels(qrels), alpha=2.0)
    assert main(["eval", str(paths[0])]) == 2
    assert "RUN [RUN ...] QRELS or --qrels" in capsys.readouterr().err


def test_fisher_p_values_do_not_change_between_runs(runs_and_qrels):
    paths, qrels = runs_and_qrels
    runs = {p.stem: load_run(p) for p in paths}
    first = compare_runs(runs, load_qrels(qrels), ["ndcg@10"], test="fisher", permutations=2000)
    again = compare_runs(runs, load_qrels(qrels), ["ndcg@10"], test="fisher", permutations=2000)
    assert first.p_values == again.p_values


def test_randomisation_test_approaches_the_exact_one():
    """Against the exact test: all 2**Q sign assignments of 10 per-query differences."""
    import itertools

    rng = np.random.default_rng(3)
    control, treatment = rng.random(10), rng.random(10) + 0.15
    diffs = control - treatment
    flips = np.array(list(itertools.product([-1, 1], repeat=10)))
    exact = np.mean(np.abs(flips @ diffs) / 10 >= abs(diffs.mean()) - 1e-12)
    approx = randomisation_test(control, treatment, 20000, seed=1)
    assert approx == pytest.approx(exact, abs=0.01)
    assert randomisation_test(control, control, 100, seed=1) == 1.0  # no difference at all
