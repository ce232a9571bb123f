"""experiments/eval_fusion.py's cross-validated weights: the folds split the queries, a fold's
weight depends on the other folds' judgements only, and re-fusing a run's per-field scores gives
what ``latemm search --fusion weighted --weights`` returns over the same candidates."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from experiments import eval_fusion
from latemm.runs.metrics import load_run

WORDS = "revenue margin profit asset equity cash debt growth risk audit".split()
PAGES = 24


@pytest.fixture(scope="module")
def fused_index(tmp_path_factory):
    """A CLI-built index with a text field (a tiny ColBERT) and a BM25 field, and queries."""
    from tests.latemm.tiny_models import build_colbert_pylate

    root = tmp_path_factory.mktemp("eval_fusion")
    model = build_colbert_pylate(root / "colbert")
    rng = np.random.default_rng(0)
    corpus, queries = root / "corpus.parquet", root / "queries.parquet"
    ids = [f"p{i:02d}" for i in range(PAGES)]
    pq.write_table(
        pa.table({"doc_id": ids, "text": [" ".join(rng.choice(WORDS, 6)) for _ in ids]}), corpus
    )
    qids = [f"q{i}" for i in range(6)]
    texts = [" ".join(rng.choice(WORDS, 2)) for _ in qids]
    pq.write_table(pa.table({"query_id": qids, "text": texts}), queries)
    fields = ["--field", f"text={model}", "--field", "bm25=bm25"]
    eval_fusion.cli("index", corpus, "--index", root / "idx", *fields, "--quiet")
    return root, queries


def _ranking(run: dict[str, dict[str, float]]) -> dict[str, list[str]]:
    return {q: sorted(docs, key=lambda d: (-docs[d], d)) for q, docs in run.items()}


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.8])
def test_refused_scores_rank_as_the_cli_with_those_weights(fused_index, weight) -> None:
    root, queries = fused_index
    flags = ["--fields", "text,bm25", "--fusion", "weighted", "--candidates", PAGES]
    equal = root / "equal.run.parquet"
    eval_fusion.search(root / "idx", queries, equal, flags, PAGES)
    weighted = root / f"w{weight}.run.parquet"
    weights = f"text={weight},bm25={round(1 - weight, 1)}"
    eval_fusion.search(root / "idx", queries, weighted, [*flags, "--weights", weights], PAGES)
    refused = eval_fusion.refuse(eval_fusion.pool_scores(equal), weight)
    assert _ranking(refused) == _ranking(load_run(weighted))
    assert len(refused["q0"]) == PAGES  # every page is a candidate, so the pools agree


def test_folds_split_the_queries_the_same_way_every_time() -> None:
    ids = [f"q{i}" for i in range(23)]
    folds = eval_fusion.folds_of(ids)
    assert len(folds) == eval_fusion.FOLDS
    assert sorted(q for fold in folds for q in fold) == sorted(ids)
    assert sum(len(f) for f in folds) == len(ids) and min(map(len, folds)) >= 4
    assert folds == eval_fusion.folds_of(ids)


def test_a_folds_weight_ignores_the_held_out_judgements() -> None:
    rng = np.random.default_rng(1)
    docs = [f"d{i}" for i in range(8)]
    pools = {f"q{i}": (docs, rng.random((2, len(docs)))) for i in range(10)}
    qrels = {q: {docs[int(rng.integers(8))]: 1} for q in pools}
    train = [f"q{i}" for i in range(6)]
    chosen = eval_fusion.choose_weight(pools, qrels, train, "ndcg@5")
    changed = {**qrels, **{f"q{i}": {docs[(i * 3) % 8]: 1} for i in range(6, 10)}}
    assert eval_fusion.choose_weight(pools, changed, train, "ndcg@5") == chosen
    weight, means = chosen
    assert set(means) == set(eval_fusion.GRID) and means[weight] == max(means.values())
