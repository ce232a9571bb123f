"""``--where`` on the page content columns (text, image, source, page) of a multi-field index
whose content lives in its page store: the same pages pass as on a plain index and as on an
index written before the page store (the committed ``fields-index`` fixture), unsharded and
sharded; only the columns a condition names are read; a condition matching nothing gives an
empty run (issue 26)."""

from __future__ import annotations

import json
import shutil
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index_store import Index
from index_store.errors import InputError
from latemm.cli import main
from latemm.index.field_shards import index_field_shards
from latemm.index.fields import index_fields
from latemm.index.pagestore import PageStore
from latemm.index.pipeline import index_corpus
from latemm.retrieval.field_search import FieldRetriever
from latemm.retrieval.retriever import Retriever
from tests.latemm import format_fixtures as ff

# Conditions the old fixture (text and year, no source/page) can answer too.
TEXT_WHERES = [
    "text LIKE '%cash%'",
    "text IS NULL",
    "text LIKE '%risk%' AND year > 2010",
    "lower(text) LIKE '%audit%' OR doc_id = 'p00'",
]
ALL_WHERES = [*TEXT_WHERES, "source = 'd1.pdf'", "page = 2 AND text IS NOT NULL"]
NOTHING = "text LIKE '%no such word%'"


def _with_source_and_page(path):
    table = pq.read_table(path)
    table = table.append_column("source", pa.array([f"d{i % 3}.pdf" for i in range(ff.N)]))
    table = table.append_column("page", pa.array([i % 4 for i in range(ff.N)], pa.int32()))
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The fixture's corpus (plus source and page) as a new fields index, a 3-shard fields
    collection and a plain index, with the fixture's small FDE."""
    tmp = tmp_path_factory.mktemp("where")
    options = {"dtype": "float16", "faiss_factory": "Flat", "progress": False}
    with mock.patch("latemm.index.pipeline.default_fde_config", ff._small_fde):
        corpus = _with_source_and_page(ff.write_corpus(tmp / "corpus.parquet"))
        index_fields(corpus, tmp / "new", ff.FIELDS, **options)
        index_field_shards(corpus, tmp / "sharded", ff.FIELDS, num_shards=3, **options)
        index_corpus(corpus, tmp / "plain", encoder=None, **options)
    return {
        "corpus": corpus,
        "new": tmp / "new",
        "sharded": tmp / "sharded",
        "plain": tmp / "plain",
    }


def _oracle(corpus, where: str) -> set[str]:
    """The pages a condition keeps, by DuckDB over the corpus file itself."""
    import duckdb

    pages = pq.read_table(corpus)  # noqa: F841 - DuckDB reads it by name
    return {r[0] for r in duckdb.sql(f"SELECT doc_id FROM pages WHERE {where}").fetchall()}


def _fields_search(path, where, *, k=ff.K, candidates=None, fields=None):
    retriever = FieldRetriever(path, fusion="rrf", fields=fields)
    vectors = {n: v for n, v in ff.query_vectors().items() if n in retriever.specs}
    return retriever.search(
        ff.QUERY_TEXTS, k=k, candidates=candidates, where=where, query_vectors=vectors
    )


def _returned(result) -> set[str]:
    return {d for row in result.doc_ids.tolist() for d in row if d is not None}


@pytest.mark.parametrize("where", TEXT_WHERES)
def test_same_results_as_an_index_from_before_the_page_store(built, tmp_path, where) -> None:
    old = tmp_path / "old"
    shutil.copytree(ff.DATA / "fields-index", old)
    assert json.loads((old / "fields.json").read_text())["format_version"] == 1
    want = _fields_search(old, where)
    got = _fields_search(built["new"], where)
    assert got.doc_ids.tolist() == want.doc_ids.tolist()
    np.testing.assert_array_equal(got.scores, want.scores)


@pytest.mark.parametrize("where", ALL_WHERES)
def test_same_pages_as_a_plain_index(built, where) -> None:
    """With k = every page, each query returns exactly the pages the condition keeps, on the
    plain index and on the fields index (and the sharded collection) alike."""
    want = _oracle(built["corpus"], where)
    assert want  # every condition here keeps some pages
    vectors = ff.query_vectors()["m"]
    plain = Retriever(Index.open(built["plain"])).search_embeddings(
        vectors, k=ff.N, candidates=ff.N, where=where
    )
    for row in plain.doc_ids.tolist():
        assert {d for d in row if d is not None} == want
    for kind in ("new", "sharded"):
        got = _fields_search(built[kind], where, k=ff.N, candidates=ff.N, fields=["m"])
        for row in got.doc_ids.tolist():
            assert {d for d in row if d is not None} == want, kind


@pytest.mark.parametrize("where", ALL_WHERES)
def test_sharded_equals_unsharded(built, where) -> None:
    want = _fields_search(built["new"], where)
    got = _fields_search(built["sharded"], where)
    assert got.doc_ids.tolist() == want.doc_ids.tolist()
    np.testing.assert_array_equal(got.scores, want.scores)


def test_bm25_alone_is_filtered_on_the_page_store(built, tmp_path) -> None:
    """A bm25 field searched alone: its vector-free pages are filtered on the page store (an
    index from before it still says a vector field must be searched too)."""
    where = "source = 'd1.pdf' AND text LIKE '%cash%'"
    keep = _oracle(built["corpus"], where)
    for kind in ("new", "sharded"):
        got = _fields_search(built[kind], where, k=ff.N, fields=["b"])
        assert got.doc_ids.size and _returned(got) <= keep and _returned(got)
        every = _fields_search(built[kind], None, k=ff.N, fields=["b"])
        matched = {d for d in _returned(every) if d in keep}
        assert _returned(got) == matched  # the pages bm25 matches that the condition keeps
    old = tmp_path / "old"
    shutil.copytree(ff.DATA / "fields-index", old)
    with pytest.raises(InputError, match="bm25 only. Search a vector field too"):
        _fields_search(old, "text LIKE '%cash%'", fields=["b"])


@pytest.mark.parametrize("kind", ["new", "sharded"])
def test_a_condition_matching_nothing_is_an_empty_result(built, kind) -> None:
    got = _fields_search(built[kind], NOTHING)
    assert got.doc_ids.shape == (len(ff.QUERY_TEXTS), ff.K)
    assert all(d is None for d in got.doc_ids.ravel()) and np.isnan(got.scores).all()


def test_a_condition_matching_nothing_is_an_empty_run(built, tmp_path, capsys) -> None:
    queries = tmp_path / "q.parquet"
    vectors = ff.query_vectors()
    pq.write_table(
        pa.table(
            {
                "query_id": [f"q{i}" for i in range(len(ff.QUERY_TEXTS))],
                "text": ff.QUERY_TEXTS,
                "vm": [v.tolist() for v in vectors["m"]],
                "vs": [v.tolist() for v in vectors["s"]],
            }
        ),
        queries,
    )
    run = tmp_path / "run.parquet"
    argv = ["search", str(built["new"]), str(queries), "--out", str(run), "--where", NOTHING]
    argv += ["--query-column", "m=vm", "--query-column", "s=vs"]
    assert main(argv) == 0, capsys.readouterr().err
    assert pq.read_table(run).num_rows == 0


def test_only_the_named_columns_are_read(built, monkeypatch) -> None:
    """A text condition reads the text column of the page store, never its images or other
    columns; a condition on vector-field metadata alone reads nothing from the store."""
    asked: list[tuple[str, ...]] = []
    real = PageStore.read_columns

    def spy(self, doc_ids, columns):
        asked.append(tuple(columns))
        return real(self, doc_ids, columns)

    monkeypatch.setattr(PageStore, "read_columns", spy)
    _fields_search(built["new"], "text LIKE '%cash%' AND year > 2003")
    assert asked and set(asked) == {("text",)}
    asked.clear()
    _fields_search(built["new"], "year > 2003 AND source = 'd1.pdf'")
    assert asked == []  # source, page and year are in the vector fields' own metadata


def test_an_unknown_column_lists_the_page_content_columns(built) -> None:
    with pytest.raises(InputError, match=r"no metadata column 'nope'\. Metadata columns: .*"):
        _fields_search(built["new"], "nope = 1")
    with pytest.raises(InputError, match="page content columns: text"):
        _fields_search(built["new"], "nope = 1")


def test_an_image_condition_reads_the_stored_images(tmp_path) -> None:
    """``image IS NULL`` on a page store that keeps images passes the pages a plain index's
    own image column passes."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "white").save(buffer, format="PNG")
    png = buffer.getvalue()
    table = pq.read_table(ff.write_corpus(tmp_path / "corpus.parquet"))
    images = [png if i % 3 else None for i in range(ff.N)]
    pq.write_table(
        table.append_column("image", pa.array(images, pa.binary())), tmp_path / "c.parquet"
    )
    options = {"dtype": "float16", "faiss_factory": "Flat", "progress": False}
    with mock.patch("latemm.index.pipeline.default_fde_config", ff._small_fde):
        index_fields(
            tmp_path / "c.parquet",
            tmp_path / "new",
            {"m": "embedding:emb_multi"},
            keep_images=True,
            **options,
        )
        index_corpus(tmp_path / "c.parquet", tmp_path / "plain", encoder=None, **options)
    where = "image IS NULL AND year > 2003"
    want = {f"p{i:02d}" for i in range(ff.N) if i % 3 == 0 and 2000 + i > 2003}
    vectors = ff.query_vectors()["m"]
    plain = Retriever(Index.open(tmp_path / "plain")).search_embeddings(
        vectors, k=ff.N, candidates=ff.N, where=where
    )
    got = FieldRetriever(tmp_path / "new").search(
        ff.QUERY_TEXTS, k=ff.N, candidates=ff.N, where=where, query_vectors={"m": vectors}
    )
    for result in (plain, got):
        for row in result.doc_ids.tolist():
            assert {d for d in row if d is not None} == want
