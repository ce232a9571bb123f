"""``fields.json``'s format version: an index with a page store records version 2 (its vector
fields no longer hold the pages' text and image, so a latemm that reads only version 1 must
refuse it), one without keeps version 1 and still opens, and a version newer than this latemm
reads is a one-line error naming the file and saying to upgrade (issue 26)."""

from __future__ import annotations

import json
import shutil
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index_store.errors import IndexFormatError
from latemm.cli import main
from latemm.index.fields import FORMAT_VERSION, index_fields, read_fields
from latemm.retrieval.field_search import FieldRetriever
from tests.latemm import format_fixtures as ff


@pytest.fixture(scope="module")
def new_index(tmp_path_factory):
    """The committed fixture's corpus and fields, built by today's code (with a page store)."""
    tmp = tmp_path_factory.mktemp("fmt")
    with mock.patch("latemm.index.pipeline.default_fde_config", ff._small_fde):
        corpus = ff.write_corpus(tmp / "corpus.parquet")
        index_fields(
            corpus, tmp / "idx", ff.FIELDS, dtype="float16", faiss_factory="Flat", progress=False
        )
    return tmp / "idx"


def _version(path) -> int:
    return json.loads((path / "fields.json").read_text())["format_version"]


def test_an_index_with_a_page_store_records_version_2(new_index) -> None:
    assert FORMAT_VERSION == 2
    assert read_fields(new_index).pages is not None
    assert _version(new_index) == 2


def test_an_index_without_a_page_store_keeps_version_1_and_opens(tmp_path) -> None:
    path = tmp_path / "old"
    shutil.copytree(ff.DATA / "fields-index", path)
    assert _version(path) == 1 and read_fields(path).pages is None
    got = ff.search_fields(path)
    want = json.loads(ff.EXPECTED.read_text())["fields-index"]
    assert got["rrf"]["doc_ids"] == want["rrf"]["doc_ids"]
    assert _version(path) == 1  # searching writes nothing


def test_a_newer_version_is_a_one_line_error_saying_to_upgrade(new_index, tmp_path, capsys):
    path = tmp_path / "newer"
    shutil.copytree(new_index, path)
    payload = json.loads((path / "fields.json").read_text())
    payload["format_version"] = FORMAT_VERSION + 1
    (path / "fields.json").write_text(json.dumps(payload))
    with pytest.raises(IndexFormatError) as caught:
        FieldRetriever(path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path / "fields.json") in message
    assert f"format_version {FORMAT_VERSION + 1}, newer than this latemm reads" in message
    assert "upgrade latemm" in message
    queries = tmp_path / "q.parquet"
    pq.write_table(pa.table({"query_id": ["q1"], "text": ["cash"]}), queries)
    code = main(["search", str(path), str(queries), "--out", str(tmp_path / "run.parquet")])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and "upgrade latemm" in err


@pytest.mark.parametrize("version", [0, "2", None, True])
def test_an_unknown_version_is_refused_as_damaged(new_index, tmp_path, version) -> None:
    path = tmp_path / "bad"
    shutil.copytree(new_index, path)
    payload = json.loads((path / "fields.json").read_text())
    payload["format_version"] = version
    (path / "fields.json").write_text(json.dumps(payload))
    with pytest.raises(IndexFormatError, match="the file is damaged"):
        read_fields(path)


def test_a_version_1_file_with_a_page_store_opens_and_moves_to_2_when_written(
    new_index, tmp_path
) -> None:
    """Indexes written with a page store before the version bump say 1: they open and search
    as before, and the next write records 2."""
    path = tmp_path / "v1-store"
    shutil.copytree(new_index, path)
    payload = json.loads((path / "fields.json").read_text())
    payload["format_version"] = 1
    (path / "fields.json").write_text(json.dumps(payload))
    want = ff.search_fields(new_index)
    assert ff.search_fields(path) == want
    assert _version(path) == 1  # a reader never writes
    from latemm.index.fields import write_search_defaults

    write_search_defaults(path, None)  # a writer commits fields.json again
    assert _version(path) == 2
    assert ff.search_fields(path) == want
