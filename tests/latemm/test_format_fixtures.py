"""Indexes of each kind written by the code of December 2026 (a multi-field index, a 3-shard
index, a multi-field index with an unfinished delete; ``format_fixtures.py`` describes them and
how they were made) still open, search to the same ids and scores, and verify clean.

Regenerating them is never the fix for this test failing: readers must keep reading them, and
a format change migrates them (issue 26).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from latemm.cli import main
from tests.latemm import format_fixtures as ff

EXPECTED = json.loads(ff.EXPECTED.read_text(encoding="utf-8"))


def _copy(name: str, tmp_path: Path) -> Path:
    path = tmp_path / name
    shutil.copytree(ff.DATA / name, path)  # a search may create a LOCK; the repository copy not
    return path


def _assert_same(got: dict, want: dict) -> None:
    assert got["doc_ids"] == want["doc_ids"]
    for got_row, want_row in zip(got["scores"], want["scores"], strict=True):
        np.testing.assert_allclose(got_row, want_row, rtol=1e-6)


@pytest.mark.parametrize("name", ["fields-index", "fields-journal-index"])
def test_fields_fixture_searches_to_its_recorded_results(name, tmp_path) -> None:
    got = ff.search_fields(_copy(name, tmp_path))
    assert sorted(got) == sorted(ff.FUSIONS)
    for fusion in ff.FUSIONS:
        _assert_same(got[fusion], EXPECTED[name][fusion])


def test_sharded_fixture_searches_to_its_recorded_results(tmp_path) -> None:
    _assert_same(ff.search_sharded(_copy("sharded-index", tmp_path)), EXPECTED["sharded-index"])


def test_unfinished_delete_is_honoured_by_readers(tmp_path) -> None:
    """The journal's ids are in no result, though the fields index without the journal ranks
    some of them in its top k."""
    with_journal = ff.search_fields(_copy("fields-journal-index", tmp_path))
    without = ff.search_fields(_copy("fields-index", tmp_path))
    for fusion in ff.FUSIONS:
        assert not {d for row in with_journal[fusion]["doc_ids"] for d in row} & set(ff.DELETED)
    assert {d for row in without["rrf"]["doc_ids"] for d in row} & set(ff.DELETED)


@pytest.mark.parametrize("name", ["fields-index", "sharded-index"])
def test_fixture_verifies_clean(name, tmp_path, capsys) -> None:
    path = _copy(name, tmp_path)
    assert main(["verify", str(path)]) == 0
    assert "all files match their checksums" in capsys.readouterr().out


def test_unfinished_delete_fixture_is_finished_by_the_next_writer(tmp_path, capsys) -> None:
    """``verify`` names the journal as the one problem; a compaction (a writer) finishes the
    delete, after which the index verifies clean and searches as the reader saw it."""
    path = _copy("fields-journal-index", tmp_path)
    assert main(["verify", str(path)]) == 1
    err = capsys.readouterr().err
    assert "journal.json: a delete of 3 document(s) was cut short" in err
    assert "1 problem(s)" in err
    assert main(["compact", str(path)]) == 0
    assert not (path / "journal.json").exists()
    assert main(["verify", str(path)]) == 0
    got = ff.search_fields(path)
    for fusion in ff.FUSIONS:
        _assert_same(got[fusion], EXPECTED["fields-journal-index"][fusion])
