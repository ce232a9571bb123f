"""``latemm tune``: cross-validated fusion settings over a tiny two-field index (a tiny ColBERT
checkpoint and BM25). Folds never see their test queries; re-fused cached scores equal real
searches; a saved setting is what a plain search uses, explicit options override it; bad
queries or qrels are one-line errors."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index_store.errors import IndexCorruptError, InputError
from latemm.index.fields import index_fields, read_fields, write_search_defaults
from latemm.retrieval.field_search import FieldRetriever
from latemm.runs import tune as tune_lib

WORDS = "revenue margin profit asset equity cash debt growth risk audit tax loss".split()
N_PAGES = 40
N_QUERIES = 15


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A two-field index (``text``: tiny ColBERT, ``b``: BM25), 15 two-word queries and qrels
    judging the pages holding both words relevant."""
    from tests.latemm.tiny_models import build_colbert_pylate

    root = tmp_path_factory.mktemp("tune")
    model = build_colbert_pylate(root / "colbert")
    rng = np.random.default_rng(3)
    texts = [" ".join(rng.choice(WORDS, 6)) for _ in range(N_PAGES)]
    ids = [f"p{i:02d}" for i in range(N_PAGES)]
    corpus = root / "corpus.parquet"
    pq.write_table(pa.table({"doc_id": ids, "text": texts}), corpus)
    index = root / "idx"
    index_fields(corpus, index, {"text": str(model), "b": "bm25"}, progress=False)
    pairs = [tuple(rng.choice(WORDS, 2, replace=False)) for _ in range(N_QUERIES)]
    query_ids = [f"q{i}" for i in range(N_QUERIES)]
    queries = root / "queries.parquet"
    pq.write_table(pa.table({"query_id": query_ids, "text": [" ".join(p) for p in pairs]}), queries)
    qrels = {
        q: {d: 1 for d, t in zip(ids, texts, strict=True) if set(pair) <= set(t.split())}
        or {ids[0]: 1}
        for q, pair in zip(query_ids, pairs, strict=True)
    }
    qrels_file = root / "qrels.txt"
    qrels_file.write_text(
        "".join(f"{q} 0 {d} {r}\n" for q, docs in qrels.items() for d, r in docs.items())
    )
    return index, queries, qrels_file, query_ids, [" ".join(p) for p in pairs]


def test_folds_never_see_their_test_queries(data, monkeypatch) -> None:
    index, queries, qrels, query_ids, _ = data
    real_per_query, fits = tune_lib.per_query, []

    def coded(rankings, ids, judged, metric):
        scores = real_per_query(rankings, ids, judged, metric)
        coded.ids = list(ids)
        # A last row whose value is the query's position: a fit's matrix names its queries.
        return np.vstack([scores, np.arange(len(ids), dtype=np.float64)])

    real_best = tune_lib.best

    def recording(scores):
        fits.append({coded.ids[int(j)] for j in scores[-1]})
        return real_best(scores[:-1])

    class Stop(Exception):
        pass

    real_cv = tune_lib.cross_validate

    def then_stop(*args, **kwargs):
        real_cv(*args, **kwargs)
        raise Stop  # the coded row is no setting: stop once the folds are chosen

    monkeypatch.setattr(tune_lib, "per_query", coded)
    monkeypatch.setattr(tune_lib, "best", recording)
    monkeypatch.setattr(tune_lib, "cross_validate", then_stop)
    with pytest.raises(Stop):
        tune_lib.tune(index, queries, qrels, folds=5, seed=1)
    assert len(fits) >= 5
    folds = tune_lib.folds_of(query_ids, 5, 1)
    tested = Counter(query_ids[j] for fold in folds for j in fold)
    assert sorted(tested) == sorted(query_ids) and set(tested.values()) == {1}
    for used, fold in zip(fits[:5], folds, strict=True):
        test_ids = {query_ids[j] for j in fold}
        assert used.isdisjoint(test_ids)
        assert used | test_ids == set(query_ids)


def test_report_folds_partition_the_queries(data) -> None:
    index, queries, qrels, query_ids, _ = data
    report = tune_lib.tune(index, queries, qrels, folds=3, seed=0, metric="ndcg@5")
    tested = Counter(q for f in report.folds for q in f.test)
    assert sorted(tested) == sorted(query_ids) and set(tested.values()) == {1}
    for f in report.folds:
        assert set(f.train).isdisjoint(f.test) and set(f.train) | set(f.test) == set(query_ids)
    assert set(report.estimates) == {
        "tuned (cross-validated)",
        "default (auto k=10)",
        "text alone",
        "b alone",
    }
    assert set(report.p_values) == set(report.estimates) - {"tuned (cross-validated)"}
    assert all(0.0 <= p <= 1.0 for p in report.p_values.values())
    assert report.chosen_mean == max(report.settings.values())
    # The held-out estimate is the mean of each fold's held-out scores, weighted by its size.
    sizes = [len(f.test) for f in report.folds]
    means = [f.test_mean for f in report.folds]
    assert report.estimates["tuned (cross-validated)"] == pytest.approx(
        np.dot(sizes, means) / sum(sizes)
    )
    assert not report.saved and read_fields(index).search_defaults is None


@pytest.mark.parametrize(("candidates", "k"), [(None, 5), (6, 5), (4, 7)])
def test_refused_rankings_equal_real_searches(data, candidates, k) -> None:
    index, _, _, query_ids, texts = data
    cache = tune_lib.collect(index, texts, query_ids, candidates=candidates, depth=k)
    for setting in tune_lib.settings(["text", "b"]):
        got = cache.ranking(setting, k)
        want = FieldRetriever(index, **setting.options()).search(
            texts, k=k, candidates=candidates, query_ids=query_ids
        )
        assert got.tolist() == want.doc_ids.tolist(), setting.label


def test_a_saved_setting_is_the_plain_search_default_and_flags_override(
    data, tmp_path, capsys
) -> None:
    import shutil

    from latemm.cli import main

    index = tmp_path / "idx"
    shutil.copytree(data[0], index)
    _, queries, qrels, query_ids, texts = data
    before = (index / "fields.json").read_text()
    assert FieldRetriever(index).plan.fusion == "auto"  # never tuned: the built-in default
    assert (index / "fields.json").read_text() == before
    report = tune_lib.tune(index, queries, qrels, folds=3, save=True)
    assert report.saved
    saved = read_fields(index).search_defaults
    assert saved is not None and saved.to_dict() == report.chosen.defaults(saved.tuned).to_dict()
    assert saved.tuned["folds"] == 3 and saved.tuned["metric"] == "ndcg@10"

    # A setting unlike the built-in default, recorded: a plain search uses it.
    weighted = tune_lib.Setting(("text", "b"), "weighted", None, (0.3, 0.7))
    write_search_defaults(index, weighted.defaults({"metric": "ndcg@10"}))
    plain = FieldRetriever(index)
    assert (plain.plan.fusion, plain.plan.weights) == ("weighted", (0.3, 0.7))
    want = FieldRetriever(index, **weighted.options()).search(texts, k=5)
    assert plain.search(texts, k=5).doc_ids.tolist() == want.doc_ids.tolist()
    # Any fusion option replaces the record whole.
    assert FieldRetriever(index, fusion="rrf").plan.rrf_k == 60
    assert FieldRetriever(index, rrf_k=20).plan.fusion == "auto"
    assert FieldRetriever(index, fields=["b"]).plan.fields == ("b",)

    run, other = tmp_path / "run.parquet", tmp_path / "rrf.parquet"
    search = ["search", str(index), str(queries), "--k", "5", "--quiet"]
    assert main([*search, "--out", str(run)]) == 0
    assert main([*search, "--out", str(other), "--fusion", "rrf"]) == 0
    got = pq.read_table(run).column("doc_id").to_pylist()
    assert got == [d for row in want.doc_ids.tolist() for d in row]
    rrf = FieldRetriever(index, fusion="rrf").search(texts, k=5)
    assert pq.read_table(other).column("doc_id").to_pylist() == [
        d for row in rrf.doc_ids.tolist() for d in row
    ]
    capsys.readouterr()
    assert main(["info", str(index)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["search_defaults"]["fusion"] == "weighted"
    assert info["search_defaults"]["weights"] == {"text": 0.3, "b": 0.7}

    # A single field chosen: a plain search searches that field alone.
    write_search_defaults(index, tune_lib.Setting(("b",), "auto", 10).defaults({}))
    alone = FieldRetriever(index)
    assert alone.plan.fields == ("b",) and alone.plan.scored == ("b",)
    write_search_defaults(index, None)
    assert (index / "fields.json").read_text() == before


def test_cli_tune_reports_and_saves(data, tmp_path, capsys) -> None:
    import shutil

    from latemm.cli import main

    index = tmp_path / "idx"
    shutil.copytree(data[0], index)
    _, queries, qrels, _, _ = data
    args = ["tune", str(index), "--queries", str(queries), "--qrels", str(qrels), "--folds", "3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "3-fold cross-validation on ndcg@10" in out and "tuned vs this: p = " in out
    assert read_fields(index).search_defaults is None
    assert main([*args, "--save", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["saved"] and len(payload["folds"]) == 3
    assert read_fields(index).search_defaults.to_dict()["fusion"] == payload["chosen"]["fusion"]


def test_bad_queries_and_qrels_are_one_line_errors(data, tmp_path, capsys) -> None:
    from latemm.cli import main

    index, queries, qrels, _, _ = data
    no_text = tmp_path / "no_text.parquet"
    pq.write_table(pa.table({"query_id": ["q0"], "question": ["cash"]}), no_text)
    bad_line = tmp_path / "bad.txt"
    bad_line.write_text("q0 0 p01\n")
    other = tmp_path / "other.txt"
    other.write_text("zz 0 p01 1\n")
    cases = [
        (queries, tmp_path / "missing.txt", "does not exist"),
        (queries, bad_line, "line 1: expected 'qid 0 docid relevance'"),
        (queries, other, "no query_id of"),
        (no_text, qrels, "no 'text' column"),
        (tmp_path / "none.parquet", qrels, "does not exist"),
    ]
    for q, r, message in cases:
        assert main(["tune", str(index), "--queries", str(q), "--qrels", str(r)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert (
        main(["tune", str(index), "--queries", str(queries), "--qrels", str(qrels), "--folds", "1"])
        == 2
    )
    assert "--folds must be an integer >= 2" in capsys.readouterr().err
    args = ["tune", str(index), "--queries", str(queries), "--qrels", str(qrels)]
    assert main([*args, "--fields", "text"]) == 2
    assert "tuning fuses two or more" in capsys.readouterr().err


def test_a_damaged_search_defaults_record_names_the_file(data, tmp_path) -> None:
    import shutil

    index = tmp_path / "idx"
    shutil.copytree(data[0], index)
    payload = json.loads((index / "fields.json").read_text())
    payload["search_defaults"] = {"fields": ["nope"], "fusion": "auto"}
    (index / "fields.json").write_text(json.dumps(payload))
    with pytest.raises(IndexCorruptError, match="search_defaults name field"):
        read_fields(index)
    payload["search_defaults"] = {"fields": ["b"], "fusion": "magic"}
    (index / "fields.json").write_text(json.dumps(payload))
    with pytest.raises(IndexCorruptError, match="unknown fusion 'magic'"):
        read_fields(index)
    with pytest.raises(InputError, match="unknown field 'zz'"):
        payload.pop("search_defaults")
        (index / "fields.json").write_text(json.dumps(payload))
        write_search_defaults(index, tune_lib.Setting(("zz",), "auto", 10).defaults({}))


def test_queries_without_judgements_are_left_out_and_counted(data, tmp_path) -> None:
    from latemm.api import tune

    index, _, qrels, query_ids, texts = data
    queries = tmp_path / "queries.parquet"
    pq.write_table(
        pa.table({"query_id": [*query_ids, "extra"], "text": [*texts, "cash audit"]}), queries
    )
    report = tune(index, queries, qrels, folds=3)
    assert report.queries == len(query_ids) and report.unjudged == 1
    assert "extra" not in {q for f in report.folds for q in f.test}
    assert "(1 without a relevant document left out)" in report.lines()[0]
