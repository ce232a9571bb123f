"""Conditions per query (``latemm.ranking.filters.query_conditions``,
``latemm.retrieval.retriever.by_scope``): a queries file's ``where`` column scopes each query before
the first stage, exactly as ``--where`` would, on plain, sharded and multi-field indexes, from the
CLI and the Python API."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index_store.errors import InputError
from tests.helpers import SMALL_DIM as DIM

SOURCES = ("a.pdf", "b.pdf", "c.pdf")
PAGES = 9  # per source
WORDS = "revenue margin profit asset equity cash debt growth risk audit".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three 'PDFs' of nine pages each (a multi-vector embedding, text, source, year), written
    whole and one file per source."""
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("scoped")
    rows = []
    for s, source in enumerate(SOURCES):
        for p in range(PAGES):
            rows.append(
                {
                    "doc_id": f"{source}#{p}",
                    "text": " ".join(rng.choice(WORDS, 6)),
                    "embedding": rng.standard_normal((int(rng.integers(2, 6)), DIM))
                    .astype(np.float32)
                    .tolist(),
                    "source": source,
                    "year": 2000 + (p + s) % 5,
                }
            )
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, root / "all.parquet")
    for source in SOURCES:
        keep = pa.array([r["source"] == source for r in rows])
        pq.write_table(table.filter(keep), root / f"{source}.parquet")
    return root


def _queries(path, wheres, seed=4):
    rng = np.random.default_rng(seed)
    n = len(wheres)
    pq.write_table(
        pa.table(
            {
                "query_id": [f"q{i}" for i in range(n)],
                "text": [" ".join(rng.choice(WORDS, 2)) for _ in range(n)],
                "embedding": [
                    rng.standard_normal((3, DIM)).astype(np.float32).tolist() for _ in range(n)
                ],
                "where": pa.array(wheres, pa.string()),
            }
        ),
        path,
    )
    return path


def _cli(*args):
    from latemm.cli import main

    assert main([str(a) for a in args]) == 0


def _rows(run, query_id, columns):
    table = pq.read_table(run).to_pandas()
    return table[table.query_id == query_id][columns].reset_index(drop=True)


WHERES = ["source = 'a.pdf'", "source = 'c.pdf'", None, "source = 'b.pdf'"]


@pytest.mark.parametrize("layout", ["plain", "sharded", "fields"])
def test_scoped_search_equals_a_search_over_that_documents_pages_alone(
    corpus, tmp_path, layout
) -> None:
    build = {
        "plain": [],
        "sharded": ["--shards", "2"],
        "fields": ["--field", "emb=embedding:embedding"],
    }[layout]
    _cli("index", corpus / "all.parquet", "--index", tmp_path / "all", *build, "--quiet")
    queries = _queries(tmp_path / "q.parquet", WHERES)
    run = tmp_path / "run.parquet"
    _cli("search", tmp_path / "all", queries, "--out", run, "--k", 5, "--quiet")
    columns = ["doc_id", "rank", "score"] + (["score_emb"] if layout == "fields" else [])
    unscoped = tmp_path / "unscoped.parquet"
    pq.write_table(pq.read_table(queries).drop_columns(["where"]), unscoped)
    _cli(
        "search",
        tmp_path / "all",
        unscoped,
        "--out",
        tmp_path / "free.parquet",
        "--k",
        5,
        "--quiet",
    )
    for i, where in enumerate(WHERES):
        got = _rows(run, f"q{i}", columns)
        if where is None:  # no condition: as the search of the whole index
            want = _rows(tmp_path / "free.parquet", f"q{i}", columns)
        else:
            source = where.split("'")[1]
            alone = tmp_path / f"{source}-idx"
            if not alone.exists():
                flags = ["--field", "emb=embedding:embedding"] if layout == "fields" else []
                _cli("index", corpus / f"{source}.parquet", "--index", alone, *flags, "--quiet")
            out = tmp_path / f"{source}-run.parquet"
            _cli("search", alone, unscoped, "--out", out, "--k", 5, "--quiet")
            want = _rows(out, f"q{i}", columns)
            assert got.doc_id.str.startswith(source + "#").all()
        assert got.doc_id.tolist() == want.doc_id.tolist()
        np.testing.assert_allclose(
            got.drop(columns="doc_id"), want.drop(columns="doc_id"), rtol=1e-5
        )


def test_fused_fields_per_query_where_is_where_joined_by_and(corpus, tmp_path) -> None:
    """With a BM25 field (whose scores depend on the whole corpus) the oracle is the same
    index searched one query at a time with ``--where``: the file's condition AND ``--where``."""
    index = tmp_path / "idx"
    fields = ["--field", "emb=embedding:embedding", "--field", "bm25=bm25"]
    _cli("index", corpus / "all.parquet", "--index", index, *fields, "--quiet")
    queries = _queries(tmp_path / "q.parquet", WHERES)
    run = tmp_path / "run.parquet"
    flags = ["--k", 6, "--quiet", "--fusion", "weighted"]
    _cli("search", index, queries, "--out", run, "--where", "year >= 2002", *flags)
    table = pq.read_table(queries)
    for i, where in enumerate(WHERES):
        one = tmp_path / f"q{i}.parquet"
        pq.write_table(table.slice(i, 1).drop_columns(["where"]), one)
        both = "year >= 2002" if where is None else f"({where}) AND (year >= 2002)"
        out = tmp_path / f"q{i}-run.parquet"
        _cli("search", index, one, "--out", out, "--where", both, *flags)
        columns = ["doc_id", "score", "score_emb", "score_bm25"]
        got, want = _rows(run, f"q{i}", columns), _rows(out, f"q{i}", columns)
        assert len(got) > 0 and got.doc_id.tolist() == want.doc_id.tolist()
        np.testing.assert_allclose(
            got.drop(columns="doc_id"), want.drop(columns="doc_id"), rtol=1e-6
        )


def test_python_api_takes_one_condition_or_one_per_query(corpus, tmp_path) -> None:
    import latemm

    latemm.build_index(
        corpus / "all.parquet",
        tmp_path / "idx",
        fields={"bm25": "bm25", "emb": "embedding:embedding"},
    )
    from latemm.retrieval.field_search import FieldRetriever

    rng = np.random.default_rng(8)
    vectors = [rng.standard_normal((3, DIM)).astype(np.float32) for _ in range(3)]
    retriever = FieldRetriever(tmp_path / "idx")
    texts = ["cash debt", "audit risk", "growth"]
    scoped = retriever.search(
        texts, k=4, where=["source = 'b.pdf'", None, "year = 2001"], query_vectors={"emb": vectors}
    )
    for q, where in enumerate(["source = 'b.pdf'", None, "year = 2001"]):
        alone = retriever.search(
            texts[q : q + 1], k=4, where=where, query_vectors={"emb": vectors[q : q + 1]}
        )
        assert list(scoped.doc_ids[q]) == list(alone.doc_ids[0])
        np.testing.assert_allclose(scoped.scores[q], alone.scores[0], rtol=1e-6)
    assert all(d.startswith("b.pdf#") for d in scoped.doc_ids[0])
    with pytest.raises(InputError, match="where= holds 1 conditions for 3 queries"):
        retriever.search(texts, k=4, where=["year = 2001"], query_vectors={"emb": vectors})
    with pytest.raises(InputError, match="one condition per query, but the queries are"):
        latemm.search(tmp_path / "idx", str(tmp_path / "q.parquet"), where=["year = 2001"])


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("nosuch = 1", "row 1, query_id 'q1': --where 'nosuch = 1': no metadata column 'nosuch'"),
        ("year = 1; SELECT 1", "row 1, query_id 'q1': its 'where': --where 'year = 1; SELECT 1'"),
        ("year = 1) OR (1 = 1", "row 1, query_id 'q1': its 'where': --where 'year = 1) OR (1 = 1'"),
        ("   ", "row 1, query_id 'q1': its 'where': --where must be a non-empty SQL condition"),
    ],
)
def test_a_bad_condition_in_the_file_names_its_row_and_query(
    corpus, tmp_path, capsys, where, message
) -> None:
    from latemm.cli import main

    _cli("index", corpus / "all.parquet", "--index", tmp_path / "idx", "--quiet")
    queries = _queries(tmp_path / "q.parquet", [None, where])
    args = ["search", str(tmp_path / "idx"), str(queries), "--out", str(tmp_path / "r.parquet")]
    flags = ["--where", "year > 2000"] if "nosuch" not in where else []
    capsys.readouterr()
    assert main([*args, "--quiet", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.parquet").exists()


def test_a_where_column_that_is_not_text_is_refused(corpus, tmp_path, capsys) -> None:
    from latemm.cli import main

    _cli("index", corpus / "all.parquet", "--index", tmp_path / "idx", "--quiet")
    queries = tmp_path / "q.parquet"
    table = pq.read_table(_queries(queries, [None, None]))
    pq.write_table(table.set_column(3, "where", pa.array([1, 2])), queries)
    run = ["search", str(tmp_path / "idx"), str(queries), "--out", str(tmp_path / "r.parquet")]
    assert main([*run, "--quiet"]) == 2
    assert "the 'where' column has type int64; expected strings" in capsys.readouterr().err


def test_conjoin_checks_each_condition_alone() -> None:
    from latemm.ranking.filters import conjoin

    assert conjoin(None, None) is None
    assert conjoin("a = 1", None) == "a = 1"
    assert conjoin("a = 1", "b = 2") == "(a = 1) AND (b = 2)"
    with pytest.raises(InputError, match="not a single SQL condition"):
        conjoin("a = 1", "b = 2) OR (TRUE")
