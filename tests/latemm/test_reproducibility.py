"""A number can be traced to how it was made: the same scores whatever the batch sizes and the
number of threads, and a run file that records the latemm version, the index generation and
every search option in its Parquet schema metadata."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import latemm
from latemm.encoders.text import TextEncoder
from latemm.index.pipeline import index_corpus
from latemm.runs.jobs import search_file
from latemm.runs.metrics import run_provenance

WORDS = "revenue margin profit asset equity cash debt growth risk audit tax loan bond".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from tests.latemm.tiny_models import build_colbert_pylate

    root = tmp_path_factory.mktemp("repro")
    model = build_colbert_pylate(root / "colbert")
    rng = np.random.default_rng(5)
    # pages of very different lengths, so batches pad differently
    texts = [" ".join(rng.choice(WORDS, int(rng.integers(2, 40)))) for _ in range(40)]
    pq.write_table(
        pa.table({"doc_id": [f"p{i}" for i in range(40)], "text": texts}), root / "corpus.parquet"
    )
    queries = [" ".join(rng.choice(WORDS, int(rng.integers(1, 6)))) for _ in range(11)]
    pq.write_table(
        pa.table({"query_id": [f"q{i}" for i in range(11)], "text": queries}),
        root / "queries.parquet",
    )
    return root, model


def _run(root, model, name, *, index_batch, search_batch, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        encoder = TextEncoder(str(model))
        index = root / f"idx-{index_batch}"
        if not index.exists():
            index_corpus(
                root / "corpus.parquet",
                index,
                encoder=encoder,
                batch_size=index_batch,
                progress=False,
            )
        out = root / f"{name}.parquet"
        search_file(
            index,
            root / "queries.parquet",
            out,
            encoder=encoder,
            k=10,
            candidates=40,
            batch_size=search_batch,
            progress=False,
        )
        return pq.read_table(out)
    finally:
        torch.set_num_threads(before)


def test_scores_do_not_depend_on_batch_sizes_or_threads(corpus):
    root, model = corpus
    reference = _run(root, model, "ref", index_batch=64, search_batch=64, threads=2)
    for name, options in {
        "search-batch-1": dict(index_batch=64, search_batch=1, threads=2),
        "search-batch-3-one-thread": dict(index_batch=64, search_batch=3, threads=1),
        "index-batch-1": dict(index_batch=1, search_batch=64, threads=2),
        "index-batch-5-one-thread": dict(index_batch=5, search_batch=4, threads=1),
    }.items():
        run = _run(root, model, name, **options)
        for column in ("query_id", "doc_id", "rank"):
            assert run.column(column).to_pylist() == reference.column(column).to_pylist(), name
        np.testing.assert_array_equal(
            run.column("score").to_numpy(), reference.column("score").to_numpy(), err_msg=name
        )


def test_run_file_records_how_it_was_made(corpus):
    root, model = corpus
    _run(root, model, "traced", index_batch=64, search_batch=4, threads=2)
    record = run_provenance(root / "traced.parquet")
    assert record["latemm_version"] == latemm.__version__
    assert record["generation"] >= 1
    assert record["index"] == str((root / "idx-64").resolve())
    assert record["queries"] == str((root / "queries.parquet").resolve())
    assert (record["k"], record["candidates"], record["where"], record["batch_size"]) == (
        10,
        40,
        None,
        4,
    )
    assert record["encoder"]["name_or_path"] == str(model)
    assert record["reranker"] is None


def test_fields_run_records_its_plan(tmp_path):
    pytest.importorskip("bm25s")
    pq.write_table(
        pa.table({"doc_id": ["a", "b", "c"], "text": ["cash debt", "profit", "tax loan"]}),
        tmp_path / "c.parquet",
    )
    pq.write_table(pa.table({"query_id": ["q"], "text": ["debt"]}), tmp_path / "q.parquet")
    from latemm.cli import main

    assert (
        main(
            [
                "index",
                str(tmp_path / "c.parquet"),
                "--index",
                str(tmp_path / "i"),
                "--field",
                "bm25=bm25",
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "search",
                str(tmp_path / "i"),
                str(tmp_path / "q.parquet"),
                "--out",
                str(tmp_path / "r.parquet"),
                "--fusion",
                "rrf",
                "--k",
                "2",
            ]
        )
        == 0
    )
    record = run_provenance(tmp_path / "r.parquet")
    assert record["plan"]["fusion"] == "rrf" and record["plan"]["fields"] == ["bm25"]
    assert record["k"] == 2 and record["latemm_version"] == latemm.__version__
    assert run_provenance(tmp_path / "q.parquet") == {}  # not a latemm run
